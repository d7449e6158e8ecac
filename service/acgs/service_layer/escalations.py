"""The escalation use cases: list, get, watch, acknowledge, resolve, and expiry.

Every change happens in one store transaction that locks the escalation,
applies a rule of :mod:`acgs.domain.escalation` with the database's ``now``,
appends its audit record(s) to the journal (durable before the commit), then
saves it with an event. An approval that reaches ``required_approvals`` also
appends an audited ALLOW decision (kind "approval", a new decision id, linked
both ways with the escalation), which is how the requester's action becomes
allowed. If the commit fails after the journal took the records, the audit
trail holds the record of a change that did not happen; the escalation, which
is what is enforced, stays as it was.

Expiry: a pending escalation past ``expires_at`` is reported as expired on
every read, made so (audited, with an event) by :meth:`EscalationService.sweep`
(run by each server at start and periodically) and by the read or change that
finds it due. Resolving or acknowledging it then is FAILED_PRECONDITION.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from acgs.domain import canonical
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
from acgs.service_layer.escalator import escalation_entry
from acgs.service_layer.ports import AuditEntry, AuditSink

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
                changed = [esc.expire(e, now=now, by=self.system.id) for e in due]
                if changed:
                    await self._audit.append([
                        escalation_entry(e, event=esc.EXPIRED, caller=self.system,
                                         constitutional_hash=self._hash) for e in changed])
                saved = [await tx.save(e, event=esc.EXPIRED, actor=self.system.id)
                         for e in changed]
            expired.extend(saved)
            if len(due) < self._sweep_batch:
                break  # the rest, if any, is locked by another server's sweep
        self._resolved(expired)
        self._telemetry.set_open_escalations(await self._store.open_counts())
        return len(expired)

    # -- internals -------------------------------------------------------------------------

    async def _change(self, escalation_id: str, caller: Caller, step: Step,
                      comment: str) -> Escalation:
        expired: Escalation | None = None
        async with self._store.transaction() as tx:
            e, now = await tx.lock(escalation_id)
            if e.is_due(now):
                expired = await self._apply(tx, esc.expire(e, now=now, by=self.system.id),
                                            esc.EXPIRED, self.system)
            else:
                changed, event = step(e, now)
                if not event:
                    return e  # nothing changed (an approver approving again)
                saved = await self._apply(tx, changed, event, caller, comment)
        if expired is not None:  # committed: the expiry stands, the change is refused
            self._resolved([expired])
            raise InvalidTransition(
                f"escalation {escalation_id} expired at {expired.expires_at.isoformat()}")
        self._resolved([saved])
        return saved

    async def _apply(self, tx: Transaction, e: Escalation, event: str, caller: Caller,
                     comment: str = "") -> Escalation:
        """Journal ``event`` of ``e`` (and, on approval, its ALLOW decision), then save it."""
        approval: list[AuditEntry] = []
        if event == esc.APPROVED and e.decision_id:
            e, entry = await self._approval(tx, e, caller)
            approval.append(entry)
        await self._audit.append([
            escalation_entry(e, event=event, caller=caller, constitutional_hash=self._hash,
                             comment=comment), *approval])
        return await tx.save(e, event=event, actor=caller.id)

    async def _approval(self, tx: Transaction, e: Escalation,
                        caller: Caller) -> tuple[Escalation, AuditEntry]:
        """The audited ALLOW an approval produces: the escalated request, allowed."""
        request_json = await tx.request_json(e.decision_id)
        doc = json.loads(request_json) if request_json else {
            "request_id": e.request_id,
            "input": {"tenant_id": e.tenant_id, "principal": {"id": e.principal_id}}}
        doc["escalation"] = {"event": esc.APPROVED, "id": e.id, "decision_id": e.decision_id,
                             "approvers": [a.approver_id for a in e.approvals]}
        decision = Decision(
            decision_id=new_decision_id(), request_id=e.request_id, effect=Effect.ALLOW,
            violations=(), policy_revision=e.policy_revision, constitutional_hash=self._hash,
            cached=False, latency_us=0, decided_at_ns=time.time_ns(), escalation_id=e.id)
        e = replace(e, approval_decision_id=decision.decision_id)
        return e, AuditEntry("approval", decision, caller, canonical.dumps(doc))

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
