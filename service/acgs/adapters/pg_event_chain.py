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
Servers sign it like their own chains (:func:`checkpoint`, every
``ACGS_AUDIT_CHECKPOINT_S``): a checkpoint record, signed with the server's
key (which PostgreSQL never holds), follows the head it signs, so an edit
re-hashed through the chain, or a cut tail, is named like in any chain.
Incidents that no journal would take use the same mechanism, with the
projectors of their kinds run in the same transaction.

Written without I/O: :func:`append` is a plan (:mod:`acgs.adapters.projectors`)
run on a synchronous or asyncio cursor.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from typing import Any

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from acgs.adapters.pg_audit import COLUMNS, row_of
from acgs.adapters.projectors import (
    Projector,
    Rows,
    Statement,
    drive_async,
    drive_sync,
    selected,
)
from acgs.adapters.projectors.checkpoints import CheckpointProjector
from acgs.domain import canonical, events
from acgs.domain.audit import GENESIS_HASH, AuditRecord
from acgs.domain.model import Effect, new_decision_id
from acgs.service_layer.checkpointer import SYSTEM_ROLE, Signer
from acgs.service_layer.ports import EventEntry

ADMIN_CHAIN = "admin"
"""The chain of admin events (``instance_id`` of its records)."""

LOCK_CLASS = 0x4AC6_E5C2  # pg_advisory_xact_lock(class, hashtext(chain)): one writer per chain

_HEAD = ("SELECT seq, record_hash, kind FROM audit_decisions WHERE instance_id = %s "
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
        record = record.sealed(seq=seq, prev_hash=prev)
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


def checkpoint(signer: Signer, *, signer_id: str, constitutional_hash: str,
               at_us: int, chain: str = ADMIN_CHAIN
               ) -> Generator[Statement, Rows, AuditRecord | None]:
    """Sign ``chain``'s head and append the checkpoint right after it (copied to
    ``audit_checkpoints`` in the same transaction); None when the head is a checkpoint
    already (nothing new to sign) or the chain is empty. ``signer_id``: the server."""
    yield Statement("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_CLASS, chain))
    head = yield Statement(_HEAD, (chain,))
    if not head or head[0][2] == events.CHECKPOINT:
        return None
    signed_seq, head_hash = int(head[0][0]), str(head[0][1])
    cp = signer.sign(instance_id=chain, signed_seq=signed_seq, head_hash=head_hash,
                     signed_at_us=at_us)
    record = AuditRecord(
        decision_id=new_decision_id(), instance_id=chain, seq=signed_seq + 1,
        decided_at_us=at_us, kind=events.CHECKPOINT, caller_id=signer_id,
        caller_role=SYSTEM_ROLE, request_id=f"checkpoint-{signed_seq}", tenant_id="",
        principal_id="", request_json=canonical.dumps(cp.document()), effect=Effect.DENY,
        violations=(), policy_revision="", constitutional_hash=constitutional_hash,
        cached=False, latency_us=0, escalation_id="", prev_hash=head_hash,
        schema=events.SCHEMA).sealed(seq=signed_seq + 1, prev_hash=head_hash)
    yield Statement(_INSERT, [row_of(record)], many=True)
    yield from CheckpointProjector().project([record])
    return record


class AdminChainCheckpoints:
    """Signs the admin chain's head with this server's key, over ``pool``: one
    :meth:`checkpoint_once` per ``ACGS_AUDIT_CHECKPOINT_S`` (a supervised task)."""

    def __init__(self, *, pool: AsyncConnectionPool[Any], signer: Signer, instance_id: str,
                 constitutional_hash: str) -> None:
        self._pool = pool
        self._signer = signer
        self._instance_id = instance_id
        self._hash = constitutional_hash

    async def round(self) -> None:
        """One tick of the supervised task."""
        await self.checkpoint_once()

    async def checkpoint_once(self) -> int | None:
        """The seq of the checkpoint written, or None (nothing new to sign)."""
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            record = await drive_async(cur, checkpoint(
                self._signer, signer_id=self._instance_id, constitutional_hash=self._hash,
                at_us=time.time_ns() // 1000))
        return None if record is None else record.seq
