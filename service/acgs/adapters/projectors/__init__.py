"""Projectors: the only writers of the tables the audit trail's events maintain.

One projector per event kind (or per table fed by several kinds), each a plain
Python object that turns the records of one shipped batch into SQL statements.
The audit shipper runs every projector inside the transaction that inserts the
batch into ``audit_decisions`` (:class:`acgs.adapters.pg_audit.Shipper`), with
only the records that transaction inserted, so a projection happens exactly
once, atomically with the records it comes from. A service that must answer
with the new state (an escalation approved) runs the same projector in its own
transaction right after journaling the event; the shipper's later run of it is
then a no-op (projectors are keyed by the event's id).

Projectors are written without I/O: :meth:`Projector.project` is a generator
that yields :class:`Statement` s and receives each one's rows, so the same
projector runs on the shipper's synchronous connection (:func:`run_sync`) and
on a service's asyncio connection (:func:`run_async`).

A projector that cannot apply an event raises :class:`ProjectionError` (or
PostgreSQL refuses a statement for its content): the shipper then moves that
event's record to ``audit_quarantine`` with the reason, in the transaction
that ships the others (:mod:`acgs.adapters.pg_quarantine`). Nothing is skipped
with a log line. No SQL here or in the migrations parses an event's JSON.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import psycopg
from psycopg.rows import TupleRow

from acgs.domain import events
from acgs.domain.audit import AuditRecord

Rows = list[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class Statement:
    """One SQL statement; ``many``: ``params`` is a sequence of parameter sets."""

    sql: str
    params: Any = None
    many: bool = False


Plan = Generator[Statement, Rows, None]
"""Yields statements; is sent each one's rows ([] when it returns none)."""
R = TypeVar("R")


class ProjectionError(Exception):
    """An event its projector cannot apply (its payload does not decode, a change that an
    earlier one superseded...): its record is quarantined, with this message as the reason."""

    def __init__(self, record: AuditRecord, why: str) -> None:
        super().__init__(f"{record.kind} event {record.decision_id} "
                         f"({record.instance_id}#{record.seq}): {why}")
        self.record = record


class Projector(Protocol):
    """Applies the events of ``kinds`` (see :func:`acgs.domain.events.kind_of`)."""

    @property
    def kinds(self) -> frozenset[str]: ...

    def project(self, records: Sequence[AuditRecord]) -> Plan: ...


def selected(projector: Projector, records: Sequence[AuditRecord]) -> list[AuditRecord]:
    """The records, in order, whose event kind ``projector`` applies."""
    kinds = projector.kinds
    return [r for r in records if events.kind_of(r.kind, r.schema, r.request_json) in kinds]


def typed(record: AuditRecord) -> events.Event | None:
    """The record's payload (legacy records included); ProjectionError when it does not
    decode. None for a decision or evaluation without one, and for a legacy escalation
    change (applied by the server that made it, before typed events)."""
    try:
        if record.schema >= 1:
            return events.decode(record.kind, record.data)
        return events.legacy_payload(record.kind, record.request_json)
    except events.EventError as err:
        raise ProjectionError(record, f"its payload does not decode: {err}") from err


def run_sync(cur: psycopg.Cursor[TupleRow], projectors: Sequence[Projector],
             records: Sequence[AuditRecord]) -> None:
    """Run every projector over ``records`` on a synchronous cursor, in order."""
    for projector in projectors:
        chosen = selected(projector, records)
        if chosen:
            drive_sync(cur, projector.project(chosen))


def drive_sync(cur: psycopg.Cursor[TupleRow], plan: Generator[Statement, Rows, R]) -> R:
    """Execute ``plan``'s statements on ``cur``, sending each its rows; what it returns."""
    try:
        statement = next(plan)
        while True:
            if statement.many:
                cur.executemany(statement.sql.encode("utf-8"), statement.params)
                rows: Rows = []
            else:
                cur.execute(statement.sql.encode("utf-8"), statement.params)
                rows = cur.fetchall() if cur.description is not None else []
            statement = plan.send(rows)
    except StopIteration as done:
        result: R = done.value
        return result


async def run_async(cur: psycopg.AsyncCursor[TupleRow], projectors: Sequence[Projector],
                    records: Sequence[AuditRecord]) -> None:
    """Run every projector over ``records`` on an asyncio cursor, in order."""
    for projector in projectors:
        chosen = selected(projector, records)
        if chosen:
            await drive_async(cur, projector.project(chosen))


async def drive_async(cur: psycopg.AsyncCursor[TupleRow],
                      plan: Generator[Statement, Rows, R]) -> R:
    """Execute ``plan``'s statements on ``cur``, sending each its rows; what it returns."""
    try:
        statement = next(plan)
        while True:
            if statement.many:
                await cur.executemany(statement.sql.encode("utf-8"), statement.params)
                rows: Rows = []
            else:
                await cur.execute(statement.sql.encode("utf-8"), statement.params)
                rows = await cur.fetchall() if cur.description is not None else []
            statement = plan.send(rows)
    except StopIteration as done:
        result: R = done.value
        return result
