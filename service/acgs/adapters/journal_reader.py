"""The shipping side of a journal: read what is durable and unshipped, mark it shipped."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from acgs.adapters.journal_files import (
    Marker,
    Position,
    fsync_dir,
    iter_lines,
    segment_path,
    write_marker,
)
from acgs.domain.audit import GENESIS_HASH, AuditRecord

logger = logging.getLogger("acgs.audit.journal")


@dataclass(frozen=True, slots=True)
class ShipBatch:
    """Records read for shipping; ``end`` is where reading resumes once they are shipped."""

    records: list[AuditRecord]
    end: Position
    nbytes: int


class JournalReader:
    """Reads the fsynced, unshipped records of a journal directory, oldest first.

    Safe to use from a thread other than the writer's. Only records the writer
    has synced are read, so nothing that could still be lost is ever shipped.
    """

    def __init__(self, *, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._new_data = threading.Event()
        self._sizes: dict[int, int] = {}
        self._marker = Marker(0, GENESIS_HASH, Position(1, 0))
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
        self._marker = marker
        self._drop_before(marker.at.segment)
        self._backlog_bytes = sum(self._sizes.values()) - marker.at.offset

    def read_unshipped(self, max_records: int) -> ShipBatch:
        """Up to ``max_records`` synced records after the shipped marker, oldest first.

        Raises ValueError (or KeyError/TypeError) if a synced record does not parse,
        which means the disk corrupted it after recovery.
        """
        self._new_data.clear()
        with self._lock:
            cur, synced = self._marker.at, self._synced
            sizes = {f: s for f, s in self._sizes.items() if cur.segment <= f <= synced.segment}
        records: list[AuditRecord] = []
        nbytes = 0
        for first in sorted(sizes):
            if first > cur.segment:
                cur = Position(first, 0)
            end = synced.offset if first == synced.segment else sizes[first]
            for line, after in iter_lines(segment_path(self.directory, first), cur.offset, end):
                records.append(AuditRecord.from_json(line))
                nbytes += after - cur.offset
                cur = Position(first, after)
                if len(records) >= max_records:
                    return ShipBatch(records, cur, nbytes)
        return ShipBatch(records, cur, nbytes)

    def mark_shipped(self, batch: ShipBatch) -> None:
        """Record durably that PostgreSQL holds ``batch``; delete segments it completes."""
        if not batch.records:
            return
        last = batch.records[-1]
        marker = Marker(last.seq, last.record_hash, batch.end)
        write_marker(self.directory, marker)
        with self._lock:
            self._marker = marker
            self._backlog_bytes -= batch.nbytes
        self._drop_before(marker.at.segment)

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
