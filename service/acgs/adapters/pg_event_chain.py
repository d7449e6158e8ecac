"""Chains kept in PostgreSQL: events recorded in the same transaction as the change.

Admin actions (a policy version stored, activated or rolled back; a token
created or revoked) change tables that live only in PostgreSQL, and some are
made by commands that talk to PostgreSQL alone (``acgs token create`` must work
before any server or token exists). Their events are appended here, to a hash
chain held in ``audit_decisions`` itself (instance id :data:`ADMIN_CHAIN`), in
the transaction that makes the change: the event and the change commit
together or not at all, and no record can name a change that did not happen.

The chain is built exactly like a server's journal chain (same record, same
hash, seq from 1 without gaps), so VerifyChain, ListEvents and exports cover
it unchanged. Appends are serialised by an advisory lock held to the commit.
Incidents that no journal would take use the same mechanism, with the
projectors of their kinds run in the same transaction.

Written without I/O: :func:`append` is a plan (:mod:`acgs.adapters.projectors`)
run on a synchronous or asyncio cursor.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import replace

import psycopg
from psycopg.rows import TupleRow

from acgs.adapters.pg_audit import COLUMNS, row_of
from acgs.adapters.projectors import (
    Projector,
    Rows,
    Statement,
    drive_async,
    drive_sync,
    selected,
)
from acgs.domain import events
from acgs.domain.audit import GENESIS_HASH, AuditRecord
from acgs.service_layer.ports import EventEntry

ADMIN_CHAIN = "admin"
"""The chain of admin events (``instance_id`` of its records)."""

LOCK_CLASS = 0x4AC6_E5C2  # pg_advisory_xact_lock(class, hashtext(chain)): one writer per chain

_HEAD = ("SELECT seq, record_hash FROM audit_decisions WHERE instance_id = %s "
         "ORDER BY seq DESC LIMIT 1")
_INSERT = (f"INSERT INTO audit_decisions ({', '.join(COLUMNS)}) "
           f"VALUES ({', '.join(['%s'] * len(COLUMNS))})")


def append(entries: Sequence[EventEntry], *, chain: str = ADMIN_CHAIN,
           projectors: Sequence[Projector] = ()) -> Generator[Statement, Rows, list[AuditRecord]]:
    """Append ``entries`` to ``chain`` (then project them): returns their sealed records.

    Run it inside the transaction that makes the change the entries record."""
    yield Statement("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_CLASS, chain))
    head = yield Statement(_HEAD, (chain,))
    seq, prev = (int(head[0][0]), str(head[0][1])) if head else (0, GENESIS_HASH)
    records = []
    for entry in entries:
        seq += 1
        record = events.envelope(
            entry.event, event_id=entry.event_id, instance_id=chain,
            at_us=entry.at_ns // 1000, caller_id=entry.caller.id, caller_role=entry.caller.role,
            constitutional_hash=entry.constitutional_hash)
        record = replace(record, seq=seq).sealed(seq=seq, prev_hash=prev)
        prev = record.record_hash
        records.append(record)
    yield Statement(_INSERT, [row_of(r) for r in records], many=True)
    for projector in projectors:
        chosen = selected(projector, records)
        if chosen:
            yield from projector.project(chosen)
    return records


async def append_async(cur: psycopg.AsyncCursor[TupleRow], entries: Sequence[EventEntry], *,
                       chain: str = ADMIN_CHAIN,
                       projectors: Sequence[Projector] = ()) -> list[AuditRecord]:
    """:func:`append` on an asyncio cursor (inside the caller's transaction)."""
    return await drive_async(cur, append(entries, chain=chain, projectors=projectors))


def append_sync(cur: psycopg.Cursor[TupleRow], entries: Sequence[EventEntry], *,
                chain: str = ADMIN_CHAIN,
                projectors: Sequence[Projector] = ()) -> list[AuditRecord]:
    """:func:`append` on a synchronous cursor (inside the caller's transaction)."""
    return drive_sync(cur, append(entries, chain=chain, projectors=projectors))
