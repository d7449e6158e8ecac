"""RegopyEngine against real regopy: decisions, failures, timeouts, activation, evaluate."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import pytest
from acgs.adapters.rego_source import PolicyBundle, bundle_from_parts
from acgs.adapters.regopy_engine import RegopyEngine, rule_entrypoint
from acgs.domain.model import Effect, Severity, Violation
from acgs.errors import (
    ConstitutionMismatch,
    EngineError,
    EngineTimeout,
    PolicyError,
    UnknownRule,
)

HASH = "cdd01ef066bc6cf2"
T = TypeVar("T")

BASE = """package acgs.constitution

import rego.v1

default allow := false
allow if input.role == "admin"

always_false := false
absent if input.nope == "x"
echo := input
double(x) := x * 2
"""

DECIDE = """
decision := {"effect": "ALLOW", "violations": []} if allow
decision := {"effect": "DENY", "violations": [v]} if {
	not allow
	v := {"principle": "role", "severity": "high", "message": sprintf("%v", [input.n])}
}
"""


def run(awaitable: Awaitable[T]) -> T:
    async def main() -> T:
        return await awaitable

    return asyncio.run(main())


def bundle(decision: str = DECIDE, *, version: str = "1") -> PolicyBundle:
    manifest = {"name": "t", "version": version, "constitutional_hash": HASH,
                "decision": "acgs/constitution/decision"}
    return bundle_from_parts(modules={"c.rego": BASE + decision}, data_json="{}",
                             manifest=manifest, constitutional_hash=HASH)


@pytest.fixture
def engine() -> Iterator[RegopyEngine]:
    eng = RegopyEngine(workers=2, constitutional_hash=HASH)
    run(eng.activate(bundle()))
    yield eng
    eng.close()


def test_decide_allow_and_deny(engine: RegopyEngine) -> None:
    allowed = run(engine.decide({"role": "admin"}, timeout_s=2))
    assert allowed.effect is Effect.ALLOW and allowed.violations == ()
    assert allowed.policy_revision == engine.policy.revision
    denied = run(engine.decide({"role": "x", "n": 7}, timeout_s=2))
    assert denied.effect is Effect.DENY
    assert denied.violations == (Violation("role", Severity.HIGH, "7"),)


@pytest.mark.parametrize("decision", [
    'decision := 1 / 0',  # evaluation error (strict built-in errors)
    # conflicting values
    'decision := {"effect": "ALLOW", "violations": []}\n'
    'decision := {"effect": "ALLOW", "violations": [1]}',
    'decision := {"effect": "ALLOW", "violations": []} if input.never',  # undefined
    'decision := {"effect": "allow", "violations": []}',  # unknown effect
    'decision := {"effect": "DENY"}',  # no violations
    'decision := {"effect": "DENY", "violations": [{"principle": "p", "severity": "HIGH", '
    '"message": "m"}]}',
    'decision := {"effect": "DENY", "violations": [{"principle": "p", "severity": "low"}]}',
    'decision := ["ALLOW"]',
    'decision := {"effect": "DENY", "violations": []}',  # a DENY must name a principle
    'decision := {"effect": "ALLOW", "violations": [{"principle": "p", "severity": "low", '
    '"message": "m"}]}',
])
def test_anomalies_raise_engine_error(decision: str) -> None:
    eng = RegopyEngine(workers=1, constitutional_hash=HASH)
    try:
        run(eng.activate(bundle("\n" + decision + "\n")))
        with pytest.raises(EngineError):
            run(eng.decide({"role": "x"}, timeout_s=2))
    finally:
        eng.close()


def test_decide_before_activation_is_an_engine_error() -> None:
    eng = RegopyEngine(workers=1, constitutional_hash=HASH)
    try:
        with pytest.raises(EngineError, match="no policy"):
            run(eng.decide({}, timeout_s=1))
    finally:
        eng.close()


def test_slow_policy_times_out() -> None:
    slow = """
decision := {"effect": "ALLOW", "violations": []} if {
	count([y | some y in numbers.range(1, 100000); y % 7 == 0]) > 0
}
"""
    eng = RegopyEngine(workers=1, constitutional_hash=HASH)
    try:
        run(eng.activate(bundle(slow)))
        with pytest.raises(EngineTimeout):
            run(eng.decide({}, timeout_s=0.005))
    finally:
        eng.close()


def test_decide_many_times_out_as_a_whole() -> None:
    slow = """
decision := {"effect": "ALLOW", "violations": []} if {
	count([y | some y in numbers.range(1, 100000); y % 7 == input.r]) > 0
}
"""
    eng = RegopyEngine(workers=1, constitutional_hash=HASH)
    try:
        run(eng.activate(bundle(slow)))
        results = run(eng.decide_many([{"r": i} for i in range(4)], timeout_s=0.005))
        assert [type(r) for r in results] == [EngineTimeout] * 4
    finally:
        eng.close()


def test_decide_many_preserves_order_and_isolates_errors(engine: RegopyEngine) -> None:
    inputs: list[dict[str, Any]] = [{"role": "x", "n": i} for i in range(100)]
    inputs[5] = {"role": "admin"}
    inputs[42] = {"role": "x", "n": {"deep": [1]}}
    results = run(engine.decide_many(inputs, timeout_s=5))
    assert len(results) == 100
    for i, result in enumerate(results):
        assert not isinstance(result, Exception)
        if i == 5:
            assert result.effect is Effect.ALLOW
        elif i == 42:
            assert result.violations[0].message == '{"deep": [1]}'
        else:
            assert result.violations[0].message == str(i)
    assert run(engine.decide_many([], timeout_s=1)) == []


def test_decide_many_returns_errors_in_place() -> None:
    failing = '\ndecision := {"effect": "ALLOW", "violations": []} if 1 / input.d > 0\n'
    eng = RegopyEngine(workers=2, constitutional_hash=HASH)
    try:
        run(eng.activate(bundle(failing)))
        results = run(eng.decide_many([{"d": 1}, {"d": 0}, {"d": -1}, {"d": 2}], timeout_s=5))
        assert [type(r).__name__ for r in results] == [
            "EngineResult", "EvaluationFailed", "EngineError", "EngineResult"]
    finally:
        eng.close()


def test_evaluate_values_false_and_undefined(engine: RegopyEngine) -> None:
    false = run(engine.evaluate("acgs/constitution/always_false", None, timeout_s=2))
    assert (false.result_json, false.undefined) == ("false", False)
    absent = run(engine.evaluate("acgs.constitution.absent", {}, timeout_s=2))
    assert absent.undefined and absent.result_json == "null"
    echo = run(engine.evaluate("data.acgs.constitution.echo", {"b": 1.0, "a": [2]}, timeout_s=2))
    assert echo.result_json == '{"a":[2],"b":1}'
    assert echo.policy_revision == engine.policy.revision
    no_input = run(engine.evaluate("acgs/constitution/echo", None, timeout_s=2))
    assert no_input.undefined


@pytest.mark.parametrize("path", ["acgs/constitution/nope", "data.acgs.constitution.double",
                                  "data", "acgs.constitution", "", "acgs/constitution/allow[0]"])
def test_evaluate_unknown_rule(engine: RegopyEngine, path: str) -> None:
    with pytest.raises(UnknownRule):
        run(engine.evaluate(path, None, timeout_s=2))


def test_rule_entrypoint_normalises_paths() -> None:
    for path in ("data.a.b.c", "a.b.c", "a/b/c", "/a/b/c", "data/a/b/c"):
        assert rule_entrypoint(path) == "a/b/c"


def test_failed_activation_keeps_the_old_policy(engine: RegopyEngine) -> None:
    before = engine.policy
    broken = dataclasses.replace(bundle(), modules=(("c.rego", "package x\ny := 1 +\n"),),
                                 revision="broken")
    with pytest.raises(PolicyError, match=r"c\.rego:2:8"):
        run(engine.activate(broken))
    other = dataclasses.replace(bundle(), constitutional_hash="0" * 16)
    with pytest.raises(ConstitutionMismatch):
        run(engine.activate(other))
    assert engine.policy == before
    assert run(engine.decide({"role": "admin"}, timeout_s=2)).policy_revision == before.revision


def test_activation_is_atomic_under_concurrent_decisions() -> None:
    def versioned(tag: str) -> str:
        return ('\ndecision := {"effect": "DENY", "violations": [{"principle": "p", '
                f'"severity": "low", "message": "{tag}"}}]}}\n')

    old, new = bundle(versioned("old")), bundle(versioned("new"), version="2")
    expected = {old.revision: "old", new.revision: "new"}
    eng = RegopyEngine(workers=2, constitutional_hash=HASH)

    async def scenario() -> list[Any]:
        await eng.activate(old)
        decides = [asyncio.ensure_future(eng.decide({}, timeout_s=5)) for _ in range(300)]
        batch = asyncio.ensure_future(eng.decide_many([{}] * 200, timeout_s=5))
        await asyncio.sleep(0)
        await eng.activate(new)
        after = await eng.decide({}, timeout_s=5)
        return [*await asyncio.gather(*decides), *await batch, after]

    try:
        results = run(scenario())
    finally:
        eng.close()
    assert results[-1].policy_revision == new.revision
    for result in results:
        assert result.violations[0].message == expected[result.policy_revision]
    assert len({r.policy_revision for r in results[300:500]}) == 1  # one batch, one revision


def test_activation_warms_every_worker(engine: RegopyEngine) -> None:
    barrier = threading.Barrier(2, timeout=5)

    def compiled_revisions() -> set[str]:
        barrier.wait()  # one task per worker thread
        return set(getattr(engine._local, "cache", {}))

    async def probe() -> list[set[str]]:
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(
            *[loop.run_in_executor(engine._executor, compiled_revisions) for _ in range(2)]))

    assert run(probe()) == [{engine.policy.revision}] * 2


FAILING = """package acgs.constitution

import rego.v1

decision := {"effect": "ALLOW", "violations": []} if input.ok
decision := {"effect": "DENY", "violations": [v]} if {
\tnot input.ok
\tv := {"principle": "p", "severity": "high", "message": sprintf("%v", [ts])}
}
ts := time.parse_rfc3339_ns(input.ts)
echo := input.s
big := 1e400
div := 1 / input.n
"""


@pytest.mark.parametrize(("path", "policy_input", "says"), [
    ("acgs/constitution/ts", {"ts": "2024-01-01T00:00:00Z"}, "Unable to parse time"),
    ("acgs/constitution/echo", {"s": "\x01"}, "evaluation failed"),
    ("acgs/constitution/echo", {"s": 'q"\\'}, "evaluation failed"),
    ("acgs/constitution/big", {}, "cannot be returned as JSON"),
    ("acgs/constitution/div", {"n": 0}, "divide by zero"),
    ("acgs/constitution/echo", {"s": 1 << 70}, "64-bit"),
])
def test_deterministic_failures_are_not_unavailable(path: str, policy_input: Any,
                                                    says: str) -> None:
    # Retrying gets the same error: UNAVAILABLE would make clients retry, so these are
    # EvaluationFailed, FAILED_PRECONDITION at the edge; Decide still fails safe (DENY).
    import grpc
    from acgs.entrypoints.status import code_for
    from acgs.errors import EvaluationFailed

    manifest = {"name": "t", "version": "1", "constitutional_hash": HASH,
                "decision": "acgs/constitution/decision"}
    eng = RegopyEngine(workers=1, constitutional_hash=HASH)
    try:
        run(eng.activate(bundle_from_parts(modules={"c.rego": FAILING}, data_json="{}",
                                           manifest=manifest, constitutional_hash=HASH)))
        with pytest.raises(EvaluationFailed, match=says) as info:
            run(eng.evaluate(path, policy_input, timeout_s=5))
        assert code_for(info.value) == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(EngineError):  # the service turns this into a fail-safe DENY
            run(eng.decide({"ok": False, "ts": "2024-01-01T00:00:00Z"}, timeout_s=5))
    finally:
        eng.close()
