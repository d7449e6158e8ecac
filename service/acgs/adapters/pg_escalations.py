"""Escalations in PostgreSQL (migrations 0003, 0008, 0012): the EscalationStore port.

Rows are read as ``to_jsonb(row)`` and turned into domain objects by
:func:`acgs.domain.escalation.from_row`, together with the database's
``now()``: every expiry decision uses the database clock.

Nothing here writes escalations, their events or their aliases directly: the
escalation projector (:mod:`acgs.adapters.projectors.escalations`) is their one
writer. A change a server must answer with is journaled first, then applied
by :meth:`PgTransaction.apply`, which runs that projector in the server's own
transaction (the shipper's later run of it is a no-op: same event id). An
incident no journal would take is recorded by :meth:`PgEscalationStore.open_incident`
in PostgreSQL's admin chain (:mod:`acgs.adapters.pg_event_chain`), projected in
the same transaction. Write transactions first take the advisory lock that
orders event seqs (see migration 0012), so that seqs become visible in order
and writers never deadlock on one another. Every method raises
:class:`~acgs.errors.Unavailable` when PostgreSQL cannot be reached.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from acgs.adapters import cursors, pg_event_chain
from acgs.adapters.projectors import ProjectionError, drive_async
from acgs.adapters.projectors.escalations import LOCK_KEY, EscalationProjector
from acgs.domain import escalation as esc
from acgs.domain import events
from acgs.domain.escalation import Escalation, EscalationEvent, EscalationFilter, EscalationPage
from acgs.errors import InvalidRequest, NotFound, Unavailable
from acgs.service_layer.ports import EventEntry

_EFFECTIVE = ("(CASE WHEN state IN ('open', 'acknowledged') AND expires_at <= now() "
              "THEN 'expired' ELSE state END)")
_SELECT = "SELECT to_jsonb(e), now() FROM escalations e"


@contextmanager
def _reachable() -> Iterator[None]:
    try:
        yield
    except (psycopg.OperationalError, PoolTimeout) as err:
        raise Unavailable(f"escalation database unreachable: {err}") from err


def _key(escalation_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(escalation_id)
    except ValueError as err:
        raise InvalidRequest(f"escalation_id {escalation_id!r} is not a UUID") from err


def _event(row: tuple[Any, ...]) -> EscalationEvent:
    seq, kind, actor, at, snapshot = row
    escalation = replace(esc.from_row(snapshot), last_event_seq=seq)
    return EscalationEvent(seq=seq, kind=kind, actor_id=actor, at=at, escalation=escalation)


class PgTransaction:
    """One write transaction (see :meth:`PgEscalationStore.transaction`)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any],
                 projector: EscalationProjector) -> None:
        self._conn = conn
        self._projector = projector

    async def lock(self, escalation_id: str) -> tuple[Escalation, dt.datetime]:
        """The escalation (an alias reads as its target), locked until the end of the
        transaction, and the database's now. Raises InvalidRequest or NotFound."""
        cur = await self._conn.execute(_SELECT + " WHERE id = acgs_escalation_target(%s) "
                                       "FOR UPDATE", (_key(escalation_id),))
        row = await cur.fetchone()
        if row is None:
            raise NotFound(f"no escalation {escalation_id}")
        return esc.from_row(row[0]), row[1]

    async def due(self, *, limit: int) -> tuple[list[Escalation], dt.datetime]:
        """Up to ``limit`` pending escalations past their expiry, locked (others skip them)."""
        cur = await self._conn.execute(
            _SELECT + " WHERE state IN ('open', 'acknowledged') AND expires_at <= now() "
            "ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED", (limit,))
        rows = await cur.fetchall()
        now = rows[0][1] if rows else dt.datetime.now(dt.UTC)
        return [esc.from_row(r[0]) for r in rows], now

    async def request_json(self, decision_id: str) -> str | None:
        """The audited request of decision ``decision_id`` (shipped with its escalation).

        On this transaction's connection: a second one from the pool, taken while the
        escalation lock is held, may never come (the transactions queued behind the lock
        can hold every connection)."""
        cur = await self._conn.execute(
            "SELECT request_json FROM audit_decisions WHERE decision_id = %s "
            "AND kind IN ('decide', 'decision') LIMIT 1", (uuid.UUID(decision_id),))
        row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def apply(self, entry: EventEntry) -> Escalation | None:
        """Apply the journaled change ``entry`` with the escalation projector; the escalation
        after it (with its event seq), or None when the escalation moved on since the change
        was computed (the change is not applied; the shipper will quarantine its record)."""
        if not isinstance(entry.event, events.EscalationChanged):
            raise TypeError(f"not an escalation change: {entry.event.KIND}")
        record = events.envelope(entry.event, event_id=entry.event_id, instance_id="",
                                 at_us=entry.at_ns // 1000, caller_id=entry.caller.id,
                                 caller_role=entry.caller.role,
                                 constitutional_hash=entry.constitutional_hash)
        async with self._conn.cursor() as cur:
            try:
                await drive_async(cur, self._projector.project([record]))
            except ProjectionError:
                return None
            await cur.execute(_SELECT + " WHERE id = acgs_escalation_target(%s)",
                              (_key(entry.event.escalation_id),))
            row = await cur.fetchone()
        assert row is not None  # the projector found it, under a row lock
        return esc.from_row(row[0])


class PgEscalationStore:
    """The escalations of one database, over an open ``AsyncConnectionPool`` (autocommit)."""

    def __init__(self, *, pool: AsyncConnectionPool[Any], max_page: int = 1000) -> None:
        self._pool = pool
        self._max_page = max_page
        # Changes and incidents only: grouping applies to openings, which the shipper applies.
        self._projector = EscalationProjector()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PgTransaction]:
        """A transaction holding the escalation lock; committed when the block ends normally."""
        with _reachable():
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
                yield PgTransaction(conn, self._projector)

    async def get(self, escalation_id: str) -> tuple[Escalation, dt.datetime]:
        """One escalation and the database's now; InvalidRequest or NotFound. An id that
        PostgreSQL merged into another escalation (grouping, retries) reads as that one."""
        rows = await self._fetch(_SELECT + " WHERE id = acgs_escalation_target(%s)",
                                 (_key(escalation_id),))
        if not rows:
            raise NotFound(f"no escalation {escalation_id}")
        return esc.from_row(rows[0][0]), rows[0][1]

    async def list_page(self, where: EscalationFilter, *, page_size: int,
                   cursor: str = "") -> tuple[EscalationPage, dt.datetime]:
        """A page in (created_at, id) order after ``cursor``; InvalidRequest for bad input."""
        if not 1 <= page_size <= self._max_page:
            raise InvalidRequest(f"page_size must be between 1 and {self._max_page}")
        conds, params = _conditions(where)
        if cursor:
            conds.append(sql.SQL("(created_at, id) > (%s, %s)"))
            params.extend(_decode(cursor))
        query: sql.Composable = sql.SQL(_SELECT)
        if conds:
            query += sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conds)
        query += sql.SQL(" ORDER BY created_at, id LIMIT %s")
        rows = await self._fetch(query, (*params, page_size))
        found = [esc.from_row(r[0]) for r in rows]
        now = rows[0][1] if rows else dt.datetime.now(dt.UTC)
        more = len(found) == page_size
        return EscalationPage(found, _encode(found[-1]) if more else ""), now

    async def events_after(self, seq: int, *, limit: int) -> list[EscalationEvent]:
        """Events with a seq above ``seq``, in seq order."""
        rows = await self._fetch("SELECT seq, kind, actor_id, at, snapshot FROM escalation_events "
                                 "WHERE seq > %s ORDER BY seq LIMIT %s", (seq, limit))
        return [_event(r) for r in rows]

    async def last_seq(self) -> int:
        rows = await self._fetch("SELECT coalesce(max(seq), 0) FROM escalation_events", ())
        return int(rows[0][0])

    async def any_due(self) -> bool:
        rows = await self._fetch("SELECT EXISTS (SELECT 1 FROM escalations WHERE state IN "
                                 "('open', 'acknowledged') AND expires_at <= now())", ())
        return bool(rows[0][0])

    async def open_counts(self) -> dict[tuple[str, str], int]:
        """Pending, unexpired escalations by (reason, severity)."""
        rows = await self._fetch("SELECT reason, severity, count(*) FROM escalations WHERE state "
                                 "IN ('open', 'acknowledged') AND expires_at > now() "
                                 "GROUP BY reason, severity", ())
        return {(str(r[0]), str(r[1])): int(r[2]) for r in rows}

    async def closed_after(self, seq: int, *, limit: int = 1000) -> tuple[set[str], int]:
        """Ids of the escalations approved, denied or expired by events after ``seq`` (with
        every id merged into them), and the last seq read (``seq`` when there is none)."""
        rows = await self._fetch(
            "WITH ev AS (SELECT seq, escalation_id, kind FROM escalation_events WHERE seq > %s "
            "ORDER BY seq LIMIT %s) "
            "SELECT (SELECT max(seq) FROM ev), ev.escalation_id::text, a.alias::text FROM ev "
            "LEFT JOIN escalation_aliases a ON a.escalation_id = ev.escalation_id "
            "WHERE ev.kind IN ('approved', 'denied', 'expired') "
            "UNION ALL SELECT max(seq), NULL, NULL FROM ev", (seq, limit))
        last = max((int(r[0]) for r in rows if r[0] is not None), default=seq)
        ids = {str(v) for r in rows for v in r[1:] if v is not None}
        return ids, last

    async def open_incident(self, entry: EventEntry) -> None:
        """Record the ``incident.opened`` event ``entry`` (one no journal took) in the admin
        chain and open its escalation, in one transaction; a no-op if it is open already,
        and if the chain holds this event (its id) already: a retry after a lost answer."""
        with _reachable():
            async with self._pool.connection() as conn, conn.transaction(), \
                    conn.cursor() as cur:
                await pg_event_chain.append_async(cur, [entry], projectors=(self._projector,),
                                                  once=True)

    async def _fetch(self, query: Any, params: Any) -> list[tuple[Any, ...]]:
        with _reachable():
            async with self._pool.connection() as conn:
                cur = await conn.execute(query, params)
                rows: list[tuple[Any, ...]] = await cur.fetchall()
                return rows


def _conditions(where: EscalationFilter) -> tuple[list[sql.Composable], list[Any]]:
    conds: list[sql.Composable] = []
    params: list[Any] = []
    if where.state is not None:
        conds.append(sql.SQL(_EFFECTIVE + " = %s"))
        params.append(where.state.value)
    for column, value in (("reason", where.reason), ("tenant_id", where.tenant_id)):
        if value:
            conds.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            params.append(value)
    if where.since is not None:
        conds.append(sql.SQL("created_at >= %s"))
        params.append(where.since)
    if where.until is not None:
        conds.append(sql.SQL("created_at < %s"))
        params.append(where.until)
    if where.since and where.until and where.since >= where.until:
        raise InvalidRequest("since must be before until")
    return conds, params


def _encode(e: Escalation) -> str:
    return cursors.encode([e.created_at.isoformat(), e.id])


def _decode(cursor: str) -> tuple[dt.datetime, uuid.UUID]:
    created, key = cursors.decode(cursor, (str, str))
    return cursors.moment(created), cursors.key(key)
