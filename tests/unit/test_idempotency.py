"""request_id idempotency in the DecisionService, with fakes; and escalation grouping."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from acgs.domain.escalation_group import OpenGroups, group_key
from acgs.domain.model import Caller, DecisionRequest, Severity, Violation
from acgs.errors import IdempotencyConflict
from acgs.service_layer.decisions import DecisionService
from acgs.service_layer.idempotency import IdempotencyMap

from tests.client import HASH, allow_input
from tests.fakes import FakeAudit, FakeCache, FakeEngine, FakeEscalator, FakeTelemetry, kind

CALLER = Caller(id="svc-a", role="agent")
OTHER = Caller(id="svc-b", role="agent")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(*, clock: Clock | None = None, max_entries: int = 100,
         idempotent: bool = True) -> tuple[DecisionService, dict[str, Any]]:
    parts: dict[str, Any] = {"engine": FakeEngine(), "cache": FakeCache(), "audit": FakeAudit(),
                             "escalator": FakeEscalator(), "telemetry": FakeTelemetry()}
    idem = IdempotencyMap(window_s=600, max_entries=max_entries,
                          clock=clock or time.monotonic) if idempotent else None
    return DecisionService(constitutional_hash=HASH, eval_timeout_s=1.0, idempotency=idem,
                           **parts), parts


def req(rid: str, **doc: Any) -> DecisionRequest:
    return DecisionRequest(constitutional_hash=HASH, request_id=rid,
                           policy_input=allow_input(**doc))


def decided(parts: dict[str, Any]) -> int:
    return sum(1 for e in parts["audit"].entries if kind(e) == "decision")


def test_same_request_id_replays_the_decision_without_a_record() -> None:
    service, parts = make()

    async def go() -> list[Any]:
        return [await service.decide(req("k", action={"type": "fund_transfer"}), CALLER)
                for _ in range(3)]

    first, *again = asyncio.run(go())
    assert first.escalation_id and not first.replayed
    assert all(d.replayed and d.decision_id == first.decision_id for d in again)
    assert all(d.escalation_id == first.escalation_id for d in again)
    assert decided(parts) == 1 and len(parts["escalator"].durable) == 1


def test_another_body_is_a_conflict_and_other_callers_are_apart() -> None:
    service, parts = make()

    async def go() -> None:
        await service.decide(req("k"), CALLER)
        with pytest.raises(IdempotencyConflict, match="request_id 'k'"):
            await service.decide(req("k", tenant_id="t2"), CALLER)
        other = await service.decide(req("k", tenant_id="t2"), OTHER)  # its own key space
        assert not other.replayed
        await service.decide(req(""), CALLER)
        await service.decide(req(""), CALLER)  # no request_id: decided again

    asyncio.run(go())
    assert decided(parts) == 4


def test_replays_without_cache_or_audit() -> None:
    """An empty map is falsy (it has a length): it must still be used."""
    idem = IdempotencyMap(window_s=600, max_entries=10, clock=time.monotonic)
    service = DecisionService(engine=FakeEngine(), cache=None, audit=None, escalator=None,
                              telemetry=FakeTelemetry(), constitutional_hash=HASH,
                              eval_timeout_s=1.0, idempotency=idem)

    async def go() -> None:
        first = await service.decide(req("k"), CALLER)
        assert (await service.decide(req("k"), CALLER)).decision_id == first.decision_id
        batch = await service.decide_batch([req("k")], CALLER, deadline_s=None)
        assert batch[0].replayed

    asyncio.run(go())


def test_window_and_bound() -> None:
    clock = Clock()
    service, parts = make(clock=clock, max_entries=2)

    async def go() -> None:
        first = await service.decide(req("a"), CALLER)
        clock.now = 601  # past the window: decided anew, and the key is free again
        assert (await service.decide(req("a", tenant_id="t2"), CALLER)).decision_id \
            != first.decision_id
        await service.decide(req("b"), CALLER)
        await service.decide(req("c"), CALLER)  # "a" is forgotten (least recently used)
        assert not (await service.decide(req("a"), CALLER)).replayed

    asyncio.run(go())
    assert decided(parts) == 5


def test_concurrent_copies_wait_for_the_first() -> None:
    service, parts = make()

    async def go() -> list[Any]:
        return list(await asyncio.gather(*(service.decide(req("k"), CALLER) for _ in range(5))))

    answers = asyncio.run(go())
    assert len({d.decision_id for d in answers}) == 1 and decided(parts) == 1
    assert sorted(d.replayed for d in answers) == [False, True, True, True, True]


def test_batch_items_are_keys() -> None:
    service, parts = make()

    async def go() -> None:
        single = await service.decide(req("k"), CALLER)
        batch = await service.decide_batch([req("k"), req("n"), req("n"), req("")], CALLER,
                                           deadline_s=None)
        assert [d.replayed for d in batch] == [True, False, True, False]
        assert batch[0].decision_id == single.decision_id
        assert batch[1].decision_id == batch[2].decision_id
        with pytest.raises(IdempotencyConflict, match=r"requests\[1\].request_id"):
            await service.decide_batch([req("z"), req("k", tenant_id="t2")], CALLER,
                                       deadline_s=None)
        # The refused batch claimed "z" only for as long as it ran.
        assert not (await service.decide(req("z", tenant_id="t3"), CALLER)).replayed

    asyncio.run(go())
    assert decided(parts) == 1 + 2 + 1


def test_a_request_without_request_id_never_touches_the_map() -> None:
    """Its only cost is one string test: the map is not looked at (it would raise)."""

    class Untouchable(IdempotencyMap):
        async def claim(self, *args: Any, **kw: Any) -> Any:
            raise AssertionError("looked up a request without request_id")

    parts: dict[str, Any] = {"engine": FakeEngine(), "cache": FakeCache(), "audit": FakeAudit(),
                             "escalator": FakeEscalator(), "telemetry": FakeTelemetry()}
    service = DecisionService(constitutional_hash=HASH, eval_timeout_s=1.0, **parts,
                              idempotency=Untouchable(window_s=600, max_entries=10,
                                                      clock=time.monotonic))

    async def go() -> None:
        await service.decide(req(""), CALLER)
        await service.decide_batch([req(""), req("")], CALLER, deadline_s=None)

    asyncio.run(go())
    assert decided(parts) == 3


def test_escalations_of_one_group_share_an_id_for_the_window() -> None:
    clock = Clock()
    groups = OpenGroups(window_s=300, max_entries=2, clock=clock)
    critical = (Violation("tenant_isolation", Severity.CRITICAL, "m"),)
    key = group_key(reason="critical_violation", caller=CALLER,
                    policy_input=allow_input(tenant_id="t2"), violations=critical)
    other = group_key(reason="critical_violation", caller=OTHER,
                      policy_input=allow_input(tenant_id="t2"), violations=critical)
    assert key != other  # the requesting caller is part of the group
    groups.put(key, "e1")
    assert groups.get(key) == "e1"
    clock.now = 300
    assert groups.get(key) is None
    groups.put(key, "e2")
    groups.forget({"e2"})
    assert groups.get(key) is None
