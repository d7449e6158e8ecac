"""acgs.domain.escalation: who may resolve what, when; and required_approvals end to end."""

from __future__ import annotations

import datetime as dt

import pytest
from acgs.adapters.redis_cache import decode_result, encode_result
from acgs.adapters.regopy_engine import parse_decision
from acgs.domain import escalation as esc
from acgs.domain.escalation import Escalation, State, Verdict
from acgs.domain.model import Caller, Effect, Severity, Violation
from acgs.errors import EngineError, InvalidTransition, SelfResolution

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
ALICE, BOB, CAROL = (Caller(id=n, role="admin") for n in ("alice", "bob", "carol"))


def escalation(**kw: object) -> Escalation:
    fields: dict[str, object] = dict(
        id="e1", decision_id="d1", reason=esc.HIGH_IMPACT_ACTION, severity=Severity.HIGH,
        message="m", state=State.OPEN, requester_id="svc-a", requester_role="agent",
        principal_id="agent-7", tenant_id="t1", request_id="r1", effect=Effect.ESCALATE,
        violations=(Violation("high_impact_action", Severity.HIGH, "m"),), policy_revision="r",
        instance_id="i", constitutional_hash="h", required_approvals=2,
        created_at=NOW, expires_at=NOW + dt.timedelta(hours=1))
    fields.update(kw)
    return Escalation(**fields)  # type: ignore[arg-type]


def test_distinct_approvers_reach_required_approvals() -> None:
    e, event = esc.resolve(escalation(), by=ALICE, verdict=Verdict.APPROVE, now=NOW, comment="")
    assert (e.state, event, len(e.approvals)) == (State.OPEN, esc.APPROVAL, 1)
    same, event = esc.resolve(e, by=ALICE, verdict=Verdict.APPROVE, now=NOW, comment="")
    assert same is e and event == ""
    done, event = esc.resolve(e, by=BOB, verdict=Verdict.APPROVE, now=NOW, comment="ok")
    assert (done.state, event, done.resolved_by) == (State.APPROVED, esc.APPROVED, "bob")
    with pytest.raises(InvalidTransition):
        esc.resolve(done, by=CAROL, verdict=Verdict.DENY, now=NOW, comment="")


@pytest.mark.parametrize("own", ["svc-a", "agent-7"])
def test_nobody_resolves_their_own_action(own: str) -> None:
    for verdict in Verdict:
        with pytest.raises(SelfResolution):
            esc.resolve(escalation(), by=Caller(own, "admin"), verdict=verdict, now=NOW,
                        comment="")


def test_one_denial_denies_and_expiry_is_a_denial() -> None:
    denied, _ = esc.resolve(escalation(), by=ALICE, verdict=Verdict.DENY, now=NOW, comment="")
    assert denied.state is State.DENIED and esc.outcome_effect(denied) is Effect.DENY
    due = escalation(expires_at=NOW)
    assert due.is_due(NOW) and due.as_of(NOW).state is State.EXPIRED
    assert esc.outcome_effect(due.as_of(NOW)) is Effect.DENY
    with pytest.raises(InvalidTransition):
        esc.acknowledge(denied, by=ALICE, now=NOW)


def test_row_round_trip() -> None:
    e, _ = esc.resolve(escalation(), by=ALICE, verdict=Verdict.APPROVE, now=NOW, comment="c")
    row = {**e.spec(), "state": "open", "approvals": esc.approvals_json(e)}
    assert esc.from_row(row) == e


def test_policy_names_required_approvals() -> None:
    doc = {"effect": "ESCALATE", "required_approvals": 3,
           "violations": [{"principle": "p", "severity": "high", "message": "m"}]}
    result = parse_decision(doc, revision="r")
    assert result.required_approvals == 3
    assert decode_result(encode_result(result)) == result
    for bad in (-1, 101, "2", True, 1.5):
        with pytest.raises(EngineError):
            parse_decision({**doc, "required_approvals": bad}, revision="r")
