"""The local audit journal: an append-only, hash-chained, group-committed log.

:class:`Journal` implements the :class:`~acgs.service_layer.ports.AuditSink`
port. ``append`` assigns each record its seq and chain hashes on the caller's
event loop (so seq order is append order), hands the encoded lines to one
writer thread and waits. The writer takes everything queued since its last
write, writes it with one ``write`` and makes it durable with one
``fdatasync`` (group commit), then settles every waiter's future through
``loop.call_soon_threadsafe``.

``fsync_interval_ms``: with 0 (the default) a record is fsynced before its
``append`` returns, so it survives a power loss or kernel crash. With N > 0 an
``append`` returns once the record is written to the OS and the writer fsyncs
at most every N ms: more throughput on slow disks, still safe against the
process being killed (SIGKILL, OOM), but a power loss or kernel crash may lose
up to N ms of answered decisions. The shipper only ever ships fsynced records,
so the chain never forks.

When the bytes not yet shipped to PostgreSQL would pass ``max_unshipped_bytes``
``append`` raises :class:`~acgs.errors.AuditUnavailable` (the service then
answers DENY audit_unavailable). A failed write does the same until restart.
See :mod:`acgs.adapters.journal_files` for the layout and for recovery.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from acgs.adapters.journal_files import (
    MARKER,
    SEALING,
    Position,
    fsync_dir,
    list_segments,
    lock_dir,
    read_marker,
    recover,
    segment_path,
)
from acgs.adapters.journal_lines import checksummed
from acgs.adapters.journal_writer import JournalWriter
from acgs.domain import events
from acgs.domain.audit import GENESIS_HASH, AuditRecord, describe_request
from acgs.errors import AuditUnavailable, ConfigurationError
from acgs.service_layer.ports import AuditEntry, Entry, EventEntry

logger = logging.getLogger("acgs.audit.journal")

_INSTANCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class Journal(JournalWriter):
    """A journal directory owned by this process; see the module docstring.

    ``open`` recovers and starts the writer (ConfigurationError if another
    process owns the directory); ``close`` writes and syncs what is queued,
    then stops. With ``read_only=True`` (an orphan adopted for shipping) there
    is no writer and ``append`` raises AuditUnavailable.
    """

    def __init__(
        self,
        *,
        directory: Path,
        instance_id: str,
        fsync_interval_ms: float = 0.0,
        max_unshipped_bytes: int = 1024**3,
        segment_bytes: int = 64 * 1024**2,
        mask_fields: Sequence[str] = (),
        read_only: bool = False,
    ) -> None:
        if not _INSTANCE_ID.match(instance_id):
            raise ConfigurationError(f"instance id {instance_id!r} is not a safe directory name")
        if instance_id == events.ADMIN_CHAIN:  # its records would take the admin chain's seqs
            raise ConfigurationError(f"instance id {instance_id!r} names the chain of admin "
                                     "events in PostgreSQL; choose another ACGS_INSTANCE_ID")
        super().__init__(directory=directory, fsync_interval_ms=fsync_interval_ms,
                         segment_bytes=segment_bytes)
        self.instance_id = instance_id
        self.read_only = read_only
        self._max_bytes = max_unshipped_bytes
        self._mask = tuple(mask_fields)
        self._last_seq = 0
        self._last_hash = GENESIS_HASH
        self._lock_fd: int | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Lock the directory, recover it (torn tail, seq, last hash), start the writer."""
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self._lock_fd = lock_dir(self.directory)
        except BlockingIOError as err:
            raise ConfigurationError(
                f"audit journal {self.directory} is owned by another live process "
                f"(is instance id {self.instance_id!r} used twice?)"
            ) from err
        if not self.read_only and (self.directory / SEALING).exists():
            self._release()
            raise ConfigurationError(
                f"audit journal {self.directory}: its server died and another server sealed "
                f"its chain in PostgreSQL (a signed checkpoint after its last record), so "
                f"instance id {self.instance_id!r} must not continue it: start with another "
                "ACGS_INSTANCE_ID (a server started with any other id ships and removes this "
                "journal)")
        marker = read_marker(self.directory)
        tail = recover(self.directory, marker)
        if marker is not None and marker.seq > tail.last_seq:
            logger.error("journal %s ends at seq %d but seq %d was shipped; continuing after it",
                         self.directory, tail.last_seq, marker.seq)
            tail = type(tail)(marker.seq, marker.hash)
        self._last_seq, self._last_hash = tail.last_seq, tail.last_hash
        firsts = list_segments(self.directory)
        self._sizes = {f: segment_path(self.directory, f).stat().st_size for f in firsts}
        self._start_reading(marker, next_seq=self._last_seq + 1)
        self._synced_seq = self._last_seq
        if firsts:
            self._synced = Position(firsts[-1], self._sizes[firsts[-1]])
        logger.info("journal %s: %d records, %d unshipped (%d bytes)", self.directory,
                    self._last_seq, self.backlog_records, self.backlog_bytes)
        if not self.read_only:
            self._start_writer(last_seq=self._last_seq)

    def close(self, *, timeout_s: float = 30.0) -> None:
        """Write and sync everything queued, stop the writer, save the shipped marker,
        release the directory."""
        if self._stop_writer(timeout_s):
            try:
                self.save_marker()
            except OSError:  # the next start re-sends what PostgreSQL already holds
                logger.exception("journal %s: could not save the shipped marker", self.directory)
            self._release()

    def mark_sealing(self) -> None:
        """Before an adopting server seals this read-only journal's chain in PostgreSQL
        (a checkpoint record after its last one): from now on no server reopens it as
        its own, which would continue the chain at the seal's seq."""
        path = self.directory / SEALING
        with open(path, "wb") as f:
            os.fsync(f.fileno())
        fsync_dir(self.directory)

    @property
    def last_hash(self) -> str:
        """The record hash of the newest record (queued or written)."""
        return self._last_hash

    def remove(self) -> None:
        """Delete this read-only journal's directory once everything in it is shipped."""
        if not self.read_only or self.backlog_records or self.shipped_seq < self.synced_seq:
            raise AuditUnavailable(f"journal {self.directory} still holds unshipped records")
        # The marker goes last, exact: a crash part-way leaves it to say where the chain
        # ends, so that an instance reusing this id continues after it; after the sealing
        # flag, for a sealed chain, whose id must not be continued at all.
        self.save_marker()
        last = [self.directory / SEALING, self.directory / MARKER]
        for path in self.directory.iterdir():
            if path not in last:
                path.unlink()
        fsync_dir(self.directory)
        for path in reversed(last):
            path.unlink(missing_ok=True)
            fsync_dir(self.directory)
        self.directory.rmdir()
        self._release()
        logger.info("journal %s fully shipped and removed", self.directory)

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- the AuditSink port ------------------------------------------------------------------

    async def append(self, entries: Sequence[Entry], *, reserve: bool = False) -> None:
        """Make ``entries`` durable, in order, as the next records of this chain.

        Returns once every entry is written (and fsynced, see ``fsync_interval_ms``).
        Raises AuditUnavailable when the backlog is over its bound, the journal
        is closed or read-only, or its disk failed. ``reserve=True`` lets a few
        records past the backlog bound: the escalation that reports the refusals
        themselves (one per episode; see acgs.service_layer.escalator).
        """
        if not entries:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._cond:
            self._check_open()
            data, last_seq, last_hash = self._encode(entries)
            if not reserve and self._backlog_bytes + len(data) > self._max_bytes:
                raise AuditUnavailable(
                    f"audit backlog of {self._backlog_bytes} bytes not yet shipped to the "
                    f"database is at its bound of {self._max_bytes} bytes"
                )
            self._last_seq, self._last_hash = last_seq, last_hash
            self._backlog_bytes += len(data)
            self._enqueue(data, last_seq, (loop, future))
        await future

    async def append_at_head(self, make: Callable[[int, str], AuditEntry]) -> int:
        """Append the entry ``make(last_seq, last_hash)`` builds right after the current head.

        Nothing can slip in between reading the head and placing the record, so
        a checkpoint can sign the head it follows. Returns the record's seq once
        it is durable. Not held to the backlog bound (one small record); raises
        AuditUnavailable when the journal is closed, read-only or failed.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._cond:
            self._check_open()
            entry = make(self._last_seq, self._last_hash)
            data, last_seq, last_hash = self._encode([entry])
            self._last_seq, self._last_hash = last_seq, last_hash
            self._backlog_bytes += len(data)
            self._enqueue(data, last_seq, (loop, future))
        await future
        return last_seq

    @property
    def last_seq(self) -> int:
        """The seq of the newest record (queued or written)."""
        return self._last_seq

    @property
    def backlog_records(self) -> int:
        """Records not yet shipped to PostgreSQL."""
        return max(0, self._last_seq - self._marker.seq)

    def _check_open(self) -> None:
        if self.failed is not None:
            raise AuditUnavailable(f"audit journal failed: {self.failed}")
        if self.read_only or self._stopping or self._thread is None:
            raise AuditUnavailable("audit journal is not open for appending")

    def _encode(self, entries: Sequence[Entry]) -> tuple[bytes, int, str]:
        seq, prev = self._last_seq, self._last_hash
        lines = []
        for entry in entries:
            seq += 1
            prev, line = self._record(entry, seq=seq, prev_hash=prev).seal_line()
            lines.append(checksummed(line))
        lines.append(b"")
        return b"\n".join(lines), seq, prev

    def _record(self, entry: Entry, *, seq: int, prev_hash: str) -> AuditRecord:
        return record_of(entry, instance_id=self.instance_id, seq=seq, prev_hash=prev_hash,
                         mask=self._mask)


def record_of(entry: Entry, *, instance_id: str, seq: int, prev_hash: str,
              mask: Sequence[str] = ()) -> AuditRecord:
    """The (unsealed) record ``entry`` makes at ``seq`` of ``instance_id``'s chain: a
    journal's, or a chain PostgreSQL holds (:mod:`acgs.adapters.pg_event_chain`).
    ``mask``: request fields written as "***" (ACGS_AUDIT_MASK_FIELDS)."""
    if isinstance(entry, EventEntry):
        return replace(events.envelope(
            entry.event, event_id=entry.event_id, instance_id=instance_id,
            at_us=entry.at_ns // 1000, caller_id=entry.caller.id,
            caller_role=entry.caller.role,
            constitutional_hash=entry.constitutional_hash), seq=seq, prev_hash=prev_hash)
    request_json, tenant_id, principal_id = describe_request(
        entry.request_json, mask, entry.request_doc)
    d = entry.decision
    return AuditRecord(
        decision_id=d.decision_id, instance_id=instance_id, seq=seq,
        decided_at_us=d.decided_at_ns // 1000, kind=entry.kind,
        caller_id=entry.caller.id, caller_role=entry.caller.role, request_id=d.request_id,
        tenant_id=tenant_id, principal_id=principal_id, request_json=request_json,
        effect=d.effect, violations=d.violations, policy_revision=d.policy_revision,
        constitutional_hash=d.constitutional_hash, cached=d.cached,
        latency_us=d.latency_us, escalation_id=d.escalation_id, prev_hash=prev_hash,
        schema=events.SCHEMA, data=entry.data,
    )


def adopt_orphans(root: Path, *, exclude: str) -> list[Journal]:
    """Open (read-only) the journals under ``root`` whose owning process is gone.

    A server restarted under a new instance id finds its predecessor's journal
    here; the shipper drains it. Directories locked by a live process are skipped.
    """
    if not root.is_dir():
        return []
    orphans = []
    for directory in sorted(p for p in root.iterdir() if p.is_dir() and p.name != exclude):
        try:
            journal = Journal(directory=directory, instance_id=directory.name, read_only=True)
        except ConfigurationError as err:
            logger.error("journal %s is not shipped: %s", directory, err)
            continue
        try:
            journal.open()
        except ConfigurationError:
            continue  # owned by a live server
        orphans.append(journal)
    return orphans
