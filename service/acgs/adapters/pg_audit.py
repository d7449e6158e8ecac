"""The shipper: copies journal records to PostgreSQL, exactly once, in the background.

A thread of its own (so neither its I/O nor its encoding ever waits on the
event loop) reads the fsynced, unshipped records of a journal, copies a batch
into a temporary table, inserts it into ``audit_decisions`` with
``ON CONFLICT (instance_id, seq) DO NOTHING`` and commits; only then does it
advance the journal's shipped marker. A crash between commit and marker means
the batch is sent again and the conflicts drop it: exactly once. A conflicting
row with another ``record_hash`` means two chains claim one instance id (a
journal was wiped and the id reused); that batch is never shipped and the
shipper reports it, loudly, rather than lose either record.

While PostgreSQL is unreachable the shipper retries with exponential backoff;
decisions go on and the journal's backlog grows (up to its bound). No record
can stop it: a damaged journal line, or a record PostgreSQL refuses for its
content, is quarantined in the batch's transaction (:mod:`acgs.adapters.pg_quarantine`),
and any other error is retried: the thread never dies. ``stall_note`` says when
records have waited over ``stall_s`` without a successful round.

``projectors`` (:mod:`acgs.adapters.projectors`) run in each batch's
transaction after the insert, over the records that insert added: they are
the only writers of the tables the events maintain (escalations, idempotency
keys, checkpoints...), so every projection happens exactly once, atomically
with the records it comes from. A projector that cannot apply an event gets
that event's record quarantined, like a record PostgreSQL refuses.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence

import psycopg
from psycopg.rows import TupleRow

from acgs.adapters.journal_reader import JournalReader, ShipBatch
from acgs.adapters.pg_quarantine import (
    describe,
    insert_quarantine,
    refused_for_content,
    ship_bisecting,
)
from acgs.adapters.projectors import Projector, run_sync
from acgs.domain import canonical
from acgs.domain.audit import AuditRecord
from acgs.os_threads import name_os_thread

logger = logging.getLogger("acgs.audit.shipper")

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
COLUMNS = (
    "instance_id", "seq", "decision_id", "decided_at", "kind", "caller_id", "caller_role",
    "request_id", "tenant_id", "principal_id", "request_json", "effect", "violations",
    "policy_revision", "constitutional_hash", "cached", "latency_us", "escalation_id",
    "prev_hash", "record_hash", "schema", "data",
)
_COLS = ", ".join(COLUMNS)
_STAGE = ("CREATE TEMP TABLE IF NOT EXISTS acgs_audit_stage "
          "(LIKE audit_decisions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
_COPY = f"COPY acgs_audit_stage ({_COLS}) FROM STDIN"
_INSERT = (f"INSERT INTO audit_decisions ({_COLS}) SELECT {_COLS} FROM acgs_audit_stage "
           "ON CONFLICT (instance_id, seq) DO NOTHING RETURNING seq")
_FORKED = ("SELECT s.instance_id, s.seq FROM acgs_audit_stage s JOIN audit_decisions a "
           "ON a.instance_id = s.instance_id AND a.seq = s.seq "
           "WHERE a.record_hash <> s.record_hash ORDER BY s.seq LIMIT 1")


class ChainConflict(Exception):
    """PostgreSQL holds another record at an (instance_id, seq) this journal is shipping."""


def row_of(record: AuditRecord) -> tuple[object, ...]:
    """A record as a row of ``audit_decisions`` (in :data:`COLUMNS` order)."""
    return (
        record.instance_id, record.seq, record.decision_id,
        EPOCH + dt.timedelta(microseconds=record.decided_at_us), record.kind, record.caller_id,
        record.caller_role, record.request_id, record.tenant_id, record.principal_id,
        record.request_json, record.effect.value,
        # Most decisions have none: "[]" without the ~2 µs of an encoder (the shipper
        # pays this for every record, and its thread is the server's CPU).
        canonical.dumps([v.as_dict() for v in record.violations]) if record.violations
        else "[]", record.policy_revision,
        record.constitutional_hash, record.cached, record.latency_us, record.escalation_id,
        record.prev_hash, record.record_hash, record.schema, record.data,
    )


class Shipper:
    """Ships ``journal`` (and drained-then-removed ``orphans``) to PostgreSQL at ``conninfo``.

    ``start`` launches the thread; ``stop`` makes a final attempt to ship what
    is left, joins it and closes the connection. ``ship_once`` ships what is
    available now, in the caller's thread, raising psycopg.Error or
    ChainConflict (then ``close``). The attributes ``shipped_records``,
    ``quarantined_records``, ``restarts``, ``last_error`` and the properties
    ``backlog_records``, ``backlog_bytes``, ``lag_s``, ``stalled_for_s`` are for
    metrics and health; ``on_shipped(rows,
    seconds)`` is called from the shipper's thread after each committed batch.
    After a batch the thread waits ``gather_s`` before the next, so a steady
    load is shipped in transactions of ``gather_s`` worth of records.
    """

    def __init__(
        self,
        *,
        journal: JournalReader,
        conninfo: str,
        batch: int = 1000,
        orphans: Sequence[JournalReader] = (),
        idle_s: float = 0.2,
        gather_s: float = 0.05,
        backoff_s: tuple[float, float] = (0.1, 5.0),
        connect_timeout_s: int = 3,
        on_shipped: Callable[[int, float], None] | None = None,
        projectors: Sequence[Projector] = (),
        stall_s: float = 30.0,
    ) -> None:
        self._journals = [journal, *orphans]
        # Called (from this thread) with the seqs of damaged lines of the server's own
        # journal before they are quarantined: a signed checkpoint must attest them first.
        self.attest: Callable[[Sequence[int]], object] | None = None
        # Called (from this thread, in a transaction) with (cursor, chain, last seq, last
        # hash) for an adopted journal fully shipped, before it is removed: a checkpoint of
        # that chain's head, signed with this server's key (pg_event_chain.sealer); False
        # when PostgreSQL's head is not the journal's last record (the journal is then
        # kept). Its server is gone: no checkpoint of its own would cover its last records.
        self.seal: Callable[[psycopg.Cursor[TupleRow], str, int, str], bool] | None = None
        # Adopted journals kept on disk, unshipped, because PostgreSQL's chain disagrees with
        # them (records lost or altered there): the journal is the true copy.
        self.kept: list[str] = []
        self._projectors = tuple(projectors)
        self._conninfo = conninfo
        self._batch = batch
        self._idle_s = idle_s
        self._gather_s = gather_s
        self._backoff_s = backoff_s
        self._connect_timeout_s = connect_timeout_s
        self._on_shipped = on_shipped
        self._conn: psycopg.Connection[TupleRow] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._oldest_pending_us: int | None = None
        self._stall_s = stall_s
        self._progress_at = time.monotonic()
        self.shipped_records = 0
        self.quarantined_records = 0
        self.restarts = 0
        self.last_error: str | None = None

    @property
    def backlog_records(self) -> int:
        return sum(max(0, j.synced_seq - j.shipped_seq) for j in self._journals)

    @property
    def backlog_bytes(self) -> int:
        return sum(j.backlog_bytes for j in self._journals)

    @property
    def lag_s(self) -> float:
        """Age of the oldest record waiting to be shipped; 0 when nothing waits."""
        oldest = self._oldest_pending_us
        return 0.0 if oldest is None else max(0.0, time.time() - oldest / 1e6)

    @property
    def alive(self) -> bool:
        """True while the shipping thread runs (the supervisor polls it)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="acgs-shipper", daemon=True)
        self._thread.start()

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Stop the thread after one last attempt to ship everything; close the connection."""
        self._stop.set()
        for journal in self._journals:
            journal.wake_readers()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                logger.error("shipper did not stop within %.1f s", timeout_s)

    def ship_once(self) -> int:
        """Ship every record available now; the number of rows inserted."""
        inserted = 0
        for journal in list(self._journals):
            while batch := self._read(journal):
                inserted += self._ship(journal, batch)
                if batch.size < self._batch:
                    break  # drained what was there; what arrived since waits for the next round
            self._retire_if_drained(journal)
        self._oldest_pending_us = None
        self._progress_at = time.monotonic()
        return inserted

    def _run(self) -> None:
        """The thread: ship, wait, repeat; any failure is logged and retried with back-off.

        Nothing escapes the loop (a bug, a damaged file, a full disk included): a
        shipper that stopped shipping silently would let the journal fill up.
        """
        name_os_thread()
        delay = self._backoff_s[0]
        while not self._stop.is_set():
            try:
                if self.ship_once() == 0:
                    self._save_markers()  # idle: the marker file catches up
                    self._journals[0].wait_for_data(self._idle_s)
                else:
                    # Let records gather: under load one transaction per ``gather_s``
                    # rather than one per fsync (each costs a commit and a marker write).
                    self._stop.wait(self._gather_s)
                delay, self.last_error = self._backoff_s[0], None
            except Exception as err:
                self.restarts += 1
                self._failed(err, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self._backoff_s[1])
        self._final_attempt()

    @property
    def stalled_for_s(self) -> float:
        """Seconds records have waited without a successful round; 0 while shipping works."""
        if self.backlog_records == 0:
            return 0.0
        return max(0.0, time.monotonic() - self._progress_at)

    @property
    def kept_journals(self) -> int:
        """Adopted journals kept because PostgreSQL's chain disagrees with them."""
        return len(self.kept)

    def kept_note(self) -> str | None:
        """What ``/ready``'s body says of :attr:`kept`, or None."""
        if not self.kept:
            return None
        return (f"audit shipper: PostgreSQL lost or altered records of a dead server's chain; "
                f"its journal is kept, the true copy: {', '.join(self.kept)}")

    def stall_note(self) -> str | None:
        """Why this shipper is not keeping up, or None: for ``/ready``'s body and the logs."""
        if self._thread is not None and not self._thread.is_alive() and not self._stop.is_set():
            return "audit shipper: its thread is not running"
        stalled = self.stalled_for_s
        if stalled <= self._stall_s:
            return None
        return (f"audit shipper: no progress for {stalled:.0f} s with {self.backlog_records} "
                f"records waiting; last error: {self.last_error or 'none'}")

    def _final_attempt(self) -> None:
        try:
            self.ship_once()
        except Exception as err:
            logger.warning("final ship failed; %d records stay in the journal for the next "
                           "start: %s", self.backlog_records, err)
        finally:
            try:
                self._save_markers()
            except OSError as err:  # the next start re-sends what PostgreSQL already holds
                logger.warning("could not save the shipped marker: %s", err)
            self.close()

    def _save_markers(self) -> None:
        """Bring each journal's marker file up to what is shipped (see mark_shipped)."""
        for journal in self._journals:
            journal.save_marker()

    def close(self) -> None:
        """Close the connection (``stop`` does this; call it after using only ``ship_once``)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                logger.debug("error closing the shipper's connection", exc_info=True)

    def _failed(self, err: Exception, delay: float) -> None:
        self.close()
        self.last_error = f"{type(err).__name__}: {err}".strip()
        expected = isinstance(err, (psycopg.Error, OSError))
        log = logger.warning if expected else logger.critical
        log("shipping failed (backlog %d records), retrying in %.1f s: %s",
            self.backlog_records, delay, self.last_error, exc_info=not expected)

    def _read(self, journal: JournalReader) -> ShipBatch | None:
        batch = journal.read_unshipped(self._batch)
        if not batch.size:
            return None
        first = batch.records[0].decided_at_us if batch.records else time.time_ns() // 1000
        if self._oldest_pending_us is None or first < self._oldest_pending_us:
            self._oldest_pending_us = first
        return batch

    def _ship(self, journal: JournalReader, batch: ShipBatch) -> int:
        start = time.perf_counter()
        if batch.damaged and self.attest is not None and journal is self._journals[0]:
            self.attest([d.seq for d in batch.damaged])  # durable before the quarantine
        conn = self._connection()
        try:
            with conn.transaction(), conn.cursor() as cur:
                inserted = self._insert(cur, batch.records)
                quarantined = insert_quarantine(cur, journal.instance_id, batch.damaged)
        except Exception as err:
            if not refused_for_content(err):
                raise
            logger.warning("PostgreSQL refused a batch of %d records (%s); finding the refused "
                           "ones", len(batch.records), describe(err))
            inserted, quarantined = ship_bisecting(
                conn, journal.instance_id, batch,
                lambda cur, lo, hi: self._insert(cur, batch.records[lo:hi], fresh=True))
        # Only after the commit: a crash before it re-sends. Saved at once when records were
        # quarantined: sent again, PostgreSQL might take one and hold it twice.
        journal.mark_shipped(batch, save=quarantined > 0)
        self.shipped_records += inserted
        self.quarantined_records += quarantined
        self._oldest_pending_us = None
        self._progress_at = time.monotonic()  # each batch is progress: a long drain is no stall
        if self._on_shipped is not None:
            self._on_shipped(inserted, time.perf_counter() - start)
        return inserted + quarantined

    def _insert(self, cur: psycopg.Cursor[TupleRow], records: Sequence[AuditRecord], *,
                fresh: bool = False) -> int:
        """Stage ``records``, insert them, project those inserted; rows inserted.

        ``fresh``: empty the stage first (slices of a batch, within one transaction).
        """
        if fresh:
            cur.execute("DELETE FROM acgs_audit_stage")
        with cur.copy(_COPY) as copy:
            for record in records:
                copy.write_row(row_of(record))
        cur.execute(_INSERT)
        added = {int(row[0]) for row in cur.fetchall()}
        if added and self._projectors:
            run_sync(cur, self._projectors, [r for r in records if r.seq in added])
        if len(added) == len(records):
            # Every staged row went in, so each (instance_id, seq) holds exactly the staged
            # record: no fork to look for (one round trip fewer per batch in steady state).
            return len(added)
        forked = cur.execute(_FORKED).fetchone()
        if forked is not None:
            raise ChainConflict(
                f"PostgreSQL holds another record at instance {forked[0]!r} seq {forked[1]}; "
                "was this instance id reused after its journal was lost?"
            )
        return len(added)

    def _retire_if_drained(self, journal: JournalReader) -> None:
        if journal is self._journals[0] or journal.shipped_seq < journal.synced_seq:
            return
        remove = getattr(journal, "remove", None)
        last_hash = getattr(journal, "last_hash", None)
        if self.seal is not None and journal.synced_seq > 0 and last_hash is not None:
            getattr(journal, "mark_sealing", lambda: None)()
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cur:
                removable = self.seal(cur, journal.instance_id, journal.synced_seq, last_hash)
            if not removable:  # PostgreSQL disagrees with it (logged by the seal)
                self._journals.remove(journal)  # kept on disk, the true copy; not shipped
                self.kept.append(str(getattr(journal, "directory", journal.instance_id)))
                return
        if remove is not None:
            remove()
        self._journals.remove(journal)

    def _connection(self) -> psycopg.Connection[TupleRow]:
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(
                self._conninfo, connect_timeout=self._connect_timeout_s, keepalives=1,
                keepalives_idle=10, keepalives_interval=3, keepalives_count=3,
            )
            conn.execute("SET statement_timeout = '60s'")
            conn.execute(_STAGE)
            conn.commit()
            self._conn = conn
        return self._conn
