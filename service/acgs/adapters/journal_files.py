"""The on-disk layout of the audit journal: segments, the shipped marker, recovery.

A journal directory holds segment files named by the seq of their first record
(``00000000000000000001.jsonl``), each a sequence of lines: the canonical JSON
of one :class:`~acgs.domain.audit.AuditRecord` and ``\\n``. The file ``shipped``
says how far PostgreSQL holds the chain (at least: it may lag shipping by up to
``journal_reader.MARKER_EVERY_S``, and what it lags is sent again after a crash).
``lock`` is held (``flock``) by the process that owns the directory; the kernel
releases it if that process dies.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from acgs.adapters.journal_lines import DamagedLine, parse_line
from acgs.domain.audit import ALTERED, GENESIS_HASH, AuditRecord, ChainBreak, ChainChecker
from acgs.errors import ConfigurationError

logger = logging.getLogger("acgs.audit.journal")

SUFFIX = ".jsonl"
MARKER = "shipped"
SEALING = "sealing"  # an adopting server is sealing this dead chain: never reopen it as one's own
LOCK = "lock"
_READ_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Position:
    """A byte offset in the segment whose first record has seq ``segment``."""

    segment: int
    offset: int


@dataclass(frozen=True, slots=True)
class Marker:
    """PostgreSQL holds the chain up to ``seq`` (hash ``hash``); reading resumes at ``at``."""

    seq: int
    hash: str
    at: Position


@dataclass(frozen=True, slots=True)
class Tail:
    """The chain's end as recovered from disk."""

    last_seq: int
    last_hash: str


def segment_path(directory: Path, first_seq: int) -> Path:
    return directory / f"{first_seq:020d}{SUFFIX}"


def list_segments(directory: Path) -> list[int]:
    """The first seqs of the segments in ``directory``, ascending."""
    firsts = []
    for path in directory.glob(f"*{SUFFIX}"):
        try:
            firsts.append(int(path.name.removesuffix(SUFFIX)))
        except ValueError:
            logger.warning("ignoring stray file %s in the journal", path)
    return sorted(firsts)


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries (a created, renamed or removed file) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lock_dir(directory: Path) -> int:
    """Take the directory's lock, returning its fd; BlockingIOError if another process has it."""
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise
    return fd


def read_marker(directory: Path) -> Marker | None:
    """The shipped marker, or None if nothing was shipped; ConfigurationError if unreadable."""
    path = directory / MARKER
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text("utf-8"))
        return Marker(int(doc["seq"]), str(doc["hash"]),
                      Position(int(doc["segment"]), int(doc["offset"])))
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigurationError(f"audit journal marker {path} is unreadable: {err}") from err


def write_marker(directory: Path, marker: Marker) -> None:
    """Replace the marker atomically and durably (write, fsync, rename, fsync the directory)."""
    doc = {"seq": marker.seq, "hash": marker.hash,
           "segment": marker.at.segment, "offset": marker.at.offset}
    tmp = directory / f"{MARKER}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(doc).encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, directory / MARKER)
    fsync_dir(directory)


def iter_lines(path: Path, start: int, end: int) -> Iterator[tuple[bytes, int]]:
    """Complete lines of ``path`` between byte offsets, each with the offset just after it."""
    with path.open("rb") as f:
        f.seek(start)
        offset, rest = start, b""
        while offset + len(rest) < end:
            chunk = f.read(min(_READ_CHUNK, end - offset - len(rest)))
            if not chunk:
                return
            rest += chunk
            lines = rest.split(b"\n")
            rest = lines.pop()
            for line in lines:
                offset += len(line) + 1
                yield line, offset


def tail_record(path: Path) -> AuditRecord | None:
    """The last complete, intact record of a segment (a full scan: recovery needs it rarely)."""
    last = None
    for line, _ in iter_lines(path, 0, path.stat().st_size):
        try:
            last = parse_line(line)
        except DamagedLine:
            continue
    return last


def verify_directory(directory: Path) -> tuple[int, ChainBreak | None]:
    """Check every record still in a journal directory (read-only): count and first break.

    Segments already shipped and deleted are not there; the check starts at the
    oldest record present, trusting its ``prev_hash``. A line that does not parse
    is reported as altered.
    """
    checker: ChainChecker | None = None
    for first in list_segments(directory):
        path = segment_path(directory, first)
        for line, _ in iter_lines(path, 0, path.stat().st_size):
            try:
                record = parse_line(line)
            except DamagedLine as err:
                seq = checker.expect_seq if checker else first
                return (checker.checked if checker else 0), ChainBreak(
                    seq, ALTERED, f"{path.name}: a damaged line ({err}) where seq {seq} "
                    "was expected")
            if checker is None:
                checker = ChainChecker(expect_seq=record.seq, prev_hash=record.prev_hash)
            broken = checker.feed(record)
            if broken is not None:
                return checker.checked, broken
    return (checker.checked if checker else 0), None


def recover(directory: Path, marker: Marker | None) -> Tail:
    """Check the newest segment line by line; terminate a torn final write; the chain's end.

    Every complete line is checked on its own (:mod:`acgs.adapters.journal_lines`):
    a damaged one keeps its place and its seq (it is quarantined when shipped), and
    the intact lines after it stay. Only the newest segment can end in a torn write
    (older ones were synced before the writer moved on): its incomplete last line
    gets the newline it lacks, so it too holds a seq (never reused) and is
    quarantined, bytes intact, rather than cut away. An empty newest segment is
    removed and the one before examined.
    """
    segments = list_segments(directory)
    while segments:
        first = segments[-1]
        path = segment_path(directory, first)
        last_seq, last_hash = _scan_newest(path, first)
        if last_seq >= first:
            if last_hash is None:  # nothing intact in it: link to the segment before
                last_hash = _hash_before(directory, segments[:-1], first, marker)
            return Tail(last_seq, last_hash)
        path.unlink()
        fsync_dir(directory)
        segments.pop()
    if marker is not None:
        return Tail(marker.seq, marker.hash)
    return Tail(0, GENESIS_HASH)


def _hash_before(directory: Path, older: list[int], first: int, marker: Marker | None) -> str:
    prev = tail_record(segment_path(directory, older[-1])) if older else None
    if prev is not None:
        return prev.record_hash
    if marker is not None:
        return marker.hash
    return GENESIS_HASH


def _scan_newest(path: Path, first: int) -> tuple[int, str | None]:
    """The last seq held in segment ``path`` and the hash of its last intact record."""
    seq, last_hash, end = first - 1, None, 0
    size = path.stat().st_size
    for line, after in iter_lines(path, 0, size):
        try:
            record = parse_line(line)
        except DamagedLine as err:
            seq += 1
            logger.error("audit journal %s: the line at byte %d (seq %d) is damaged (%s); it "
                         "will be quarantined when shipped", path, end, seq, err)
        else:
            seq, last_hash = record.seq, record.record_hash
        end = after
    if end < size:
        torn = _terminate(path, end, size)
        try:  # the write may have stopped just short of its newline
            record = parse_line(torn)
            seq, last_hash = record.seq, record.record_hash
        except DamagedLine:
            seq += 1
    return seq, last_hash


def _terminate(path: Path, start: int, size: int) -> bytes:
    """Give a torn final write (``start``..``size``, no newline) its newline, durably; its bytes."""
    with path.open("rb") as f:
        f.seek(start)
        torn = f.read(size - start)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    logger.error("audit journal %s: torn final write of %d bytes at byte %d; kept as a damaged "
                 "line, to be quarantined when shipped", path, size - start, start)
    return torn
