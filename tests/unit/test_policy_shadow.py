"""Shadow evaluation and the auto-rollback watch, on fakes (issue 18): exact transitions,
masked examples, a full queue drops and counts, never blocks; a fresh activation that fails
safe too often rolls the fleet back once and opens an incident."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from acgs.domain.model import (
    Caller,
    Decision,
    Effect,
    EngineResult,
    Severity,
    Violation,
    timed_out,
    timed_out_result,
)
from acgs.domain.policy_version import FleetState
from acgs.errors import EngineError, EngineTimeout, InvalidTransition
from acgs.lifecycle.policy import shadowing
from acgs.lifecycle.supervisor import Supervisor
from acgs.service_layer.decisions import DecisionService
from acgs.service_layer.policy_shadow import (
    ShadowEvaluator,
    ShadowPlan,
    ShadowReport,
    merge_reports,
)
from acgs.service_layer.policy_watch import AutoRollback, PolicyWatch, RollbackWatch

DENY = (Violation("role_permission", Severity.HIGH, "no"),)
FAIL = (Violation("fail_safe", Severity.CRITICAL, "evaluation failed"),)


def decision(effect: Effect = Effect.ALLOW, *, revision: str = "live", n: int = 0,
             fail_safe: bool = False) -> Decision:
    violations = FAIL if fail_safe else (DENY if effect is not Effect.ALLOW else ())
    return Decision(decision_id=f"d{n}", request_id="", effect=effect, violations=violations,
                    policy_revision=revision, constitutional_hash="h", cached=False,
                    latency_us=1, decided_at_ns=0, fail_safe=fail_safe)


class Counting:
    def __init__(self) -> None:
        self.evaluated: list[str] = []
        self.dropped = 0
        self.rollbacks = 0

    def shadow_evaluated(self, *, transition: str) -> None:
        self.evaluated.append(transition)

    def shadow_dropped(self) -> None:
        self.dropped += 1

    def policy_rolled_back(self) -> None:
        self.rollbacks += 1


class Candidate:
    """Denies writes, escalates deletes, fails on "boom", allows the rest."""

    def __init__(self) -> None:
        self.closed = False
        self.calls = 0

    async def decide_many(self, inputs: Sequence[Mapping[str, Any]], *,
                          timeout_s: float) -> list[EngineResult | Exception]:
        self.calls += 1
        out: list[EngineResult | Exception] = []
        for doc in inputs:
            action = doc["action"]
            if action == "boom":
                out.append(EngineError("boom"))
            elif action == "write":
                out.append(EngineResult(Effect.DENY, DENY, "cand"))
            elif action == "delete":
                out.append(EngineResult(Effect.ESCALATE, DENY, "cand"))
            else:
                out.append(EngineResult(Effect.ALLOW, (), "cand"))
        return out

    def close(self) -> None:
        self.closed = True


async def drained(evaluator: ShadowEvaluator) -> None:
    for _ in range(200):
        await asyncio.sleep(0.005)
        if evaluator._queue.empty():
            await asyncio.sleep(0.01)
            return


def test_the_shadow_counts_the_exact_transitions_and_keeps_masked_examples() -> None:
    async def run() -> tuple[ShadowReport, Counting, list[Decision], bool]:
        telemetry = Counting()
        evaluator = ShadowEvaluator(instance_id="s1", telemetry=telemetry,
                                    mask=("principal.ssn",))
        parts = Supervisor()
        shadowing(parts, evaluator)
        await parts.start()
        engine = Candidate()
        await evaluator.switch(ShadowPlan("cand", 1.0, 2, 7), engine)
        answers = []
        for n, (action, live) in enumerate([("read", Effect.ALLOW), ("write", Effect.ALLOW),
                                            ("write", Effect.ALLOW), ("write", Effect.ALLOW),
                                            ("delete", Effect.DENY), ("boom", Effect.ALLOW),
                                            ("read", Effect.DENY)]):
            d = decision(live, n=n)
            evaluator.offer({"action": action, "principal": {"ssn": "123-45"}}, d)
            answers.append(d)
        await drained(evaluator)
        report = evaluator.report()
        await parts.stop()
        return report, telemetry, answers, engine.closed

    report, telemetry, answers, closed = asyncio.run(run())
    assert report.evaluated == 7 and report.generation == 7
    assert report.counts == {"ALLOW->DENY": 3, "DENY->ESCALATE": 1, "ALLOW->FAIL_SAFE": 1,
                             "DENY->ALLOW": 1}
    assert [e["decision_id"] for e in report.examples["ALLOW->DENY"]] == ["d1", "d2"]  # N = 2
    assert report.examples["DENY->ESCALATE"][0]["input"] == {
        "action": "delete", "principal": {"ssn": "***"}}
    assert sorted(t for t in telemetry.evaluated if t) == sorted(
        ["ALLOW->DENY"] * 3 + ["DENY->ESCALATE", "ALLOW->FAIL_SAFE", "DENY->ALLOW"])
    # The answers are what they were: the shadow only reads them.
    assert [d.effect for d in answers] == [Effect.ALLOW] * 4 + [Effect.DENY, Effect.ALLOW,
                                                                 Effect.DENY]
    assert closed


def test_a_full_queue_drops_and_counts_without_blocking() -> None:
    async def run() -> tuple[ShadowReport, Counting]:
        telemetry = Counting()
        evaluator = ShadowEvaluator(instance_id="s1", telemetry=telemetry, queue_size=3)
        await evaluator.switch(ShadowPlan("cand", 1.0, 1, 1), Candidate())
        for n in range(10):  # the worker is not started: nothing drains the queue
            evaluator.offer({"action": "write"}, decision(n=n))
        return evaluator.report(), telemetry

    report, telemetry = asyncio.run(run())
    assert report.dropped == 7 and telemetry.dropped == 7


def test_timeouts_and_audit_refusals_are_not_differences() -> None:
    class Slow(Candidate):
        async def decide_many(self, inputs: Sequence[Mapping[str, Any]], *,
                              timeout_s: float) -> list[EngineResult | Exception]:
            return [EngineTimeout("behind") for _ in inputs]

    async def run() -> ShadowReport:
        evaluator = ShadowEvaluator(instance_id="s1", telemetry=Counting())
        parts = Supervisor()
        shadowing(parts, evaluator)
        await parts.start()
        await evaluator.switch(ShadowPlan("cand", 1.0, 1, 1), Slow())
        refused = Decision("d9", "", Effect.DENY, (Violation(
            "audit_unavailable", Severity.CRITICAL, "journal full"),), "live", "h", False, 1,
            0, fail_safe=True)
        evaluator.offer({"action": "read"}, refused)
        capped = Decision("d8", "", Effect.DENY, (
            Violation("high_impact_action", Severity.HIGH, "needs a human"),
            Violation("escalation_limit", Severity.HIGH, "caller past its cap")),
            "live", "h", False, 1, 0)
        evaluator.offer({"action": "transfer"}, capped)  # the caller's cap, not the policy
        evaluator.offer({"action": "write"}, decision())
        await drained(evaluator)
        report = evaluator.report()
        await parts.stop()
        return report

    report = asyncio.run(run())
    assert (report.evaluated, report.dropped, report.counts) == (0, 1, {})


def test_sampling_and_no_plan_offer_nothing() -> None:
    async def run() -> int:
        draws = iter([0.05, 0.5, 0.09, 0.99])
        evaluator = ShadowEvaluator(instance_id="s1", telemetry=Counting(),
                                    sample=lambda: next(draws))
        evaluator.offer({"action": "x"}, decision())  # no plan: not even a draw
        await evaluator.switch(ShadowPlan("cand", 0.1, 1, 1), Candidate())
        for n in range(4):
            evaluator.offer({"action": "x"}, decision(n=n))
        return evaluator._queue.qsize()

    assert asyncio.run(run()) == 2


def test_merged_reports_sum_counts_and_cap_examples() -> None:
    a = ShadowReport("a", 1, "c", "l", 10, 1, {"ALLOW->DENY": 2}, {"ALLOW->DENY": [{"n": 1},
                                                                                {"n": 2}]})
    b = ShadowReport("b", 1, "c", "l", 5, 0, {"ALLOW->DENY": 1, "DENY->ALLOW": 1},
                     {"ALLOW->DENY": [{"n": 3}], "DENY->ALLOW": [{"n": 4}]})
    merged = merge_reports([a, b], examples=2)
    assert (merged.evaluated, merged.dropped, merged.differences) == (15, 1, 4)
    assert merged.counts == {"ALLOW->DENY": 3, "DENY->ALLOW": 1}
    assert merged.examples == {"ALLOW->DENY": [{"n": 1}, {"n": 2}], "DENY->ALLOW": [{"n": 4}]}


class RollbackStore:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Caller]] = []
        self.desired = "bad"

    async def roll_back(self, *, caller: Caller, reason: str = "",
                        from_revision: str = "") -> FleetState:
        self.calls.append((from_revision, reason, caller))
        if self.desired != from_revision:
            raise InvalidTransition(f"{from_revision} is no longer the desired revision")
        self.desired = "good"
        return FleetState("good", "bad", 3)


class Incidents:
    def __init__(self) -> None:
        self.opened: list[tuple[str, str, Violation]] = []

    async def incident(self, *, reason: str, key: str, caller: Caller, violation: Violation,
                       policy_input: Mapping[str, Any] | None = None) -> str:
        self.opened.append((reason, key, violation))
        return "esc-1"


def test_a_fresh_activation_that_fails_safe_too_often_rolls_back_once() -> None:
    async def run() -> tuple[RollbackStore, Incidents, Counting]:
        store, incidents, telemetry = RollbackStore(), Incidents(), Counting()
        now = [0.0]
        action = AutoRollback(store=store, instance_id="s1", telemetry=telemetry,
                              incidents=incidents)
        watch = action.watch = RollbackWatch(share=0.5, window_s=10, min_decisions=4,
                                             on_trip=action, clock=lambda: now[0])
        observer = PolicyWatch(rollback=watch, shadow=None)
        watch.activated("bad")
        for n in range(3):  # below the minimum: no judgement yet
            observer.observe({}, decision(Effect.DENY, revision="bad", n=n, fail_safe=True))
        observer.observe({}, decision(revision="old"))  # another revision: not counted
        await asyncio.sleep(0)
        assert store.calls == []
        observer.observe({}, decision(Effect.DENY, revision="bad", n=4, fail_safe=True))
        for n in range(5, 10):  # tripped once: later decisions change nothing
            observer.observe({}, decision(Effect.DENY, revision="bad", n=n, fail_safe=True))
        await asyncio.sleep(0.01)
        watch.activated("good")  # the restored revision is not watched: no ping-pong
        for n in range(10):
            observer.observe({}, decision(Effect.DENY, revision="good", n=n, fail_safe=True))
        await asyncio.sleep(0.01)
        return store, incidents, telemetry

    store, incidents, telemetry = asyncio.run(run())
    assert [c[0] for c in store.calls] == ["bad"]
    assert "4 of the first 4 decisions under bad failed safe" in store.calls[0][1]
    assert store.calls[0][2] == Caller("s1", "system")  # the server is the actor
    assert telemetry.rollbacks == 1
    assert [(r, k) for r, k, _ in incidents.opened] == [("policy_rollback",
                                                        "policy_rollback:bad")]
    assert "rolled back to good" in incidents.opened[0][2].message


def test_the_watch_ignores_a_healthy_activation_and_the_end_of_its_window() -> None:
    async def run() -> list[tuple[str, str]]:
        store = RollbackStore()
        now = [0.0]
        action = AutoRollback(store=store, instance_id="s1", telemetry=Counting(),
                              incidents=None)
        watch = RollbackWatch(share=0.5, window_s=10, min_decisions=4, on_trip=action,
                              clock=lambda: now[0])
        watch.activated("bad")
        for n in range(6):  # 2 of 6 fail safe: a third, below the share
            watch.observe(decision(Effect.DENY, revision="bad", n=n, fail_safe=n < 2))
        now[0] = 11.0  # past the window: the rest no longer counts
        for n in range(20):
            watch.observe(decision(Effect.DENY, revision="bad", n=n, fail_safe=True))
        audit_refusal = Violation("audit_unavailable", Severity.CRITICAL, "journal full")
        watch.activated("bad")
        for n in range(10):  # fail-safe, but not the policy's doing
            watch.observe(Decision(f"d{n}", "", Effect.DENY, (audit_refusal,), "bad", "h",
                                   False, 1, 0, fail_safe=True))
        await asyncio.sleep(0.01)
        return store.calls

    assert asyncio.run(run()) == []


def test_timeouts_do_not_roll_a_fresh_activation_back() -> None:
    """A caller that keeps the engine busy right after an activation (slow requests, then
    ordinary ones queued behind them until their budget passes) made the server roll the
    fleet back: a timeout says the engine was busy, not that the revision cannot decide.
    Both ways a timeout becomes a fail-safe DENY count as such: one decision's and a
    batch's."""
    single = timed_out_result("evaluation took longer than 250 ms", revision="bad")
    batch = DecisionService._trusted(EngineTimeout("not decided within 0.25s"), "bad")
    failed = DecisionService._trusted(EngineError("decision is undefined"), "bad")
    assert [timed_out(v) for r in (single, batch, failed) for v in r.violations] == [
        True, True, False]

    async def run() -> list[tuple[str, str, Caller]]:
        store = RollbackStore()
        action = AutoRollback(store=store, instance_id="s1", telemetry=Counting(),
                              incidents=None)
        watch = RollbackWatch(share=0.5, window_s=30, min_decisions=4, on_trip=action)
        watch.activated("bad")
        for n, result in enumerate([single, batch] * 10):
            watch.observe(Decision(f"d{n}", "", Effect.DENY, result.violations, "bad", "h",
                                   False, 1, 0, fail_safe=True))
        await asyncio.sleep(0.01)
        assert store.calls == []
        for n in range(30):  # the policy's own failures still do
            watch.observe(Decision(f"e{n}", "", Effect.DENY, failed.violations, "bad", "h",
                                   False, 1, 0, fail_safe=True))
        await asyncio.sleep(0.01)
        return store.calls

    assert len(asyncio.run(run())) == 1
