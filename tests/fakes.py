"""In-memory fakes of the service layer's ports, for unit tests."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from acgs.domain import events
from acgs.domain.escalation import Escalation, State
from acgs.domain.model import Caller, Decision, Effect, EngineResult, Severity, Violation
from acgs.errors import AuditUnavailable, EngineError
from acgs.service_layer.ports import AuditEntry, Entry, Evaluation, EventEntry, PolicyInfo


@dataclass
class FakeEngine:
    """Allows tenant "t1", denies others, raises for context.fail."""

    revision: str = "rev-1"
    calls: int = 0

    @property
    def policy(self) -> PolicyInfo:
        return PolicyInfo(revision=self.revision, data_revision="data-1")

    async def decide(self, policy_input: Mapping[str, Any], *, timeout_s: float) -> EngineResult:
        self.calls += 1
        if policy_input.get("context", {}).get("fail"):
            raise EngineError("boom")
        if policy_input.get("action", {}).get("type") == "fund_transfer":
            v = Violation("high_impact_action", Severity.HIGH, "needs a human")
            return EngineResult(Effect.ESCALATE, (v,), self.revision)
        if policy_input.get("tenant_id") == "t1":
            return EngineResult(Effect.ALLOW, (), self.revision)
        v = Violation("tenant_isolation", Severity.CRITICAL, "other tenant")
        return EngineResult(Effect.DENY, (v,), self.revision)

    async def decide_many(
        self, inputs: Sequence[Mapping[str, Any]], *, timeout_s: float
    ) -> list[EngineResult | Exception]:
        out: list[EngineResult | Exception] = []
        for doc in inputs:
            try:
                out.append(await self.decide(doc, timeout_s=timeout_s))
            except EngineError as err:
                out.append(err)
        return out

    async def evaluate(self, path: str, input_value: Any, *, timeout_s: float) -> Evaluation:
        return Evaluation(result_json="true", undefined=False, policy_revision=self.revision)


@dataclass
class FakeCache:
    entries: dict[str, EngineResult] = field(default_factory=dict)

    async def get(self, key: str) -> EngineResult | None:
        return self.entries.get(key)

    async def put(self, key: str, result: EngineResult) -> None:
        self.entries[key] = result


@dataclass
class FakeAudit:
    entries: list[Entry] = field(default_factory=list)
    full: bool = False

    async def append(self, entries: Sequence[Entry], *, reserve: bool = False) -> None:
        if self.full:
            raise AuditUnavailable("journal full")
        self.entries.extend(entries)


@dataclass
class FakeEscalator:
    """Escalation ids esc-1, esc-2, ...; ``durable``: (decision id, reason) once durable."""

    durable: list[tuple[str, str]] = field(default_factory=list)
    incidents: list[tuple[str, str]] = field(default_factory=list)  # (reason, key)
    _pending: dict[str, tuple[str, str]] = field(default_factory=dict)

    def opening(self, decision: Decision, *, reason: str, caller: Caller,
                policy_input: Mapping[str, Any]) -> tuple[str, EventEntry | None]:
        escalation_id = f"esc-{len(self._pending) + 1}"
        self._pending[escalation_id] = (decision.decision_id, reason)
        now = dt.datetime.now(dt.UTC)
        e = Escalation(
            id=escalation_id, decision_id=decision.decision_id, reason=reason,
            severity=Severity.HIGH, message="", state=State.OPEN, requester_id=caller.id,
            requester_role=caller.role, principal_id="", tenant_id="",
            request_id=decision.request_id, effect=decision.effect,
            violations=decision.violations, policy_revision=decision.policy_revision,
            instance_id="fake", constitutional_hash=decision.constitutional_hash,
            required_approvals=1, created_at=now, expires_at=now)
        return escalation_id, EventEntry(events.EscalationOpened(e), caller)

    def opened(self, entries: Sequence[EventEntry]) -> None:
        self.durable.extend(self._pending[opened_id(e)] for e in entries)

    def abandoned(self, entries: Sequence[EventEntry]) -> None:
        pass

    async def incident(self, *, reason: str, key: str, caller: Caller, violation: Violation,
                       policy_input: Mapping[str, Any] | None = None) -> str:
        self.incidents.append((reason, key))
        return f"incident-{len(self.incidents)}"


@dataclass
class FakeTelemetry:
    decisions: list[Decision] = field(default_factory=list)
    mismatches: int = 0
    refusals: int = 0

    def decision_made(self, decision: Decision, *, engine_us: float | None) -> None:
        self.decisions.append(decision)

    def hash_mismatch(self) -> None:
        self.mismatches += 1

    def audit_refused(self) -> None:
        self.refusals += 1


def kind(entry: Entry) -> str:
    """The event kind of an entry."""
    return entry.kind if isinstance(entry, AuditEntry) else entry.event.KIND


def opened_id(entry: EventEntry) -> str:
    """The escalation an ``escalation.opened`` entry opens."""
    assert isinstance(entry.event, events.EscalationOpened)
    return entry.event.escalation.id
