"""Opening escalations: the :class:`~acgs.service_layer.ports.Escalator` of the DecisionService.

Why through the journal. A decision that needs a human must carry its
escalation id, and that escalation must survive anything the decision
survives, including PostgreSQL being down and the server being killed right
after answering. So the escalation is opened *in-process*: its id is a new
UUID, its fields are computed here, and its opening is one more event
(``escalation.opened``, every field of the new escalation) appended in the
same group-committed, fsynced journal write as the decision itself. Decide
adds no database round trip. The shipper that copies the journal to
PostgreSQL creates the escalation row in the same transaction as the audit
rows, with the escalation projector (:mod:`acgs.adapters.projectors.escalations`,
the one writer of escalations, run after the decision projector), exactly once;
a journal left by a dead server is shipped, and its escalations opened, by the
next server on the host.

Grouping (:mod:`acgs.domain.escalation_group`). A decision whose group has an
escalation this server opened within ``group_window_s`` joins it: it carries
that escalation's id and journals no opening (its own audit record is what
the projector counts). Across servers, the projector merges an opening into
the pending escalation of the same group opened within the window: the later
id becomes an alias that reads as the earlier escalation.

The cap per caller (:class:`~acgs.domain.escalation_group.OpeningLimit`). Grouping
cannot stop a caller varying the resource of each request: every request is a
group of its own. So a caller may open at most ``caller_limit`` escalations on
this server within a sliding ``caller_window_s`` (``ACGS_ESCALATION_CALLER_LIMIT``,
``ACGS_ESCALATION_CALLER_WINDOW_S``); decisions joining a group do not count,
openings the journal refused are given back. Past the cap, ``opening`` raises
:class:`~acgs.domain.escalation_group.EscalationLimited`: the DecisionService
answers DENY (principle ``escalation_limit``) and opens one incident per caller
(``escalation_limit:<caller id>``) so that humans learn of the flood.

Incidents (a request naming another constitution, the audit trail refusing
decisions) answer no durable decision. They are opened once per key at a
time (``incident_window_s``) by an ``incident.opened`` event: in the journal
past its backlog bound (a full journal is what they report); else, when the
journal refuses it, in PostgreSQL's admin chain together with the escalation
row, in one transaction (``EscalationStore.open_incident``);
else kept in an outbox retried by the sweeper. The condition that raised them
is detected again after a restart, so an incident the outbox lost to a crash
is raised anew. A retry is the same event (the same event id): once PostgreSQL
may hold it (an attempt there failed without an answer, e.g. a connection lost
after its commit), it is retried only there, where ``open_incident`` records an
event id once; the journal, healed meanwhile, would record it a second time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from acgs.domain import escalation as esc
from acgs.domain import events
from acgs.domain.escalation import Escalation, State
from acgs.domain.escalation_group import EscalationLimited, OpenGroups, OpeningLimit, group_key
from acgs.domain.model import (
    ESCALATION_LIMIT,
    Caller,
    Decision,
    Effect,
    Severity,
    Violation,
    timed_out,
)
from acgs.errors import AuditUnavailable, Unavailable
from acgs.service_layer.escalation_ports import (
    EscalationStore,
    EscalationTelemetry,
    ReservingSink,
)
from acgs.service_layer.ports import EventEntry

logger = logging.getLogger("acgs.escalations")

# Incidents that no caller learns the id of are deduplicated across servers too.
_FLEET_DEDUP = frozenset({esc.CONSTITUTION_MISMATCH, esc.ESCALATION_LIMIT})
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _budget(caller_id: str, violations: Sequence[Violation]) -> str:
    """The cap an opening counts against: a fail-safe time-out (the engine was busy, which
    any caller can make it) has a budget of its own, so that load never uses up the cap
    of a caller's high-impact actions."""
    return f"{caller_id}\x00busy" if any(timed_out(v) for v in violations) else caller_id


class JournalEscalator:
    """Opens escalations through the audit journal (see the module docstring).

    ``ttl_s``: lifetime of an escalation (``ACGS_ESCALATION_TTL_S``);
    ``required_approvals``: approvals needed when the policy names none;
    ``direct_timeout_s``: budget of recording an incident in PostgreSQL;
    ``group_window_s``: how long after its opening an escalation takes in the later
    decisions of its group (``ACGS_ESCALATION_GROUP_S``; 0: never);
    ``caller_limit``: escalations one caller may open within ``caller_window_s``
    (``ACGS_ESCALATION_CALLER_LIMIT``, ``ACGS_ESCALATION_CALLER_WINDOW_S``; 0: no cap), for
    at most ``max_callers`` callers tracked (see OpeningLimit).
    """

    def __init__(self, *, journal: ReservingSink, store: EscalationStore,
                 telemetry: EscalationTelemetry, instance_id: str, constitutional_hash: str,
                 ttl_s: float = 3600.0, required_approvals: int = 1,
                 incident_window_s: float = 300.0, direct_timeout_s: float = 1.0,
                 group_window_s: float = 0.0, max_groups: int = 10_000,
                 caller_limit: int = 100, caller_window_s: float = 300.0,
                 max_callers: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._journal = journal
        self._store = store
        self._telemetry = telemetry
        self._instance = instance_id
        self._hash = constitutional_hash
        self._ttl = dt.timedelta(seconds=ttl_s)
        self._approvals = max(1, min(100, required_approvals))
        self._window_s = min(incident_window_s, ttl_s)
        self._direct_timeout_s = direct_timeout_s
        self._clock = clock
        self._incidents: dict[str, tuple[str, float, asyncio.Future[None]]] = {}
        self._groups = OpenGroups(window_s=min(group_window_s, ttl_s), max_entries=max_groups,
                                  clock=clock)
        self._limit = OpeningLimit(limit=caller_limit, window_s=caller_window_s,
                                   max_callers=max_callers, clock=clock)
        self.outbox: list[EventEntry] = []  # incident.opened events not yet durable
        self._maybe_in_pg: set[str] = set()  # their event ids PostgreSQL may hold

    def opening(self, decision: Decision, *, reason: str, caller: Caller,
                policy_input: Mapping[str, Any]) -> tuple[str, EventEntry | None]:
        """The escalation ``decision`` belongs to, and the event opening it (None when it
        joins one this server opened for its group). No I/O.

        Raises EscalationLimited when it would open one past the caller's cap."""
        key = group_key(reason=reason, caller=caller, policy_input=policy_input,
                        violations=decision.violations) if self._groups.enabled else ""
        joined = self._groups.get(key) if key else None
        if joined is not None:
            return joined, None
        if not self._limit.admit(_budget(caller.id, decision.violations)):
            self._telemetry.escalation_limited()
            raise EscalationLimited(Violation(
                ESCALATION_LIMIT, Severity.HIGH,
                f"caller {caller.id} opened {self._limit.limit} escalations within "
                f"{self._limit.window_s:g} s on this server (ACGS_ESCALATION_CALLER_LIMIT): "
                "denied instead of opening another"))
        e = self._new(reason=reason, caller=caller, violations=decision.violations,
                      policy_input=policy_input, decision=decision, group=key)
        if key:
            self._groups.put(key, e.id)
        return e.id, EventEntry(events.EscalationOpened(e), caller,
                                at_ns=decision.decided_at_ns, constitutional_hash=self._hash)

    def opened(self, entries: Sequence[EventEntry]) -> None:
        """Count escalations whose opening events are durable."""
        for entry in entries:
            assert isinstance(entry.event, events.EscalationOpened)
            self._telemetry.escalation_created(reason=entry.event.escalation.reason)

    def abandoned(self, entries: Sequence[EventEntry]) -> None:
        """Openings the journal refused: their groups open anew next time, and they do not
        count against their callers' caps."""
        opened = [entry.event.escalation for entry in entries
                  if isinstance(entry.event, events.EscalationOpened)]
        self._groups.forget({e.id for e in opened})
        for e in opened:
            self._limit.give_back(_budget(e.requester_id, e.violations))

    def closed(self, escalation_id: str) -> None:
        """An escalation was resolved here: later decisions of its group open a new one."""
        self._groups.forget({escalation_id})

    def closed_elsewhere(self, escalation_ids: set[str]) -> None:
        """Escalations resolved by any server (the sweeper reads them from PostgreSQL)."""
        if escalation_ids and len(self._groups):
            self._groups.forget(escalation_ids)

    async def incident(self, *, reason: str, key: str, caller: Caller, violation: Violation,
                       policy_input: Mapping[str, Any] | None = None) -> str:
        """The id of the pending incident under ``key``, opening one if there is none."""
        now = self._clock()
        held = self._incidents.get(key)
        if held is None or held[1] <= now:
            e = self._new(reason=reason, caller=caller, violations=(violation,),
                          policy_input=policy_input,
                          dedup_key=key if reason in _FLEET_DEDUP else "")
            caller_of_e = Caller(id=e.requester_id, role=e.requester_role,
                                 identity=e.requester_identity)
            opened = EventEntry(events.IncidentOpened(e), caller_of_e,
                                constitutional_hash=self._hash)
            future = asyncio.ensure_future(self._make_durable(opened))
            held = (e.id, now + self._window_s, future)
            self._incidents = {k: v for k, v in self._incidents.items() if v[1] > now}
            self._incidents[key] = held
            self._telemetry.escalation_created(reason=reason)
        await asyncio.shield(held[2])
        return held[0]

    async def retry_outbox(self) -> None:
        """Try again to open the incidents that neither the journal nor the database took."""
        waiting, self.outbox = self.outbox, []
        for entry in waiting:
            await self._make_durable(entry)

    def _new(self, *, reason: str, caller: Caller, violations: Sequence[Violation],
             policy_input: Mapping[str, Any] | None, decision: Decision | None = None,
             dedup_key: str = "", group: str = "") -> Escalation:
        principal_id, tenant_id = esc.subject_of(policy_input)
        ns = decision.decided_at_ns if decision is not None else time.time_ns()
        created = _EPOCH + dt.timedelta(microseconds=ns // 1000)
        required = decision.required_approvals if decision is not None else 0
        return Escalation(
            id=str(uuid.uuid4()), decision_id=decision.decision_id if decision else "",
            reason=reason, severity=esc.severity_of(violations),
            message="; ".join(v.message for v in violations)[:2000], state=State.OPEN,
            requester_id=caller.id, requester_role=caller.role, principal_id=principal_id,
            tenant_id=tenant_id, request_id=decision.request_id if decision else "",
            effect=decision.effect if decision else Effect.DENY, violations=tuple(violations),
            policy_revision=decision.policy_revision if decision else "",
            instance_id=self._instance, constitutional_hash=self._hash,
            required_approvals=required or self._approvals, created_at=created,
            expires_at=created + self._ttl, dedup_key=dedup_key,
            requester_identity=caller.identity, group_key=group, last_seen_at=created)

    async def _make_durable(self, entry: EventEntry) -> None:
        """Journal the incident's opening ``entry`` (past the bound), else record it with
        the row in PostgreSQL, else keep it in the outbox. An entry PostgreSQL may hold
        already goes only there (see the module docstring)."""
        assert isinstance(entry.event, events.IncidentOpened)
        e = entry.event.escalation
        if entry.event_id not in self._maybe_in_pg:
            try:
                await self._journal.append([entry], reserve=True)
                return
            except AuditUnavailable as err:
                logger.error("journal refused incident escalation %s (%s): %s", e.id, e.reason,
                             err)
        try:
            await asyncio.wait_for(self._store.open_incident(entry), self._direct_timeout_s)
            self._maybe_in_pg.discard(entry.event_id)
            return
        except (Unavailable, TimeoutError) as err:
            logger.error("incident escalation %s kept in memory until the database answers: %s",
                         e.id, err)
        except Exception:  # never fail the call that reports the incident
            logger.exception("incident escalation %s could not be opened; retrying", e.id)
        # Whether the transaction committed before the failure is unknown.
        self._maybe_in_pg.add(entry.event_id)
        self.outbox.append(entry)
