"""The on-disk layout of the audit journal: segments, the shipped marker, recovery.

A journal directory holds segment files named by the seq of their first record
(``00000000000000000001.jsonl``), each a sequence of lines: the canonical JSON
of one :class:`~acgs.domain.audit.AuditRecord` and ``\\n``. The file ``shipped``
says how far PostgreSQL holds the chain. ``lock`` is held (``flock``) by the
process that owns the directory; the kernel releases it if that process dies.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from acgs.domain.audit import ALTERED, GENESIS_HASH, AuditRecord, ChainBreak, ChainChecker
from acgs.errors import ConfigurationError

logger = logging.getLogger("acgs.audit.journal")

SUFFIX = ".jsonl"
MARKER = "shipped"
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
    """The last complete, parseable record of a segment, read from its end."""
    size = path.stat().st_size
    with path.open("rb") as f:
        start = size
        data = b""
        while start > 0:
            start = max(0, start - 64 * 1024)
            f.seek(start)
            data = f.read(size - start)
            lines = data.rstrip(b"\n").split(b"\n")
            if len(lines) > 1 or start == 0:
                try:
                    return AuditRecord.from_json(lines[-1])
                except (ValueError, KeyError, TypeError):
                    return None
    return None


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
                record = AuditRecord.from_json(line)
            except (ValueError, KeyError, TypeError):
                seq = checker.expect_seq if checker else first
                return (checker.checked if checker else 0), ChainBreak(
                    seq, ALTERED, f"{path.name}: a line that is not a record where seq {seq} "
                    "was expected")
            if checker is None:
                checker = ChainChecker(expect_seq=record.seq, prev_hash=record.prev_hash)
            broken = checker.feed(record)
            if broken is not None:
                return checker.checked, broken
    return (checker.checked if checker else 0), None


def recover(directory: Path, marker: Marker | None) -> Tail:
    """Truncate a torn or corrupt tail of the newest segment; return the chain's end.

    Only the newest segment can hold a torn record: older ones were synced before
    the writer moved on. Bytes cut off are kept in ``<segment>.torn-<ns>`` for
    forensics. An emptied newest segment is removed and the one before examined.
    """
    segments = list_segments(directory)
    while segments:
        first = segments[-1]
        prev = tail_record(segment_path(directory, segments[-2])) if len(segments) > 1 else None
        prev_hash = prev.record_hash if prev else (GENESIS_HASH if first == 1 else None)
        last = _scan_newest(segment_path(directory, first), first, prev_hash)
        if last is not None:
            return Tail(last.seq, last.record_hash)
        segment_path(directory, first).unlink()
        fsync_dir(directory)
        segments.pop()
    if marker is not None:
        return Tail(marker.seq, marker.hash)
    return Tail(0, GENESIS_HASH)


def _scan_newest(path: Path, first: int, prev_hash: str | None) -> AuditRecord | None:
    checker: ChainChecker | None = None
    good_end, last = 0, None
    size = path.stat().st_size
    for line, end in iter_lines(path, 0, size):
        try:
            record = AuditRecord.from_json(line)
        except (ValueError, KeyError, TypeError):
            break
        if checker is None:
            checker = ChainChecker(expect_seq=first, prev_hash=prev_hash or record.prev_hash)
        if checker.feed(record) is not None:
            break
        good_end, last = end, record
    if good_end < size:
        _quarantine(path, good_end, size)
    return last


def _quarantine(path: Path, keep: int, size: int) -> None:
    """Move bytes past ``keep`` to a side file, then truncate the segment to ``keep``."""
    side = path.with_name(f"{path.name}.torn-{time.time_ns()}")
    with path.open("rb") as src:
        src.seek(keep)
        side.write_bytes(src.read())
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, keep)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)
    logger.error("audit journal %s: cut %d bytes of torn or corrupt tail (kept in %s)",
                 path, size - keep, side.name)
