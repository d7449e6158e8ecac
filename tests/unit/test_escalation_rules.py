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


@pytest.mark.parametrize("own", [
    Caller("svc-a", "admin"),  # the requesting token itself
    Caller("acgs_1", "admin", identity="agent-7"),  # the principal, through its identity
    Caller("acgs_2", "admin", identity="svc-team@corp"),  # the requester's identity
])
def test_nobody_resolves_their_own_action(own: Caller) -> None:
    e = escalation(requester_identity="svc-team@corp")
    for verdict in Verdict:
        with pytest.raises(SelfResolution):
            esc.resolve(e, by=own, verdict=verdict, now=NOW, comment="")


@pytest.mark.parametrize("admin", [
    Caller("acgs_00000000000000b1", "admin"),  # no identity: its token id is no principal id
    Caller("acgs_00000000000000b1", "admin", identity="alice@corp"),
])
def test_a_token_id_in_the_request_body_blocks_nobody(admin: Caller) -> None:
    """An agent writing an admin's token id as principal.id does not stop that admin."""
    e = escalation(principal_id=admin.id)
    done, event = esc.resolve(e, by=admin, verdict=Verdict.DENY, now=NOW, comment="")
    assert (done.state, event) == (State.DENIED, esc.DENIED)


def test_one_identity_approves_once_whatever_the_token() -> None:
    first = Caller("acgs_a", "admin", identity="alice@corp")
    second = Caller("acgs_b", "admin", identity="alice@corp")
    e, _ = esc.resolve(escalation(), by=first, verdict=Verdict.APPROVE, now=NOW, comment="")
    same, event = esc.resolve(e, by=second, verdict=Verdict.APPROVE, now=NOW, comment="")
    assert same is e and event == "" and len(e.approvals) == 1


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
