"""The per-caller cap on escalations opened (ACGS_ESCALATION_CALLER_LIMIT): the DecisionService
with the real JournalEscalator over fakes.

A caller flooding the approvers with escalations that cannot group (one resource id per
request) gets, past its cap, a DENY naming ``escalation_limit`` instead of a new
escalation; every decision is still audited; humans learn of the flood from one incident.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from acgs.config import Settings
from acgs.domain import events
from acgs.domain.escalation_group import OpeningLimit
from acgs.domain.model import Caller, Decision, DecisionRequest, Effect, Severity
from acgs.errors import ConfigurationError, EngineTimeout
from acgs.metrics import Metrics
from acgs.service_layer.decisions import DecisionService
from acgs.service_layer.escalator import JournalEscalator
from acgs.service_layer.ports import AuditEntry, EventEntry

from tests.client import HASH, allow_input
from tests.fakes import FakeAudit, FakeCache, FakeEngine, FakeTelemetry, kind

AGENT = Caller(id="acgs_00000000000000a1", role="agent")
OTHER = Caller(id="acgs_00000000000000a2", role="agent")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Store:
    """The escalator's store; never reached while the journal takes incidents."""

    async def open_incident(self, entry: EventEntry) -> None:
        raise AssertionError("the journal took every incident")


@dataclass
class Telemetry:
    created: list[str] = field(default_factory=list)
    limited: int = 0

    def escalation_created(self, *, reason: str) -> None:
        self.created.append(reason)

    def escalation_limited(self) -> None:
        self.limited += 1

    def escalation_resolved(self, *, reason: str, outcome: str, duration_s: float) -> None:
        pass

    def set_open_escalations(self, counts: Mapping[tuple[str, str], int]) -> None:
        pass


@dataclass
class Rig:
    service: DecisionService
    audit: FakeAudit
    cache: FakeCache
    clock: Clock
    telemetry: Telemetry
    engine: FakeEngine

    async def decide(self, resource_id: str, caller: Caller = AGENT) -> Decision:
        return await self.service.decide(request(resource_id), caller)

    def kinds(self) -> list[str]:
        return [kind(e) for e in self.audit.entries]

    def incidents(self) -> list[events.IncidentOpened]:
        return [e.event for e in self.audit.entries
                if isinstance(e, EventEntry) and isinstance(e.event, events.IncidentOpened)]

    def audited(self) -> list[Decision]:
        return [e.decision for e in self.audit.entries if isinstance(e, AuditEntry)]


def request(resource_id: str, rid: str = "") -> DecisionRequest:
    """A fund transfer (the constitution ESCALATEs it) on resource ``resource_id``."""
    doc = allow_input(action={"type": "fund_transfer", "attributes": {}},
                      resource={"type": "account", "id": resource_id, "tenant_id": "t1",
                                "attributes": {}})
    return DecisionRequest(constitutional_hash=HASH, request_id=rid, policy_input=doc)


def make(*, limit: int, window_s: float = 300.0, max_callers: int = 10_000,
         group_s: float = 300.0) -> Rig:
    clock, audit, cache, telemetry = Clock(), FakeAudit(), FakeCache(), Telemetry()
    store: Any = Store()
    escalator = JournalEscalator(
        journal=audit, store=store, telemetry=telemetry, instance_id="inst-a",
        constitutional_hash=HASH, group_window_s=group_s, caller_limit=limit,
        caller_window_s=window_s, max_callers=max_callers, clock=clock)
    engine = FakeEngine()
    service = DecisionService(engine=engine, cache=cache, audit=audit, escalator=escalator,
                              telemetry=FakeTelemetry(), constitutional_hash=HASH,
                              eval_timeout_s=1.0)
    return Rig(service, audit, cache, clock, telemetry, engine)


def limited(decision: Decision) -> bool:
    """``decision`` is the DENY of a caller past its cap, keeping the policy's violations."""
    principles = [v.principle for v in decision.violations]
    return (decision.effect is Effect.DENY and principles == ["high_impact_action",
                                                             "escalation_limit"]
            and decision.escalation_id == "" and not decision.fail_safe)


def test_past_the_cap_a_decision_is_denied_audited_and_one_incident_opens() -> None:
    rig = make(limit=3)

    async def body() -> list[Decision]:
        return [await rig.decide(f"x{i}") for i in range(6)]

    answers = asyncio.run(body())
    assert [d.effect for d in answers[:3]] == [Effect.ESCALATE] * 3
    assert len({d.escalation_id for d in answers[:3]}) == 3 and all(
        d.escalation_id for d in answers[:3])
    assert all(limited(d) for d in answers[3:])
    extra = answers[3].violations[-1]
    assert extra.severity is Severity.HIGH
    for part in (AGENT.id, "3", "300"):
        assert part in extra.message
    # Every decision is audited as answered (the DENYs too), three escalations opened.
    assert [(d.decision_id, d.effect) for d in rig.audited()] == [
        (d.decision_id, d.effect) for d in answers]
    assert rig.kinds().count(events.ESCALATION_OPENED) == 3
    # Humans learn of the flood: one incident for the caller, after the first DENY's record.
    incidents = rig.incidents()
    assert len(incidents) == 1
    assert incidents[0].escalation.reason == "escalation_limit"
    assert incidents[0].escalation.requester_id == AGENT.id
    assert [v.principle for v in incidents[0].escalation.violations] == ["escalation_limit"]
    first_deny = next(i for i, e in enumerate(rig.audit.entries) if isinstance(e, AuditEntry)
                      and e.decision.decision_id == answers[3].decision_id)
    assert rig.kinds().index(events.INCIDENT_OPENED) > first_deny
    assert rig.telemetry.limited == 3
    assert sorted(rig.telemetry.created) == ["escalation_limit"] + ["high_impact_action"] * 3


def test_the_cache_keeps_the_policy_answer_not_the_limit_deny() -> None:
    rig = make(limit=1)

    async def body() -> tuple[Decision, Decision, Decision]:
        await rig.decide("x0")
        first = await rig.decide("x1")
        again = await rig.decide("x1")  # from the cache: still past the cap
        rig.clock.now += 301  # the window slid: the cached ESCALATE opens an escalation
        later = await rig.decide("x1")
        return first, again, later

    first, again, later = asyncio.run(body())
    assert limited(first) and not first.cached
    assert limited(again) and again.cached
    assert later.effect is Effect.ESCALATE and later.cached and later.escalation_id
    assert {r.effect for r in rig.cache.entries.values()} == {Effect.ESCALATE}
    assert rig.engine.calls == 2


def test_decisions_joining_a_group_do_not_count_and_still_join_past_the_cap() -> None:
    rig = make(limit=2)

    async def body() -> list[Decision]:
        out = [await rig.decide("x0") for _ in range(10)]  # one escalation, ten decisions
        out += [await rig.decide("x1"), await rig.decide("x2"), await rig.decide("x0")]
        return out

    answers = asyncio.run(body())
    assert {d.effect for d in answers[:11]} == {Effect.ESCALATE}
    assert len({d.escalation_id for d in answers[:10]}) == 1
    assert limited(answers[11])
    # Past the cap, a decision of an open group still joins it (it opens nothing).
    assert answers[12].effect is Effect.ESCALATE
    assert answers[12].escalation_id == answers[0].escalation_id
    assert rig.kinds().count(events.ESCALATION_OPENED) == 2


def test_the_window_slides() -> None:
    rig = make(limit=2, window_s=100, group_s=0)

    async def at(t: float, resource_id: str) -> Decision:
        rig.clock.now = 1000.0 + t
        return await rig.decide(resource_id)

    async def body() -> list[Decision]:
        return [await at(0, "x0"), await at(50, "x1"), await at(60, "x2"),
                await at(100, "x3"), await at(101, "x4"), await at(149, "x5"),
                await at(150, "x6")]

    d = asyncio.run(body())
    assert [limited(x) for x in d] == [False, False, True, False, True, True, False]
    assert all(x.effect is Effect.ESCALATE for i, x in enumerate(d) if i in (0, 1, 3, 6))


def test_the_cap_is_per_caller() -> None:
    rig = make(limit=1)

    async def body() -> list[Decision]:
        return [await rig.decide("x0"), await rig.decide("x1"),
                await rig.decide("x1", OTHER), await rig.decide("x2", OTHER)]

    mine, over, other, other_over = asyncio.run(body())
    assert mine.effect is Effect.ESCALATE and limited(over)
    assert other.effect is Effect.ESCALATE and limited(other_over)
    assert {i.escalation.requester_id for i in rig.incidents()} == {AGENT.id, OTHER.id}
    assert OTHER.id in other_over.violations[-1].message


def test_a_cap_of_zero_means_no_cap() -> None:
    rig = make(limit=0, group_s=0)

    async def body() -> list[Decision]:
        return [await rig.decide(f"x{i}") for i in range(300)]

    assert {d.effect for d in asyncio.run(body())} == {Effect.ESCALATE}
    assert rig.kinds().count(events.ESCALATION_OPENED) == 300
    assert rig.telemetry.limited == 0 and not rig.incidents()


def test_a_batch_is_held_to_the_same_cap_in_one_write() -> None:
    rig = make(limit=2)
    batch = [request("x0"), request("x1"), request("x2"), request("x3"), request("x0")]

    answers = asyncio.run(rig.service.decide_batch(batch, AGENT, deadline_s=None))
    assert [a.effect for a in answers] == [Effect.ESCALATE, Effect.ESCALATE, Effect.DENY,
                                           Effect.DENY, Effect.ESCALATE]
    assert limited(answers[2]) and limited(answers[3])
    assert answers[4].escalation_id == answers[0].escalation_id
    assert [d.decision_id for d in rig.audited()] == [a.decision_id for a in answers]
    assert len(rig.incidents()) == 1 and rig.kinds()[-1] == events.INCIDENT_OPENED
    assert {r.effect for r in rig.cache.entries.values()} == {Effect.ESCALATE}


def test_openings_the_journal_refused_are_not_counted() -> None:
    rig = make(limit=1)

    async def body() -> tuple[Decision, Decision]:
        rig.audit.full = True
        refused = await rig.decide("x0")
        rig.audit.full = False
        return refused, await rig.decide("x1")

    refused, opened = asyncio.run(body())
    assert [v.principle for v in refused.violations] == ["audit_unavailable"]
    assert opened.effect is Effect.ESCALATE and opened.escalation_id


def test_the_incident_opens_once_per_window_not_per_deny() -> None:
    rig = make(limit=1, window_s=300)

    async def body() -> None:
        for i in range(50):
            await rig.decide(f"x{i}")

    asyncio.run(body())
    assert len(rig.incidents()) == 1 and rig.telemetry.limited == 49


def test_caller_state_is_bounded_and_forgetting_only_loosens_the_cap() -> None:
    clock = Clock()
    cap = OpeningLimit(limit=1, window_s=300, max_callers=2, clock=clock)
    assert cap.admit("a") and not cap.admit("a")
    assert cap.admit("b") and cap.admit("c")  # "a" was the least recently seen: forgotten
    assert len(cap) == 2
    assert cap.admit("a")  # a forgotten caller starts afresh (looser, never stricter)
    assert not cap.admit("c")


def test_settings_of_the_cap() -> None:
    defaults = Settings.from_env({})
    assert (defaults.escalation_caller_limit, defaults.escalation_caller_window_s) == (100, 300.0)
    s = Settings.from_env({"ACGS_ESCALATION_CALLER_LIMIT": "0",
                           "ACGS_ESCALATION_CALLER_WINDOW_S": "60"})
    assert (s.escalation_caller_limit, s.escalation_caller_window_s) == (0, 60.0)
    with pytest.raises(ConfigurationError, match="ACGS_ESCALATION_CALLER_LIMIT"):
        Settings.from_env({"ACGS_ESCALATION_CALLER_LIMIT": "-1"})
    with pytest.raises(ConfigurationError, match="ACGS_ESCALATION_CALLER_WINDOW_S"):
        Settings.from_env({"ACGS_ESCALATION_CALLER_WINDOW_S": "-5"})
    with pytest.raises(ConfigurationError, match="ACGS_ESCALATION_CALLER_WINDOW_S"):
        Settings.from_env({"ACGS_ESCALATION_CALLER_WINDOW_S": "0"})  # a cap with no window


def test_limited_decisions_are_counted_in_metrics() -> None:
    metrics = Metrics(address="127.0.0.1:0", instance_id="inst-a")
    try:
        before = metrics.render().decode()
        assert "acgs_escalations_limited_total 0.0" in before
        metrics.escalation_limited()
        metrics.escalation_limited()
        assert "acgs_escalations_limited_total 2.0" in metrics.render().decode()
    finally:
        metrics.close()


def test_time_outs_have_an_allowance_of_their_own() -> None:
    """Engine time-outs (a busy engine, which any caller can make it) open fail-safe
    escalations; counted against the caller's cap, load from others used it up and the
    caller's next high-impact action was denied instead of reaching an approver. Time-outs
    are capped on their own, so a flood of them is still bounded."""
    async def body() -> None:
        rig = make(limit=5)
        real = rig.engine.decide
        busy = [True]

        async def decide(policy_input: Mapping[str, Any], *, timeout_s: float) -> Any:
            if busy[0]:
                raise EngineTimeout("engine busy")
            return await real(policy_input, timeout_s=timeout_s)

        rig.engine.decide = decide  # type: ignore[method-assign]
        timed = [await rig.service.decide(ordinary(f"r{i}"), AGENT) for i in range(6)]
        assert all(d.fail_safe and d.escalation_id for d in timed[:5])
        sixth = timed[5]  # the sixth time-out of the window is capped
        assert [v.principle for v in sixth.violations] == ["fail_safe", "escalation_limit"]
        assert sixth.effect is Effect.DENY and sixth.escalation_id == ""
        busy[0] = False
        d = await rig.decide("x1")  # a fund transfer: ESCALATE, a human decides
        assert d.effect is Effect.ESCALATE and d.escalation_id

    asyncio.run(body())


def ordinary(resource_id: str) -> DecisionRequest:
    doc = allow_input(resource={"type": "account", "id": resource_id, "tenant_id": "t1",
                                "attributes": {}})
    return DecisionRequest(constitutional_hash=HASH, request_id="", policy_input=doc)
