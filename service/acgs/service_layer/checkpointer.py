"""Signed checkpoints of this server's audit chain, written off the request path.

A supervised background task signs the chain's head every ``interval_s``
(only when the chain advanced since the last checkpoint) and once more at
shutdown, and
journals the checkpoint as the next record of the chain (kind ``checkpoint``;
see :mod:`acgs.domain.checkpoint`); the shipper carries it to PostgreSQL like
any record. Decisions never wait for it: it costs one small journal append
every ``interval_s``. The task is supervised: an error is logged and counted
and the next tick tries again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from acgs.domain import canonical
from acgs.domain.checkpoint import KIND, Checkpoint
from acgs.domain.model import Caller, Decision, Effect, new_decision_id
from acgs.service_layer.ports import AuditEntry

logger = logging.getLogger("acgs.audit.checkpoints")

SYSTEM_ROLE = "system"


class HeadJournal(Protocol):
    """The journal as the checkpointer needs it (:class:`acgs.adapters.journal.Journal`)."""

    @property
    def last_seq(self) -> int: ...

    async def append_at_head(self, make: Callable[[int, str], AuditEntry]) -> int: ...


class Signer(Protocol):
    """Signs checkpoints (:class:`acgs.adapters.audit_signing.CheckpointSigner`)."""

    def sign(self, *, instance_id: str, signed_seq: int, head_hash: str,
             signed_at_us: int, damaged: Sequence[int] = ()) -> Checkpoint: ...


class Checkpointer:
    """Writes signed checkpoints of ``journal``'s chain: :meth:`attempt` every ``interval_s``.

    ``on_result(ok)`` is called after every attempt (for metrics).
    """

    def __init__(self, *, journal: HeadJournal, signer: Signer, instance_id: str,
                 constitutional_hash: str, interval_s: float = 10.0,
                 on_result: Callable[[bool], None] | None = None) -> None:
        self._journal = journal
        self._signer = signer
        self._instance_id = instance_id
        self._hash = constitutional_hash
        self.interval_s = interval_s
        """Seconds between rounds; 0: only the final checkpoint at stop."""
        self._on_result = on_result
        self._last = -1  # seq of the last checkpoint record written by this process
        self.failures = 0

    async def checkpoint(self) -> int | None:
        """Journal a checkpoint of the head now, if it advanced; the checkpoint's seq.

        Raises AuditUnavailable when the journal cannot take it.
        """
        if self._journal.last_seq in (0, self._last):
            return None
        self._last = await self._journal.append_at_head(self._entry)
        return self._last

    async def attest(self, damaged: Sequence[int]) -> int:
        """Journal a checkpoint that attests ``damaged`` (seqs of this chain quarantined as
        damaged lines), durably, before they are quarantined; its seq."""
        self._last = await self._journal.append_at_head(
            lambda seq, head: self._entry(seq, head, damaged=damaged))
        return self._last

    async def attempt(self) -> None:
        """One round: checkpoint the head if it advanced; a failure is logged, counted and
        reported to ``on_result`` (the next round tries again). Run every ``interval_s``
        under the supervisor, and once more at stop (the final checkpoint); a round under
        way is let finish, not cancelled: a cancelled append would still be journaled,
        unknown to ``checkpoint``."""
        try:
            written = await self.checkpoint()
        except Exception:  # supervised: log, count, and try again at the next tick
            self.failures += 1
            logger.exception("could not write an audit checkpoint; retrying in %.1f s",
                             self.interval_s)
            if self._on_result is not None:
                self._on_result(False)
            return
        if written is not None and self._on_result is not None:
            self._on_result(True)

    def _entry(self, last_seq: int, last_hash: str,
               damaged: Sequence[int] = ()) -> AuditEntry:
        """The checkpoint of head (``last_seq``, ``last_hash``) as a journal entry."""
        return checkpoint_entry(self._signer, chain=self._instance_id,
                                signer_id=self._instance_id, constitutional_hash=self._hash,
                                last_seq=last_seq, last_hash=last_hash, damaged=damaged)


def checkpoint_entry(signer: Signer, *, chain: str, signer_id: str, constitutional_hash: str,
                     last_seq: int, last_hash: str, damaged: Sequence[int] = ()) -> AuditEntry:
    """The entry of a checkpoint of ``chain``'s head (``last_seq``, ``last_hash``), signed
    now by ``signer``, done by the server ``signer_id`` (its system caller)."""
    now_ns = time.time_ns()
    cp = signer.sign(instance_id=chain, signed_seq=last_seq, head_hash=last_hash,
                     signed_at_us=now_ns // 1000, damaged=damaged)
    doc = cp.document()
    decision = Decision(
        decision_id=new_decision_id(), request_id=f"checkpoint-{last_seq}",
        effect=Effect.DENY, violations=(), policy_revision="",
        constitutional_hash=constitutional_hash, cached=False, latency_us=0,
        decided_at_ns=now_ns)
    return AuditEntry(KIND, decision, Caller(id=signer_id, role=SYSTEM_ROLE),
                      canonical.dumps(doc), doc)
