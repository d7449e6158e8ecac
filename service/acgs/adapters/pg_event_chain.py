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
projectors of their kinds run in the same transaction. A dead server's chain, once
the server that adopted its journal shipped it, is sealed here too (:func:`seal`).

Written without I/O: :func:`append` is a plan (:mod:`acgs.adapters.projectors`)
run on a synchronous or asyncio cursor.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Sequence
from typing import Any

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from acgs.adapters.journal import record_of
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
from acgs.domain import events
from acgs.domain.audit import GENESIS_HASH, AuditRecord
from acgs.service_layer.checkpointer import Signer, checkpoint_entry
from acgs.service_layer.ports import EventEntry

ADMIN_CHAIN = events.ADMIN_CHAIN
logger = logging.getLogger("acgs.audit")

LOCK_CLASS = 0x4AC6_E5C2  # pg_advisory_xact_lock(class, hashtext(chain)): one writer per chain

_HEAD = ("SELECT seq, record_hash, kind FROM audit_decisions WHERE instance_id = %s "
         "ORDER BY seq DESC LIMIT 1")
_HELD = ("SELECT decision_id FROM audit_decisions WHERE instance_id = %s "
         "AND decision_id = ANY(%s::uuid[])")
_INSERT = (f"INSERT INTO audit_decisions ({', '.join(COLUMNS)}) "
           f"VALUES ({', '.join(['%s'] * len(COLUMNS))})")


def append(entries: Sequence[EventEntry], *, chain: str = ADMIN_CHAIN,
           projectors: Sequence[Projector] = (),
           once: bool = False) -> Generator[Statement, Rows, list[AuditRecord]]:
    """Append ``entries`` to ``chain`` (then project them): returns their sealed records.

    Run it inside the transaction that makes the change the entries record. ``once``:
    leave out entries whose event id the chain holds already (a retry of an append whose
    commit may have happened), checked under the chain's lock."""
    seq, prev, _ = yield from _locked_head(chain)
    if once and entries:
        held = yield Statement(_HELD, (chain, [e.event_id for e in entries]))
        recorded = {str(row[0]) for row in held}
        entries = [e for e in entries if e.event_id not in recorded]
        if not entries:
            return []
    records = []
    for entry in entries:
        seq += 1
        record = record_of(entry, instance_id=chain, seq=seq, prev_hash=prev).sealed(
            seq=seq, prev_hash=prev)
        prev = record.record_hash
        records.append(record)
    yield Statement(_INSERT, [row_of(r) for r in records], many=True)
    for projector in projectors:
        chosen = selected(projector, records)
        if chosen:
            yield from projector.project(chosen)
    return records


async def append_async(cur: psycopg.AsyncCursor[TupleRow], entries: Sequence[EventEntry], *,
                       chain: str = ADMIN_CHAIN, projectors: Sequence[Projector] = (),
                       once: bool = False) -> list[AuditRecord]:
    """:func:`append` on an asyncio cursor (inside the caller's transaction)."""
    return await drive_async(cur, append(entries, chain=chain, projectors=projectors,
                                         once=once))


def append_sync(cur: psycopg.Cursor[TupleRow], entries: Sequence[EventEntry], *,
                chain: str = ADMIN_CHAIN,
                projectors: Sequence[Projector] = ()) -> list[AuditRecord]:
    """:func:`append` on a synchronous cursor (inside the caller's transaction)."""
    return drive_sync(cur, append(entries, chain=chain, projectors=projectors))


def _locked_head(chain: str) -> Generator[Statement, Rows, tuple[int, str, str]]:
    """Take ``chain``'s append lock (held to the commit); its head's seq, hash and kind
    (0, GENESIS_HASH, "" for an empty chain)."""
    yield Statement("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_CLASS, chain))
    head = yield Statement(_HEAD, (chain,))
    if not head:
        return 0, GENESIS_HASH, ""
    return int(head[0][0]), str(head[0][1]), str(head[0][2])


def checkpoint(signer: Signer, *, signer_id: str, constitutional_hash: str,
               chain: str = ADMIN_CHAIN) -> Generator[Statement, Rows, AuditRecord | None]:
    """Sign ``chain``'s head and append the checkpoint right after it (copied to
    ``audit_checkpoints`` in the same transaction); None when the head is a checkpoint
    already (nothing new to sign) or the chain is empty. ``signer_id``: the server. The
    record is the one a server journals for its own chain (``checkpoint_entry``)."""
    signed_seq, head_hash, kind = yield from _locked_head(chain)
    if not signed_seq or kind == events.CHECKPOINT:
        return None
    entry = checkpoint_entry(signer, chain=chain, signer_id=signer_id,
                             constitutional_hash=constitutional_hash, last_seq=signed_seq,
                             last_hash=head_hash)
    record = record_of(entry, instance_id=chain, seq=signed_seq + 1,
                       prev_hash=head_hash).sealed(seq=signed_seq + 1, prev_hash=head_hash)
    yield Statement(_INSERT, [row_of(record)], many=True)
    yield from CheckpointProjector().project([record])
    return record


SEALED = "sealed"
"""seal: the chain's head in PostgreSQL is a checkpoint of the journal's last record."""
QUARANTINED_TAIL = "quarantined tail"
"""seal: the journal's last records are in audit_quarantine; nothing could be signed."""
MISMATCH = "mismatch"
"""seal: PostgreSQL's head is not the journal's last record: nothing signed; keep the journal."""

_PREV = "SELECT prev_hash FROM audit_decisions WHERE instance_id = %s AND seq = %s"
_QUARANTINED = ("SELECT count(*) FROM audit_quarantine WHERE instance_id = %s "
                "AND seq > %s AND seq <= %s")


def seal(signer: Signer, *, chain: str, last_seq: int, last_hash: str, signer_id: str,
         constitutional_hash: str) -> Generator[Statement, Rows, str]:
    """Sign the head of ``chain``, a dead server's chain whose journal ``signer_id`` adopted
    and shipped up to (``last_seq``, ``last_hash``), before that journal is removed: no
    later checkpoint of its own will come, and without this one its records after its last
    checkpoint could be cut unseen.

    Signs only what the journal holds: PostgreSQL's head must be the journal's last record
    (same seq, same hash). Returns :data:`SEALED` (signed now, or signed already: the head
    is a checkpoint of that record), :data:`QUARANTINED_TAIL`, or :data:`MISMATCH`
    (PostgreSQL lost or holds other records than the journal: logged; the caller keeps the
    journal, the true copy)."""
    head_seq, head_hash, kind = yield from _locked_head(chain)
    if head_seq == last_seq and head_hash == last_hash:
        if kind != events.CHECKPOINT:
            yield from checkpoint(signer, signer_id=signer_id,
                                  constitutional_hash=constitutional_hash, chain=chain)
        return SEALED
    if head_seq == last_seq + 1 and kind == events.CHECKPOINT:
        prev = yield Statement(_PREV, (chain, head_seq))
        if prev and str(prev[0][0]) == last_hash:
            return SEALED  # sealed before a crash that kept the journal
    if head_seq < last_seq:
        held = yield Statement(_QUARANTINED, (chain, head_seq, last_seq))
        if held and int(held[0][0]) == last_seq - head_seq:
            logger.warning("chain %s: seq %d-%d are quarantined; not sealed", chain,
                           head_seq + 1, last_seq)
            return QUARANTINED_TAIL
    logger.error("chain %s: PostgreSQL's head is seq %d (hash %s), its journal's last record "
                 "seq %d (hash %s): PostgreSQL lost or altered records its dead server's "
                 "journal holds; not sealed, the journal is kept", chain, head_seq,
                 head_hash[:16], last_seq, last_hash[:16])
    return MISMATCH


def sealer(signer: Signer, *, signer_id: str, constitutional_hash: str
           ) -> Callable[[psycopg.Cursor[TupleRow], str, int, str], bool]:
    """:func:`seal` as the shipper calls it: ``(cursor, chain, last_seq, last_hash)``, in
    its transaction; True when the journal may be removed (anything but :data:`MISMATCH`)."""
    def run(cur: psycopg.Cursor[TupleRow], chain: str, last_seq: int, last_hash: str) -> bool:
        return drive_sync(cur, seal(signer, chain=chain, last_seq=last_seq,
                                    last_hash=last_hash, signer_id=signer_id,
                                    constitutional_hash=constitutional_hash)) != MISMATCH

    return run


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
                self._signer, signer_id=self._instance_id, constitutional_hash=self._hash))
        return None if record is None else record.seq
