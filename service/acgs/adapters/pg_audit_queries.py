"""Reading the audit trail in PostgreSQL: one decision, pages, exports, chain checks.

Pages are in ``(decided_at, instance_id, seq)`` order, a total order over
every instance's records, and the cursor is the last key seen: paging is
stable while other servers keep inserting, with no gaps or repeats among the
rows present when each page is read. The decision reads (``get_decision``,
``list_decisions``) see the records that are decisions or evaluations
(:data:`acgs.domain.events.DECISION_KINDS`); ``list_events`` reads every kind;
exports and chain checks cover whole chains, every kind included. Every method raises
:class:`~acgs.errors.AuditUnavailable` when PostgreSQL cannot be reached.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from acgs.adapters import cursors
from acgs.adapters.audit_signing import TrustedKeys
from acgs.adapters.journal_lines import DamagedLine, parse_line
from acgs.adapters.pg_audit import COLUMNS, EPOCH
from acgs.adapters.pg_checkpoints import SELECT as CHECKPOINTS
from acgs.adapters.pg_checkpoints import SOURCE, chains_sql
from acgs.domain import events
from acgs.domain.audit import GENESIS_HASH, MISSING, AuditRecord, ChainBreak, StoredRecord
from acgs.domain.audit_query import (
    LEGACY_ESCALATION_KINDS,
    ChainInfo,
    ChainReport,
    DecisionFilter,
    EventFilter,
    Page,
    Quarantined,
    stored_kinds,
)
from acgs.domain.chain_verify import ChainVerifier, StoredCheckpoint, stored_of
from acgs.domain.checkpoint import Checkpoint, CheckpointKeys
from acgs.domain.model import Effect, Severity, Violation
from acgs.errors import AuditUnavailable, InvalidRequest, NotFound

_SELECT = sql.SQL("SELECT {} FROM audit_decisions").format(
    sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS))
_ORDER = sql.SQL(" ORDER BY decided_at, instance_id, seq LIMIT %s")
_US = dt.timedelta(microseconds=1)
_DECISION_KINDS = sorted(events.DECISION_KINDS)
_BEYOND = 100  # copies of checkpoints past a cut tail worth reading: the newest decide
QUARANTINE = "audit_quarantine"  # the source of an exported record quarantined intact
_SIFTED_CHUNKS = 10  # largest pages one ListEvents call may read when Python sifts rows
T = TypeVar("T")


def record_of(row: tuple[Any, ...], *, source: str = "") -> AuditRecord:
    """A row of ``audit_decisions`` (selected in COLUMNS order) as a record.

    A column that does not parse (``violations`` that are not a list of valid
    violations, an unknown ``effect``) never fails the read: the record comes
    back with a placeholder there and ``malformed`` naming the column, so that
    lists and exports go on and the verifier names the row as altered.
    """
    doc = dict(zip(COLUMNS, row, strict=True))
    problems: list[str] = []
    effect = _parsed(problems, "effect", lambda: Effect(doc["effect"]), Effect.DENY)
    none: tuple[Violation, ...] = ()
    violations = _parsed(problems, "violations", lambda: _violations(doc["violations"]), none)
    return StoredRecord(
        decision_id=str(doc["decision_id"]), instance_id=doc["instance_id"], seq=doc["seq"],
        decided_at_us=(doc["decided_at"] - EPOCH) // _US, kind=doc["kind"],
        caller_id=doc["caller_id"], caller_role=doc["caller_role"],
        request_id=doc["request_id"], tenant_id=doc["tenant_id"],
        principal_id=doc["principal_id"], request_json=doc["request_json"],
        effect=effect, violations=violations,
        policy_revision=doc["policy_revision"], constitutional_hash=doc["constitutional_hash"],
        cached=doc["cached"], latency_us=doc["latency_us"], escalation_id=doc["escalation_id"],
        prev_hash=doc["prev_hash"], record_hash=doc["record_hash"],
        schema=doc["schema"], data=doc["data"],
        malformed="; ".join(problems), source=source,
    )


def _parsed(problems: list[str], column: str, parse: Callable[[], T], placeholder: T) -> T:
    try:
        return parse()
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        problems.append(f"column {column} does not parse: {err!r}"[:300])
        return placeholder


def _violations(value: Any) -> tuple[Violation, ...]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    out = []
    for v in value:
        principle, message = v["principle"], v["message"]
        if not (isinstance(principle, str) and isinstance(message, str)):
            raise TypeError("principle and message must be strings")
        out.append(Violation(principle, Severity(v["severity"]), message))
    return tuple(out)


def encode_cursor(record: AuditRecord) -> str:
    return cursors.encode([record.decided_at_us, record.instance_id, record.seq])


def decode_cursor(cursor: str) -> tuple[dt.datetime, str, int]:
    """The key a cursor resumes after; InvalidRequest when it is not one of ours."""
    us, instance, seq = cursors.decode(cursor, (int, str, int))
    try:
        return EPOCH + dt.timedelta(microseconds=us), instance, seq
    except OverflowError as err:
        raise InvalidRequest(cursors.INVALID) from err


@contextmanager
def _reachable() -> Iterator[None]:
    try:
        yield
    except (psycopg.OperationalError, PoolTimeout) as err:
        raise AuditUnavailable(f"audit database unreachable: {err}") from err


class AuditQueries:
    """Read-side of the audit trail over an open ``AsyncConnectionPool``."""

    def __init__(self, *, pool: AsyncConnectionPool[Any], max_page: int = 1000,
                 verify_chunk: int = 5000, keys: CheckpointKeys | None = None) -> None:
        self._pool = pool
        # No keys configured: checkpoints are checked against the key each carries.
        self._keys = keys or TrustedKeys(keys=(), self_asserted=True, source="none configured")
        self._max_page = max_page
        self._chunk = verify_chunk

    async def get_decision(self, decision_id: str) -> AuditRecord:
        """The record of one decision; InvalidRequest for a malformed id, NotFound if absent."""
        try:
            key = uuid.UUID(decision_id)
        except ValueError as err:
            raise InvalidRequest(f"decision_id {decision_id!r} is not a UUID") from err
        query = _SELECT + sql.SQL(" WHERE decision_id = %s") + _ORDER
        rows = await self._fetch(query, [key, 1])
        if not rows:
            raise NotFound(f"no decision {decision_id} in the audit trail")
        record = record_of(rows[0])
        if record.kind not in events.DECISION_KINDS:
            raise NotFound(f"{decision_id} is a {record.kind} event, not a decision "
                           "(ListEvents reads every kind)")
        return record

    async def list_decisions(self, where: DecisionFilter, *, page_size: int = 100,
                             cursor: str = "") -> Page:
        """One page of decision records matching ``where``, oldest first, after ``cursor``.

        Raises InvalidRequest for a bad cursor, page size or time range.
        """
        conds, params = _conditions(where)
        conds.append(sql.SQL("kind = ANY(%s)"))
        params.append(_DECISION_KINDS)
        return await self._page(conds, params, page_size, cursor)

    async def list_events(self, where: EventFilter, *, page_size: int = 100,
                          cursor: str = "") -> Page:
        """One page of events (every kind, legacy records by the event they are) matching
        ``where``, oldest first, after ``cursor``; ``resume_cursor`` follows the last
        record read. Raises InvalidRequest for a bad cursor, page size or time range.

        A legacy "escalation" record is an opening or a change by its request: rows of
        the other one are read and passed over (SQL never parses a record's JSON). Such a
        filter reads rows a largest page at a time, at most ``_SIFTED_CHUNKS`` of them in
        one call: a page may come back short (even empty) with a ``next_cursor`` to go on,
        so that no call reads the whole trail."""
        self._check_size(page_size)
        conds, params = _time_conditions(where.since_us, where.until_us)
        for column, value in (("caller_id", where.actor), ("instance_id", where.instance_id)):
            if value:
                conds.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
                params.append(value)
        if where.after_seq:
            conds.append(sql.SQL("seq > %s"))
            params.append(where.after_seq)
        sifted = False
        if where.kinds:
            stored = stored_kinds(where.kinds)
            conds.append(sql.SQL("kind = ANY(%s)"))
            params.append(sorted(stored))
            sifted = "escalation" in stored and not where.kinds >= LEGACY_ESCALATION_KINDS
        chunk = self._max_page if sifted else page_size
        out: list[AuditRecord] = []
        last, resume = cursor, cursor
        for _ in range(_SIFTED_CHUNKS):
            page = await self._page(conds, params, chunk, last)
            for record in page.records:
                resume = encode_cursor(record)
                if where.matches(record):
                    out.append(record)
                if len(out) == page_size:
                    return Page(out, resume, resume)
            if not page.next_cursor:
                return Page(out, "", resume)
            last = page.next_cursor
        return Page(out, resume, resume)  # read enough for one call: go on from here

    async def _page(self, conds: list[sql.Composable], params: list[Any], page_size: int,
                    cursor: str) -> Page:
        """One page of the rows that meet ``conds``, after ``cursor``."""
        self._check_size(page_size)
        conds, params = list(conds), list(params)
        if cursor:
            conds.append(sql.SQL("(decided_at, instance_id, seq) > (%s, %s, %s)"))
            params.extend(decode_cursor(cursor))
        query = _SELECT
        if conds:
            query += sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conds)
        records = [record_of(r) for r in await self._fetch(query + _ORDER, [*params, page_size])]
        more = len(records) == page_size
        return Page(records, encode_cursor(records[-1]) if more else "")

    def _check_size(self, page_size: int) -> None:
        if page_size < 1 or page_size > self._max_page:
            raise InvalidRequest(f"page_size must be between 1 and {self._max_page}")

    async def export(self, where: DecisionFilter, *, page_size: int = 500
                     ) -> AsyncIterator[AuditRecord]:
        """Every record (of every kind) matching ``where``, oldest first, page by page.

        When ``where`` selects whole chains (no filter, or only an instance), the
        checkpoints' own copies follow (``source`` "audit_checkpoints"), then the
        records quarantined intact (``source`` "audit_quarantine": refused by
        PostgreSQL or by their projector, verified in their place), so that an
        export can be verified offline exactly as VerifyChain verifies.
        """
        cursor = ""
        conds, params = _conditions(where)
        while True:
            page = await self._page(conds, params, page_size, cursor)
            for record in page.records:
                yield record
            if not page.next_cursor:
                break
            cursor = page.next_cursor
        if where == DecisionFilter(instance_id=where.instance_id):
            for record in await self._stored(where.instance_id):
                yield record
            for record in await self._held(where.instance_id):
                yield record

    async def verify_chain(self, instance_id: str, *, from_seq: int = 1,
                           to_seq: int = 0) -> ChainReport:
        """Check ``instance_id``'s chain from ``from_seq`` to ``to_seq`` (0: to its end).

        Names the first record that was altered (its content does not match its
        hash, or a column does not parse), is missing (the seq after a gap, naming
        the absent seq) or reordered (it does not link to its predecessor), and
        what its signed checkpoints show (see :mod:`acgs.domain.chain_verify`):
        re-chaining, a bad signature, a cut tail, a deleted chain.
        InvalidRequest for a bad range, NotFound for an instance never seen.
        """
        if from_seq < 1 or (to_seq and to_seq < from_seq):
            raise InvalidRequest("need 1 <= from_seq <= to_seq (to_seq 0 = to the end)")
        if not await self._exists(instance_id):
            raise NotFound(f"no audit chain of instance {instance_id!r} "
                           "(neither records nor checkpoints)")
        quarantined = await self._quarantined(instance_id, from_seq, to_seq)
        intact, damaged = _split_quarantine(instance_id, quarantined)
        attested = await self._attested(instance_id) if damaged else frozenset()
        prev = await self._predecessor(instance_id, from_seq)
        verifier = ChainVerifier(instance_id, keys=self._keys, expect_seq=from_seq,
                                 prev_hash=prev or GENESIS_HASH,
                                 quarantined=frozenset(damaged) & attested)
        if prev is None:
            verifier.broken = ChainBreak(from_seq, MISSING, f"seq {from_seq - 1} missing "
                                         f"before seq {from_seq}", from_seq - 1)
        fed: set[int] = set()

        def feed(record: AuditRecord) -> bool:
            """Feed ``record``, after the intact quarantined records that come before it."""
            while intact and intact[0].seq < record.seq:
                if not verifier.feed(intact[0]):
                    return False
                fed.add(intact.pop(0).seq)
            return verifier.feed(record)

        last, stored_upto = from_seq - 1, from_seq - 1
        while verifier.broken is None and (not to_seq or last < to_seq):
            rows = await self._fetch(
                _SELECT + sql.SQL(" WHERE instance_id = %s AND seq > %s AND seq <= %s "
                                  "ORDER BY seq LIMIT %s"),
                [instance_id, last, to_seq or 2**62, self._chunk])
            # The copies of the checkpoints that sign this chunk's records (a copy's
            # own seq is the seq it signed + 1): one window at a time, bounded memory.
            top = int(rows[-1][1]) if rows else last
            verifier.add_stored(await self._stored_between(instance_id, stored_upto, top + 1))
            stored_upto = top + 1
            for record in map(record_of, rows):
                if not feed(record):
                    break
                last = record.seq
            if len(rows) < self._chunk:
                break
        while intact and verifier.broken is None:  # quarantined records past the last row
            if verifier.feed(intact[0]):
                fed.add(intact.pop(0).seq)
        if not to_seq:  # copies past the chain's end (a cut tail): the newest decide
            verifier.add_stored(await self._stored_between(instance_id, stored_upto, 2**62,
                                                           newest=_BEYOND))
        report = verifier.finish(to_end=not to_seq)
        passed = set(verifier.passed_quarantined) | fed
        named = tuple(q for q, _ in quarantined if q.seq in passed or q.seq > report.last_seq)
        unattested = sorted(set(damaged) - attested)
        notes = report.notes + tuple(
            f"seq {seq} is in audit_quarantine as a damaged journal line, but no signed "
            "checkpoint attests it: it counts as missing" for seq in unattested[:20])
        return replace(report, quarantined=named, notes=notes)

    async def _quarantined(self, instance_id: str, from_seq: int, to_seq: int
                           ) -> list[tuple[Quarantined, bytes]]:
        """The quarantined seqs of a chain in a range, with their lines (a handful: each
        one is an incident)."""
        rows = await self._fetch(sql.SQL(
            "SELECT seq, source, reason, line FROM audit_quarantine WHERE instance_id = %s "
            "AND seq >= %s AND seq <= %s ORDER BY seq"), [instance_id, from_seq, to_seq or 2**62])
        return [(Quarantined(r[0], r[1], r[2]), bytes(r[3] or b"")) for r in rows]

    async def _attested(self, instance_id: str) -> frozenset[int]:
        """The seqs validly signed checkpoints of ``instance_id`` attest as damaged lines."""
        rows = await self._fetch(sql.SQL(
            "SELECT request_json FROM audit_checkpoints WHERE instance_id = %s "
            "AND request_json LIKE '%%\"damaged\"%%'"), [instance_id])
        seqs: set[int] = set()
        for (text,) in rows:
            try:
                cp = Checkpoint.from_document(json.loads(text))
            except (KeyError, TypeError, ValueError):
                continue  # a malformed copy: the walk names it
            if cp.instance_id == instance_id and self._keys.problem(cp) is None:
                seqs.update(cp.damaged)
        return frozenset(seqs)

    async def list_chains(self) -> list[ChainInfo]:
        """Every instance with records or checkpoints: first and last seq, counts."""
        rows = await self._fetch(chains_sql(), [])
        return [ChainInfo(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    async def _stored(self, instance_id: str) -> list[AuditRecord]:
        """The checkpoints' own copies, of one instance ("": of every instance)."""
        query = CHECKPOINTS + (sql.SQL(" WHERE instance_id = %s") if instance_id else sql.SQL(""))
        rows = await self._fetch(query + sql.SQL(" ORDER BY instance_id, seq"),
                                 [instance_id] if instance_id else [])
        return [record_of(r, source=SOURCE) for r in rows]

    async def _held(self, instance_id: str) -> list[AuditRecord]:
        """The records quarantined intact, of one instance ("": of every instance)."""
        query: sql.Composable = sql.SQL("SELECT instance_id, seq, line FROM audit_quarantine")
        if instance_id:
            query += sql.SQL(" WHERE instance_id = %s")
        rows = await self._fetch(query + sql.SQL(" ORDER BY instance_id, seq"),
                                 [instance_id] if instance_id else [])
        held: list[AuditRecord] = []
        for instance, seq, line in rows:
            intact, _ = _split_quarantine(instance, [(Quarantined(seq, "", ""),
                                                      bytes(line or b""))])
            held += [StoredRecord.of(r, source=QUARANTINE) for r in intact]
        return held

    async def _stored_between(self, instance_id: str, after: int, upto: int, *,
                              newest: int = 0) -> list[StoredCheckpoint]:
        """Copies of ``instance_id``'s checkpoints with ``after < seq <= upto`` (or the newest)."""
        query = CHECKPOINTS + sql.SQL(" WHERE instance_id = %s AND seq > %s AND seq <= %s")
        if newest:
            rows = await self._fetch(query + sql.SQL(" ORDER BY seq DESC LIMIT %s"),
                                     [instance_id, after, upto, newest])
            rows.reverse()
        else:
            rows = await self._fetch(query + sql.SQL(" ORDER BY seq"), [instance_id, after, upto])
        return [stored_of(record_of(r, source=SOURCE)) for r in rows]

    async def _exists(self, instance_id: str) -> bool:
        """Whether the trail holds a record or a checkpoint of ``instance_id``."""
        return bool(await self._fetch(sql.SQL(
            "SELECT 1 FROM audit_decisions WHERE instance_id = %s UNION ALL "
            "SELECT 1 FROM audit_checkpoints WHERE instance_id = %s LIMIT 1"),
            [instance_id, instance_id]))

    async def _predecessor(self, instance_id: str, from_seq: int) -> str | None:
        """The hash the record at ``from_seq`` must link to; None when that record is absent."""
        if from_seq == 1:
            return GENESIS_HASH
        rows = await self._fetch(
            sql.SQL("SELECT record_hash FROM audit_decisions WHERE instance_id = %s AND seq = %s"),
            [instance_id, from_seq - 1])
        return str(rows[0][0]) if rows else None

    async def _fetch(self, query: sql.Composable, params: list[Any]) -> list[tuple[Any, ...]]:
        with _reachable():
            async with self._pool.connection() as conn:
                cur = await conn.execute(query, params)
                return list(await cur.fetchall())


def _time_conditions(since_us: int | None, until_us: int | None
                     ) -> tuple[list[sql.Composable], list[Any]]:
    """``since`` (inclusive) and ``until`` (exclusive); InvalidRequest for an empty range."""
    if since_us is not None and until_us is not None and until_us <= since_us:
        raise InvalidRequest("the time range is empty: until must be after since")
    conds: list[sql.Composable] = []
    params: list[Any] = []
    for op, value in ((">=", _ts(since_us)), ("<", _ts(until_us))):
        if value:
            conds.append(sql.SQL("decided_at {} %s").format(sql.SQL(op)))
            params.append(value)
    return conds, params


def _conditions(where: DecisionFilter) -> tuple[list[sql.Composable], list[Any]]:
    conds, params = _time_conditions(where.since_us, where.until_us)
    for column, value in (
        ("principal_id", where.principal_id), ("tenant_id", where.tenant_id),
        ("effect", where.effect.value if where.effect else None),
        ("policy_revision", where.policy_revision), ("instance_id", where.instance_id),
    ):
        if value:
            conds.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            params.append(value)
    return conds, params


def _ts(us: int | None) -> dt.datetime | None:
    return None if us is None else EPOCH + dt.timedelta(microseconds=us)


def _split_quarantine(instance_id: str, rows: list[tuple[Quarantined, bytes]]
                      ) -> tuple[list[AuditRecord], list[int]]:
    """Quarantined lines that are intact records (PostgreSQL refused them: the chain
    verifies them like any record) and the seqs of damaged ones (accepted only where a
    signed checkpoint attests them)."""
    intact: list[AuditRecord] = []
    damaged: list[int] = []
    for q, line in rows:
        try:
            record = parse_line(line.rstrip(b"\n"))
        except (DamagedLine, ValueError):
            damaged.append(q.seq)
            continue
        if record.seq == q.seq and record.instance_id == instance_id:
            intact.append(record)
        else:
            damaged.append(q.seq)
    return intact, damaged
