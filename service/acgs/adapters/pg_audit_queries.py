"""Reading the audit trail in PostgreSQL: one decision, pages, exports, chain checks.

Pages are in ``(decided_at, instance_id, seq)`` order, a total order over
every instance's records, and the cursor is the last key seen: paging is
stable while other servers keep inserting, with no gaps or repeats among the
rows present when each page is read. Every method raises
:class:`~acgs.errors.AuditUnavailable` when PostgreSQL cannot be reached.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from acgs.adapters import cursors
from acgs.adapters.pg_audit import COLUMNS, EPOCH
from acgs.domain.audit import GENESIS_HASH, MISSING, AuditRecord, ChainBreak, ChainChecker
from acgs.domain.audit_query import ChainInfo, ChainReport, DecisionFilter, Page
from acgs.domain.model import Effect, Severity, Violation
from acgs.errors import AuditUnavailable, InvalidRequest, NotFound

_SELECT = sql.SQL("SELECT {} FROM audit_decisions").format(
    sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS))
_ORDER = sql.SQL(" ORDER BY decided_at, instance_id, seq LIMIT %s")
_US = dt.timedelta(microseconds=1)


def record_of(row: tuple[Any, ...]) -> AuditRecord:
    """A row of ``audit_decisions`` (selected in COLUMNS order) as a record."""
    doc = dict(zip(COLUMNS, row, strict=True))
    return AuditRecord(
        decision_id=str(doc["decision_id"]), instance_id=doc["instance_id"], seq=doc["seq"],
        decided_at_us=(doc["decided_at"] - EPOCH) // _US, kind=doc["kind"],
        caller_id=doc["caller_id"], caller_role=doc["caller_role"],
        request_id=doc["request_id"], tenant_id=doc["tenant_id"],
        principal_id=doc["principal_id"], request_json=doc["request_json"],
        effect=Effect(doc["effect"]),
        violations=tuple(Violation(v["principle"], Severity(v["severity"]), v["message"])
                         for v in doc["violations"]),
        policy_revision=doc["policy_revision"], constitutional_hash=doc["constitutional_hash"],
        cached=doc["cached"], latency_us=doc["latency_us"], escalation_id=doc["escalation_id"],
        prev_hash=doc["prev_hash"], record_hash=doc["record_hash"],
    )


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
                 verify_chunk: int = 5000) -> None:
        self._pool = pool
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
        return record_of(rows[0])

    async def list_decisions(self, where: DecisionFilter, *, page_size: int = 100,
                             cursor: str = "") -> Page:
        """One page of records matching ``where``, oldest first, after ``cursor``.

        Raises InvalidRequest for a bad cursor, page size or time range.
        """
        if page_size < 1 or page_size > self._max_page:
            raise InvalidRequest(f"page_size must be between 1 and {self._max_page}")
        conds, params = _conditions(where)
        if cursor:
            conds.append(sql.SQL("(decided_at, instance_id, seq) > (%s, %s, %s)"))
            params.extend(decode_cursor(cursor))
        query = _SELECT
        if conds:
            query += sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conds)
        records = [record_of(r) for r in await self._fetch(query + _ORDER, [*params, page_size])]
        more = len(records) == page_size
        return Page(records, encode_cursor(records[-1]) if more else "")

    async def export(self, where: DecisionFilter, *, page_size: int = 500
                     ) -> AsyncIterator[AuditRecord]:
        """Every record matching ``where``, oldest first, read page by page."""
        cursor = ""
        while True:
            page = await self.list_decisions(where, page_size=page_size, cursor=cursor)
            for record in page.records:
                yield record
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def verify_chain(self, instance_id: str, *, from_seq: int = 1,
                           to_seq: int = 0) -> ChainReport:
        """Check ``instance_id``'s chain from ``from_seq`` to ``to_seq`` (0: to its end).

        Names the first record that was altered (its content does not match its
        hash), is missing (the seq after a gap, naming the absent seq) or reordered
        (it does not link to its predecessor). InvalidRequest for a bad range.
        """
        if from_seq < 1 or (to_seq and to_seq < from_seq):
            raise InvalidRequest("need 1 <= from_seq <= to_seq (to_seq 0 = to the end)")
        checker, broken = await self._checker(instance_id, from_seq)
        last = from_seq - 1
        while broken is None and (not to_seq or last < to_seq):
            top = to_seq or 2**62
            rows = await self._fetch(
                _SELECT + sql.SQL(" WHERE instance_id = %s AND seq > %s AND seq <= %s "
                                  "ORDER BY seq LIMIT %s"),
                [instance_id, last, top, self._chunk])
            for record in map(record_of, rows):
                broken = checker.feed(record)
                if broken is not None:
                    break
                last = record.seq
            if len(rows) < self._chunk:
                break
        return ChainReport(instance_id, from_seq, last, checker.checked, broken)

    async def list_chains(self) -> list[ChainInfo]:
        """Every instance's chain in the trail: first and last seq, number of records."""
        rows = await self._fetch(sql.SQL(
            "SELECT instance_id, min(seq), max(seq), count(*) FROM audit_decisions "
            "GROUP BY instance_id ORDER BY instance_id"), [])
        return [ChainInfo(r[0], r[1], r[2], r[3]) for r in rows]

    async def _checker(self, instance_id: str, from_seq: int
                       ) -> tuple[ChainChecker, ChainBreak | None]:
        """A checker expecting ``from_seq``, primed with its predecessor's hash."""
        if from_seq == 1:
            return ChainChecker(expect_seq=1, prev_hash=GENESIS_HASH), None
        rows = await self._fetch(
            sql.SQL("SELECT record_hash FROM audit_decisions WHERE instance_id = %s AND seq = %s"),
            [instance_id, from_seq - 1])
        if not rows:
            gone = ChainBreak(from_seq, MISSING, f"seq {from_seq - 1} missing before seq "
                              f"{from_seq}", from_seq - 1)
            return ChainChecker(expect_seq=from_seq), gone
        return ChainChecker(expect_seq=from_seq, prev_hash=rows[0][0]), None

    async def _fetch(self, query: sql.Composable, params: list[Any]) -> list[tuple[Any, ...]]:
        with _reachable():
            async with self._pool.connection() as conn:
                cur = await conn.execute(query, params)
                return list(await cur.fetchall())


def _conditions(where: DecisionFilter) -> tuple[list[sql.Composable], list[Any]]:
    conds: list[sql.Composable] = []
    params: list[Any] = []
    if where.since_us is not None and where.until_us is not None \
            and where.until_us <= where.since_us:
        raise InvalidRequest("the time range is empty: until must be after since")
    for column, op, value in (
        ("decided_at", ">=", _ts(where.since_us)), ("decided_at", "<", _ts(where.until_us)),
        ("principal_id", "=", where.principal_id), ("tenant_id", "=", where.tenant_id),
        ("effect", "=", where.effect.value if where.effect else None),
        ("policy_revision", "=", where.policy_revision), ("instance_id", "=", where.instance_id),
    ):
        if value:
            conds.append(sql.SQL("{} {} %s").format(sql.Identifier(column), sql.SQL(op)))
            params.append(value)
    return conds, params


def _ts(us: int | None) -> dt.datetime | None:
    return None if us is None else EPOCH + dt.timedelta(microseconds=us)
