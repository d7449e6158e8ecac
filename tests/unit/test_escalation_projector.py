"""The escalation projector's plan, without a database: what it asks for, and what it refuses.

Plain decisions (no escalation) cost no statement at all: the shipper's hot path
stays as cheap as before. A payload that does not decode, or an escalation id that
is not a UUID, is refused before anything is written.
"""

from __future__ import annotations

import dataclasses

import pytest
from acgs.adapters.projectors import ProjectionError, Statement
from acgs.adapters.projectors.escalations import EscalationProjector
from acgs.domain import events
from acgs.domain.audit import AuditRecord
from acgs.domain.model import Effect, new_decision_id

DECISION = AuditRecord(
    decision_id=new_decision_id(), instance_id="inst-a", seq=1, decided_at_us=1, kind="decision",
    caller_id="c", caller_role="agent", request_id="r", tenant_id="t", principal_id="p",
    request_json="{}", effect=Effect.ALLOW, violations=(), policy_revision="rev",
    constitutional_hash="h", cached=False, latency_us=1, escalation_id="", prev_hash="",
    schema=events.SCHEMA)


def statements(records: list[AuditRecord]) -> list[Statement]:
    plan = EscalationProjector(group_s=300).project(records)
    asked = []
    try:
        statement = next(plan)
        while True:
            asked.append(statement)
            statement = plan.send([])
    except StopIteration:
        return asked


def test_decisions_without_an_escalation_cost_no_statement() -> None:
    assert statements([dataclasses.replace(DECISION, seq=n) for n in range(1, 100)]) == []


def test_a_joined_decision_is_counted_under_the_lock() -> None:
    joined = dataclasses.replace(DECISION, escalation_id=new_decision_id())
    asked = statements([joined])
    assert "pg_advisory_xact_lock" in asked[0].sql
    assert asked[-1].sql.startswith("UPDATE escalations e SET count")


@pytest.mark.parametrize(("record", "why"), [
    (dataclasses.replace(DECISION, kind=events.ESCALATION_OPENED, data='{"escalation": 1}'),
     "does not decode"),
    (dataclasses.replace(DECISION, kind=events.ESCALATION_CHANGED, data="not json"),
     "does not decode"),
    (dataclasses.replace(DECISION, escalation_id="esc-1"), "is not a UUID"),
    (dataclasses.replace(DECISION, data='{"approval_of": ""}'), "does not decode"),
])
def test_what_cannot_be_applied_is_refused_before_any_write(record: AuditRecord,
                                                            why: str) -> None:
    plan = EscalationProjector().project([record])
    with pytest.raises(ProjectionError, match=why):
        statement = next(plan)
        while "pg_advisory_xact_lock" in statement.sql:
            statement = plan.send([])
