"""The shipping side of a journal: read what is durable and unshipped, mark it shipped."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from acgs.adapters.journal_files import (
    Marker,
    Position,
    fsync_dir,
    iter_lines,
    segment_path,
    write_marker,
)
from acgs.adapters.journal_lines import Damaged, DamagedLine, parse_line
from acgs.domain.audit import GENESIS_HASH, AuditRecord

logger = logging.getLogger("acgs.audit.journal")

# How far behind shipping the marker file may fall, in seconds (see mark_shipped).
MARKER_EVERY_S = 1.0


@dataclass(slots=True)
class ShipBatch:
    """Lines read for shipping; ``end`` is where reading resumes once they are shipped.

    ``records`` are the intact lines' records and ``lines`` their journal lines,
    verbatim, with where each was read (so that a record PostgreSQL refuses can
    be quarantined as written);
    ``damaged`` are the lines that failed their check, each holding a seq.
    ``last_seq``/``last_hash``: the newest seq read and the last intact record's hash.
    """

    records: list[AuditRecord]
    end: Position
    nbytes: int
    lines: list[tuple[bytes, str]] = field(default_factory=list)
    damaged: list[Damaged] = field(default_factory=list)
    last_seq: int = 0
    last_hash: str = GENESIS_HASH

    @property
    def size(self) -> int:
        """Lines read: records and damaged lines."""
        return len(self.records) + len(self.damaged)

    def add(self, line: bytes, source: str) -> None:
        """One more line: its record, or (failing its check) a damaged line."""
        try:
            record = parse_line(line)
        except DamagedLine as err:
            self.last_seq += 1
            self.damaged.append(Damaged(self.last_seq, source, line, str(err)))
            logger.error("audit journal: damaged line at %s (seq %d): %s", source,
                         self.last_seq, err)
            return
        self.records.append(record)
        self.lines.append((line, source))
        self.last_seq, self.last_hash = record.seq, record.record_hash


class JournalReader:
    """Reads the fsynced, unshipped records of a journal directory, oldest first.

    Safe to use from a thread other than the writer's. Only records the writer
    has synced are read, so nothing that could still be lost is ever shipped.
    """

    def __init__(self, *, directory: Path) -> None:
        self.directory = directory
        self.instance_id = directory.name
        self._lock = threading.Lock()
        self._new_data = threading.Event()
        self._sizes: dict[int, int] = {}
        self._marker = Marker(0, GENESIS_HASH, Position(1, 0))
        self._marker_file_lock = threading.Lock()
        self._marker_saved: Marker | None = None  # what the marker file holds, once known
        self._marker_saved_at = time.monotonic()
        self._synced = Position(0, 0)
        self._synced_seq = 0
        self._backlog_bytes = 0

    @property
    def shipped_seq(self) -> int:
        """The newest seq PostgreSQL is known to hold."""
        return self._marker.seq

    @property
    def synced_seq(self) -> int:
        """The newest seq that is durable on local disk."""
        return self._synced_seq

    @property
    def backlog_bytes(self) -> int:
        """Journal bytes (queued, written or synced) not yet shipped to PostgreSQL."""
        return self._backlog_bytes

    def wake_readers(self) -> None:
        self._new_data.set()

    def wait_for_data(self, timeout_s: float) -> bool:
        """Block until the writer syncs new records (True) or ``timeout_s`` passes (False)."""
        return self._new_data.wait(timeout_s)

    def _start_reading(self, marker: Marker | None, *, next_seq: int) -> None:
        """Settle where shipping resumes and what is unshipped; drop shipped segments."""
        firsts = sorted(self._sizes)
        if marker is None:
            marker = Marker(0, GENESIS_HASH, Position(firsts[0] if firsts else next_seq, 0))
        elif marker.at.segment not in self._sizes:
            later = [f for f in firsts if f > marker.seq]
            marker = Marker(marker.seq, marker.hash, Position(later[0] if later else next_seq, 0))
        self._marker = self._marker_saved = marker
        self._drop_before(marker.at.segment)
        self._backlog_bytes = sum(self._sizes.values()) - marker.at.offset

    def read_unshipped(self, max_records: int) -> ShipBatch:
        """Up to ``max_records`` synced lines after the shipped marker, oldest first.

        A line that fails its check (:mod:`acgs.adapters.journal_lines`) is returned
        among ``damaged``, holding the seq after the line before it: reading goes on.
        """
        self._new_data.clear()
        with self._lock:
            marker, synced = self._marker, self._synced
            sizes = {f: s for f, s in self._sizes.items()
                     if marker.at.segment <= f <= synced.segment}
        out = ShipBatch([], marker.at, 0, last_seq=marker.seq, last_hash=marker.hash)
        cur = marker.at
        for first in sorted(sizes):
            if first > cur.segment:
                cur = Position(first, 0)
            if cur.offset == 0:  # a segment is named by the seq of its first line
                out.last_seq = first - 1
            end = synced.offset if first == synced.segment else sizes[first]
            path = segment_path(self.directory, first)
            for line, after in iter_lines(path, cur.offset, end):
                out.add(line, f"{path.name}@{cur.offset}")
                out.nbytes += after - cur.offset
                cur = out.end = Position(first, after)
                if out.size >= max_records:
                    return out
        return out

    def mark_shipped(self, batch: ShipBatch, *, save: bool = False) -> None:
        """Record that PostgreSQL holds ``batch``; delete the segments it completes.

        The marker file may fall up to ``MARKER_EVERY_S`` behind: each write of it costs
        two fsyncs and a rename, once per shipped batch before (20 times a second under
        a steady load, beside the decisions' own fsyncs). A crash in between makes the
        next start send again what PostgreSQL already holds, which it takes as shipped,
        exactly as a crash between the commit and the marker always did. The file is
        written at once when the batch passed a damaged line (its seq must never be
        given again), with ``save`` (the shipper's, for a batch in which PostgreSQL
        refused records: sent again, one could be taken the second time and be both
        quarantined and kept) and before a completed segment is deleted;
        ``save_marker`` writes it when shipping goes idle, when the shipper stops and
        when the journal closes.
        """
        if not batch.size:
            return
        marker = Marker(batch.last_seq, batch.last_hash, batch.end)
        with self._lock:
            self._marker = marker
            self._backlog_bytes -= batch.nbytes
            completes = any(f < marker.at.segment for f in self._sizes)
        if (save or batch.damaged or completes
                or time.monotonic() - self._marker_saved_at >= MARKER_EVERY_S):
            self.save_marker()
        self._drop_before(marker.at.segment)

    def save_marker(self) -> None:
        """Write the shipped marker durably, unless the file holds it already (or this
        journal was never opened: then the directory may be another process's)."""
        with self._marker_file_lock:
            marker = self._marker
            if self._marker_saved is None or marker == self._marker_saved:
                return
            write_marker(self.directory, marker)
            self._marker_saved, self._marker_saved_at = marker, time.monotonic()

    def _drop_before(self, segment: int) -> None:
        """Delete segments wholly before ``segment``: every record in them is shipped."""
        with self._lock:
            doomed = [f for f in self._sizes if f < segment]
            for first in doomed:
                del self._sizes[first]
        for first in doomed:
            segment_path(self.directory, first).unlink(missing_ok=True)
            logger.debug("journal %s: deleted shipped segment %d", self.directory, first)
        if doomed:
            fsync_dir(self.directory)

