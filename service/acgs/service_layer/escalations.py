"""The escalation use cases: list, get, watch, acknowledge, resolve, and expiry.

Every change is an ``escalation.changed`` event (acgs.domain.events), made
in one store transaction: the escalation is locked, the change is computed
by a rule of :mod:`acgs.domain.escalation` with the database's ``now``, its
event is journaled (durable first, with the caller as its actor), then it is
applied by the escalation projector, the one writer of escalations (the same
that the shipper runs later, when applying it again is a no-op: same event
id), so that the answer shows the new state. The lock is held across the
journal write (admin actions are human-paced; an fsync is milliseconds), so
no other change can come between: two approvers at the same moment are
applied one after the other, never one "superseded". An approval that
reaches ``required_approvals`` also journals an ALLOW decision (a
``decision`` whose ``data`` names the escalation it approves:
events.ApprovalOf, a new decision id, linked both ways with the escalation),
which is how the requester's action becomes allowed.

The projector applies a change only to the escalation as it was when the
change was computed (same state, same approvals). If the commit fails after
the journal took the event (PostgreSQL down), the caller gets UNAVAILABLE and
the shipper applies the event later if the escalation is still as the change
found it; if another change came first, the shipper quarantines the event's
record with the reason "superseded", so the trail keeps it and says why it
never took effect.

Expiry: a pending escalation past ``expires_at`` is reported as expired on
every read, made so (an ``escalation.changed`` event by this server's system
caller) by :meth:`EscalationService.sweep` (run by each server at start and
periodically) and by the read or change that finds it due. Resolving or
acknowledging it then is FAILED_PRECONDITION. The sweep holds the rows it
expires (other servers' sweeps skip them) across its journal write, so two
servers never journal the same expiry.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from acgs.domain import canonical, events
from acgs.domain import escalation as esc
from acgs.domain.escalation import Escalation, EscalationEvent, EscalationFilter, EscalationPage
from acgs.domain.model import Caller, Decision, Effect, new_decision_id
from acgs.domain.tokens import AGENT
from acgs.errors import AuditUnavailable, InvalidTransition, NotFound, Unavailable
from acgs.service_layer.escalation_ports import (
    Bell,
    EscalationStore,
    EscalationTelemetry,
    Transaction,
)
from acgs.service_layer.ports import AuditEntry, AuditSink, EventEntry

logger = logging.getLogger("acgs.escalations")

SYSTEM_ROLE = "system"
Step = Callable[[Escalation, dt.datetime], tuple[Escalation, str]]


class EscalationService:
    """Escalations for humans. Raises NotFound, InvalidRequest, InvalidTransition,
    SelfResolution, Unavailable (database) and AuditUnavailable (journal).

    ``poll_s``: how long a watcher waits for a notification before looking
    anyway; ``page``: events read per query; ``sweep_batch``: escalations
    expired per transaction; ``on_closed(id)``: told of each escalation this
    server resolved or expired.
    """

    def __init__(self, *, store: EscalationStore, audit: AuditSink, bell: Bell,
                 telemetry: EscalationTelemetry, instance_id: str, constitutional_hash: str,
                 poll_s: float = 1.0, page: int = 500, sweep_batch: int = 100,
                 on_closed: Callable[[str], None] | None = None) -> None:
        self._store = store
        self._audit = audit
        self._bell = bell
        self._telemetry = telemetry
        self._hash = constitutional_hash
        self._poll_s = poll_s
        self._page = page
        self._sweep_batch = sweep_batch
        self._on_closed = on_closed  # a resolved escalation's group takes no more decisions
        self.system = Caller(id=f"acgs-server:{instance_id}", role=SYSTEM_ROLE)

    async def get(self, escalation_id: str, caller: Caller) -> Escalation:
        """One escalation as of now; an agent sees only those of its own requests."""
        e, now = await self._store.get(escalation_id)
        if caller.role == AGENT and e.requester_id != caller.id:
            raise NotFound(f"no escalation {escalation_id}")
        if e.is_due(now):
            await self._try_sweep()
        return e.as_of(now)

    async def list_escalations(self, where: EscalationFilter, *, page_size: int,
                   cursor: str = "") -> EscalationPage:
        """A page of escalations as of now, oldest first."""
        page, now = await self._store.list_page(where, page_size=page_size, cursor=cursor)
        if any(e.is_due(now) for e in page.escalations):
            await self._try_sweep()
        return EscalationPage([e.as_of(now) for e in page.escalations], page.next_cursor)

    async def watch(self, *, after_seq: int = 0, from_now: bool = False,
                    escalation_id: str = "") -> AsyncIterator[EscalationEvent]:
        """Every event after ``after_seq`` (or from now), in seq order, then new ones, until
        the server stops (then Unavailable: resume after the last seq received).

        With ``escalation_id``, only that escalation's events."""
        cursor = await self._store.last_seq() if from_now else max(0, after_seq)
        while not self._bell.closed:
            ring = self._bell.next_ring()  # before the query: no wake-up falls in between
            events = await self._store.events_after(cursor, limit=self._page)
            for event in events:
                if not escalation_id or event.escalation.id == escalation_id:
                    yield event
                cursor = event.seq
            if len(events) < self._page:
                await self._bell.wait(ring, timeout_s=self._poll_s)
        raise Unavailable("this server is stopping; resume WatchEscalations after the last seq")

    async def acknowledge(self, escalation_id: str, caller: Caller, *,
                          comment: str = "") -> Escalation:
        """open → acknowledged by ``caller``."""
        def step(e: Escalation, now: dt.datetime) -> tuple[Escalation, str]:
            return esc.acknowledge(e, by=caller, now=now), esc.ACKNOWLEDGED

        return await self._change(escalation_id, caller, step, comment)

    async def resolve(self, escalation_id: str, caller: Caller, *, verdict: esc.Verdict,
                      comment: str = "") -> Escalation:
        """``caller`` approves or denies (see the rules in acgs.domain.escalation)."""
        def step(e: Escalation, now: dt.datetime) -> tuple[Escalation, str]:
            return esc.resolve(e, by=caller, verdict=verdict, now=now, comment=comment)

        return await self._change(escalation_id, caller, step, comment)

    async def closed_since(self, seq: int | None) -> tuple[set[str], int]:
        """Escalation ids (aliases too) resolved or expired by any server since event ``seq``
        (None: from now on), and the seq to ask from next."""
        if seq is None:
            return set(), await self._store.last_seq()
        return await self._store.closed_after(seq)

    async def sweep(self) -> int:
        """Expire every due escalation this server can lock; refresh the open gauge.

        Returns how many it expired."""
        expired: list[Escalation] = []
        while await self._store.any_due():
            async with self._store.transaction() as tx:
                due, now = await tx.due(limit=self._sweep_batch)
                entries = [self._event(e, esc.expire(e, now=now, by=self.system.id),
                                       esc.EXPIRED, self.system) for e in due]
                if entries:
                    await self._audit.append(entries)
                for entry in entries:
                    saved = await tx.apply(entry)
                    if saved is not None:
                        expired.append(saved)
            if len(due) < self._sweep_batch:
                break  # the rest, if any, is locked by another server's sweep
        self._resolved(expired)
        self._telemetry.set_open_escalations(await self._store.open_counts())
        return len(expired)

    # -- internals -------------------------------------------------------------------------

    async def _change(self, escalation_id: str, caller: Caller, step: Step,
                      comment: str) -> Escalation:
        """Lock the escalation, journal its change, apply it, commit: no other change can
        come between, so a journaled change is superseded only when its commit fails (then
        the shipper applies it later, or quarantines it if another change came first)."""
        expired: Escalation | None = None
        async with self._store.transaction() as tx:
            e, now = await tx.lock(escalation_id)
            if e.is_due(now):
                expired = await self._commit(tx, e, esc.expire(e, now=now, by=self.system.id),
                                             esc.EXPIRED, self.system)
            else:
                changed, change = step(e, now)
                if not change:
                    return e  # nothing changed (an approver approving again)
                saved = await self._commit(tx, e, changed, change, caller, comment)
        if expired is not None:  # committed: the expiry stands, the change is refused
            self._resolved([expired])
            raise InvalidTransition(
                f"escalation {escalation_id} expired at {expired.expires_at.isoformat()}")
        self._resolved([saved])
        return saved

    async def _commit(self, tx: Transaction, before: Escalation, after: Escalation,
                      change: str, caller: Caller, comment: str = "") -> Escalation:
        """Journal the change of ``before`` (locked by ``tx``) into ``after`` (and, on
        approval, its ALLOW decision), then apply it in ``tx``."""
        approval: list[AuditEntry] = []
        if change == esc.APPROVED and after.decision_id:
            after, allow = await self._approval(tx, after, caller)
            approval.append(allow)
        entry = self._event(before, after, change, caller, comment)
        await self._audit.append([entry, *approval])
        saved = await tx.apply(entry)
        if saved is None:  # cannot happen under the lock: a bug, never a silent loss
            raise RuntimeError(f"escalation {before.id} changed under its lock")
        return saved

    def _event(self, before: Escalation, after: Escalation, change: str, caller: Caller,
               comment: str = "") -> EventEntry:
        return EventEntry(events.EscalationChanged.of(before, after, change=change,
                                                      comment=comment),
                          caller, constitutional_hash=self._hash)

    async def _approval(self, tx: Transaction, e: Escalation,
                        caller: Caller) -> tuple[Escalation, AuditEntry]:
        """The audited ALLOW an approval produces: the escalated request, allowed."""
        request_json = await tx.request_json(e.decision_id)
        if not request_json:
            request_json = canonical.dumps({
                "request_id": e.request_id,
                "input": {"tenant_id": e.tenant_id, "principal": {"id": e.principal_id}}})
        decision = Decision(
            decision_id=new_decision_id(), request_id=e.request_id, effect=Effect.ALLOW,
            violations=(), policy_revision=e.policy_revision, constitutional_hash=self._hash,
            cached=False, latency_us=0, decided_at_ns=time.time_ns(), escalation_id=e.id)
        e = replace(e, approval_decision_id=decision.decision_id)
        data = events.encode(events.ApprovalOf(e.id, e.decision_id,
                                               tuple(a.approver_id for a in e.approvals)))
        return e, AuditEntry(events.DECISION, decision, caller, request_json, data=data)

    def _resolved(self, escalations: list[Escalation]) -> None:
        for e in escalations:
            if not e.pending and e.resolved_at is not None:
                if self._on_closed is not None:
                    self._on_closed(e.id)
                self._telemetry.escalation_resolved(
                    reason=e.reason, outcome=e.state.value,
                    duration_s=max(0.0, (e.resolved_at - e.created_at).total_seconds()))

    async def _try_sweep(self) -> None:
        try:
            await self.sweep()
        except (Unavailable, AuditUnavailable) as err:
            logger.warning("could not expire due escalations now: %s", err)
