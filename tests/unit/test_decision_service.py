"""The DecisionService with fakes: ordering of hash check, cache, engine, audit."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from acgs.domain.model import Caller, DecisionRequest, Effect
from acgs.errors import ConstitutionMismatch
from acgs.service_layer.decisions import DecisionService
from acgs.service_layer.ports import AuditEntry, EventEntry

from tests.client import HASH, allow_input
from tests.fakes import (
    FakeAudit,
    FakeCache,
    FakeEngine,
    FakeEscalator,
    FakeTelemetry,
    kind,
    opened_id,
)

CALLER = Caller(id="svc-a", role="agent")


def make(**kw: Any) -> tuple[DecisionService, dict[str, Any]]:
    parts: dict[str, Any] = {
        "engine": FakeEngine(),
        "cache": FakeCache(),
        "audit": FakeAudit(),
        "escalator": FakeEscalator(),
        "telemetry": FakeTelemetry(),
    }
    parts.update(kw)
    service = DecisionService(constitutional_hash=HASH, eval_timeout_s=1.0, **parts)
    return service, parts


def req(doc: dict[str, Any] | None = None, h: str = HASH, rid: str = "r") -> DecisionRequest:
    return DecisionRequest(constitutional_hash=h, request_id=rid, policy_input=doc or allow_input())


def test_wrong_hash_is_refused_and_counted() -> None:
    service, parts = make()
    with pytest.raises(ConstitutionMismatch, match=HASH):
        asyncio.run(service.decide(req(h="bad"), CALLER))
    assert parts["telemetry"].mismatches == 1
    assert parts["engine"].calls == 0 and not parts["audit"].entries


def test_decision_is_audited_then_cached() -> None:
    service, parts = make()
    first = asyncio.run(service.decide(req(), CALLER))
    second = asyncio.run(service.decide(req(), CALLER))
    assert (first.effect, first.cached, second.cached) == (Effect.ALLOW, False, True)
    assert parts["engine"].calls == 1
    audited = parts["audit"].entries
    assert [e.decision.decision_id for e in audited] == [first.decision_id, second.decision_id]
    assert audited[1].decision.cached and audited[0].caller == CALLER


def test_engine_error_is_fail_safe_deny_never_cached_and_escalated() -> None:
    service, parts = make()
    decision = asyncio.run(service.decide(req(allow_input(context={"fail": True})), CALLER))
    assert decision.effect is Effect.DENY and decision.fail_safe
    assert [v.principle for v in decision.violations] == ["fail_safe"]
    assert not parts["cache"].entries
    assert parts["escalator"].durable == [(decision.decision_id, "fail_safe")]
    assert decision.escalation_id == "esc-1"


def test_full_audit_journal_denies_with_audit_unavailable() -> None:
    service, parts = make(audit=FakeAudit(full=True))
    decision = asyncio.run(service.decide(req(), CALLER))
    assert decision.effect is Effect.DENY
    assert [v.principle for v in decision.violations] == ["audit_unavailable"]
    assert parts["telemetry"].refusals == 1


def test_escalate_carries_escalation_id() -> None:
    service, _ = make()
    decision = asyncio.run(
        service.decide(req(allow_input(action={"type": "fund_transfer"})), CALLER)
    )
    assert decision.effect is Effect.ESCALATE and decision.escalation_id


def test_batch_keeps_order_and_audits_each_item() -> None:
    service, parts = make()
    docs = [allow_input(tenant_id="t1" if i % 2 else "t2") for i in range(10)]
    decisions = asyncio.run(
        service.decide_batch(
            [req(d, rid=str(i)) for i, d in enumerate(docs)], CALLER, deadline_s=None
        )
    )
    assert [d.request_id for d in decisions] == [str(i) for i in range(10)]
    assert [d.effect for d in decisions] == [
        Effect.ALLOW if i % 2 else Effect.DENY for i in range(10)
    ]
    kinds = [kind(e) for e in parts["audit"].entries]
    # Each critical DENY (tenant isolation) is preceded by the opening of its escalation
    # (PostgreSQL counts decisions into escalations it already holds).
    assert kinds.count("decision") == 10 and kinds.count("escalation.opened") == 5
    assert kinds[:3] == ["escalation.opened", "decision", "decision"]
    assert [d for d in decisions if d.escalation_id] == decisions[0::2]


def test_escalation_opens_in_the_same_durable_write_as_its_decision() -> None:
    service, parts = make()
    decision = asyncio.run(
        service.decide(req(allow_input(action={"type": "fund_transfer"})), CALLER)
    )
    opening, decided = parts["audit"].entries
    assert isinstance(decided, AuditEntry) and isinstance(opening, EventEntry)
    assert decided.decision == decision and decision.escalation_id == "esc-1"
    assert kind(opening) == "escalation.opened" and opened_id(opening) == "esc-1"
    assert parts["escalator"].durable == [(decision.decision_id, "high_impact_action")]


def test_wrong_hash_opens_an_incident_keyed_by_caller() -> None:
    service, parts = make()
    for _ in range(2):
        with pytest.raises(ConstitutionMismatch):
            asyncio.run(service.decide(req(h="bad"), CALLER))
    key = ("constitution_mismatch", "constitution_mismatch:svc-a")
    assert parts["escalator"].incidents == [key, key]  # the escalator keeps one per key
    assert not parts["audit"].entries


def test_refused_audit_carries_the_audit_unavailable_incident() -> None:
    service, parts = make(audit=FakeAudit(full=True))
    decision = asyncio.run(
        service.decide(req(allow_input(action={"type": "fund_transfer"})), CALLER)
    )
    assert [v.principle for v in decision.violations] == ["audit_unavailable"]
    assert decision.escalation_id == "incident-1"
    assert parts["escalator"].incidents == [("audit_unavailable", "audit_unavailable")]
    assert parts["escalator"].durable == []  # the opening was never durable


def test_batch_answers_what_the_cache_holds_and_fills_it() -> None:
    service, parts = make()
    warm = asyncio.run(service.decide(req(allow_input(), rid="single"), CALLER))
    other = allow_input(resource={"type": "document", "id": "d-2", "tenant_id": "t1"})
    batch = [req(allow_input(), rid="a"), req(other, rid="b"), req(other, rid="c")]
    calls = parts["engine"].calls
    decisions = asyncio.run(service.decide_batch(batch, CALLER, deadline_s=None))
    assert not warm.cached and [d.cached for d in decisions] == [True, False, False]
    assert parts["engine"].calls == calls + 2  # the two misses, evaluated in the batch
    again = asyncio.run(service.decide_batch(batch, CALLER, deadline_s=None))
    assert [d.cached for d in again] == [True, True, True]
    assert parts["engine"].calls == calls + 2
    audited = [e for e in parts["audit"].entries if e.kind == "decision"]
    assert [e.decision.cached for e in audited] == [False, True, False, False, True, True, True]


def test_batch_never_caches_a_fail_safe_result() -> None:
    service, parts = make()
    failing = req(allow_input(context={"fail": True}))
    first = asyncio.run(service.decide_batch([failing, failing], CALLER, deadline_s=None))
    second = asyncio.run(service.decide_batch([failing], CALLER, deadline_s=None))
    assert all(d.fail_safe and not d.cached for d in [*first, *second])
    assert not parts["cache"].entries


def test_decision_ids_are_uuid7_strings() -> None:
    """new_decision_id formats by hand what str(uuid.UUID(int=...)) would write."""
    import uuid

    from acgs.domain.model import new_decision_id

    ids = [new_decision_id() for _ in range(2000)]
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert len(set(ids)) == len(ids)
