"""Typed events: each kind's payload round-trips, bad payloads are named, old records verify."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pytest
from acgs.domain import canonical, events
from acgs.domain.audit import ALTERED, GENESIS_HASH, AuditRecord, ChainChecker, StoredRecord
from acgs.domain.audit_query import EventFilter, event_kinds, stored_kinds
from acgs.domain.escalation import Approval, Escalation, State
from acgs.domain.model import Effect, Severity, Violation

T0 = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
ESC = Escalation(
    id="0b9e5f0e-4f0a-4c47-9e0c-111111111111", decision_id="0b9e5f0e-4f0a-4c47-9e0c-2",
    reason="critical_violation", severity=Severity.CRITICAL, message="other tenant",
    state=State.OPEN, requester_id="svc-a", requester_role="agent", principal_id="p1",
    tenant_id="t1", request_id="req-1", effect=Effect.DENY,
    violations=(Violation("tenant_isolation", Severity.CRITICAL, "other tenant"),),
    policy_revision="rev-1", instance_id="inst-a", constitutional_hash="c" * 16,
    required_approvals=2, created_at=T0, expires_at=T0 + dt.timedelta(hours=1),
    group_key="g1")
APPROVED = dataclasses.replace(
    ESC, state=State.APPROVED, resolved_by="alice", resolved_at=T0,
    approvals=(Approval("alice", "approver", T0, "ok", "alice@example"),))

SAMPLES: list[events.Event] = [
    events.ApprovalOf(ESC.id, ESC.decision_id, ("alice",)),
    events.EscalationOpened(ESC),
    events.IncidentOpened(dataclasses.replace(ESC, decision_id="", group_key="")),
    events.EscalationChanged.of(ESC, APPROVED, change="approved", comment="ok"),
    events.PolicyVersionCreated("rev-2", "constitution", "1.2", "tighten pii", True, 14),
    events.PolicyVersionSigned("rev-2", "constitution", "1.2", "signed after the push"),
    events.PolicyActivated("rev-2", "rev-1", 7, "go"),
    events.PolicyRolledBack("rev-1", "rev-2", 8, "shadow disagreement"),
    events.PolicyShadowStarted("rev-3", 0.25, 5, 4),
    events.PolicyShadowStopped(5),
    events.TokenCreated("tok-1", "ci", "agent", "ci@example", T0),
    events.TokenRevoked("tok-1", "ci"),
]


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_every_payload_round_trips(event: events.Event) -> None:
    data = events.encode(event)
    assert data == canonical.dumps(json.loads(data))  # canonical bytes
    assert events.decode(event.KIND, data) == event


def test_every_kind_but_the_column_kinds_has_a_payload_type() -> None:
    assert set(events.PAYLOADS) | {events.DECISION, events.EVALUATION, events.CHECKPOINT} \
        == set(events.KINDS)


@pytest.mark.parametrize(("kind", "data", "why"), [
    ("policy.frobnicated", "{}", "unknown event kind"),
    (events.TOKEN_REVOKED, "[1]", "not a JSON object"),
    (events.TOKEN_REVOKED, "{", "not JSON"),
    (events.TOKEN_REVOKED, '{"token_id": ""}', "token_id is required"),
    (events.TOKEN_REVOKED, '{"token_id": 5}', "token_id is not a string"),
    (events.TOKEN_REVOKED, '{"token_id": "t", "secret": "x"}', "unknown field"),
    (events.POLICY_ACTIVATED, '{"revision": "r", "history_seq": true}', "not an integer"),
    (events.ESCALATION_OPENED, '{"escalation": {"id": "x"}}', "does not parse"),
    (events.ESCALATION_CHANGED, json.dumps(
        {**events.EscalationChanged.of(ESC, APPROVED, change="approved").to_data(),
         "change": "reopened"}), "is not one of"),
    (events.ESCALATION_CHANGED, json.dumps(
        {**events.EscalationChanged.of(ESC, APPROVED, change="approved").to_data(),
         "resolved_at": "2026-12-03T12:00:00"}), "no time zone"),
    (events.EVALUATION, '{"x": 1}', "carries no data"),
    (events.POLICY_SHADOW_STARTED, '{"revision": "r", "sample": 2}', "fraction"),
])
def test_a_payload_that_is_not_its_kind_is_named(kind: str, data: str, why: str) -> None:
    with pytest.raises(events.EventError, match=why):
        events.decode(kind, data)


def legacy(kind: str, request_json: str = "{}") -> AuditRecord:
    return AuditRecord(
        decision_id="d1", instance_id="inst-a", seq=1, decided_at_us=1, kind=kind,
        caller_id="svc-a", caller_role="agent", request_id="req-1", tenant_id="t1",
        principal_id="p1", request_json=request_json, effect=Effect.ALLOW, violations=(),
        policy_revision="rev-1", constitutional_hash="c" * 16, cached=False, latency_us=5,
        escalation_id="", prev_hash=GENESIS_HASH)


def test_a_record_written_before_typed_events_hashes_as_it_did() -> None:
    # The hash a schema-0 record was written with (pinned): its body has no schema/data.
    record = legacy("decide").sealed(seq=1, prev_hash=GENESIS_HASH)
    assert "schema" not in record.body() and "data" not in record.body()
    # The hash the code before typed events gave this record:
    assert record.record_hash == \
        "c5ae6b5bcdbf17e1df3cde617b1bfcc580956c33f42c934cedb1e42c456540b8"
    back = AuditRecord.from_json(record.to_json())
    assert back == record and back.computed_hash() == record.record_hash
    assert events.kind_of(record.kind, record.schema) == events.DECISION


def test_schema_and_data_are_covered_by_the_hash() -> None:
    record = events.envelope(SAMPLES[5], event_id="e1", instance_id="admin", at_us=1,
                             caller_id="alice", caller_role="admin").sealed(
        seq=1, prev_hash=GENESIS_HASH)
    back = AuditRecord.from_json(record.to_json())
    assert back.schema == events.SCHEMA and back.data == events.encode(SAMPLES[5])
    assert back.computed_hash() == record.record_hash
    tampered = dataclasses.replace(back, data=back.data.replace("rev-2", "rev-9"))
    assert tampered.computed_hash() != record.record_hash
    downgraded = dataclasses.replace(back, schema=0, data="")
    assert downgraded.computed_hash() != record.record_hash


def test_a_schema_0_line_with_data_is_not_a_record() -> None:
    doc = json.loads(legacy("decide").to_json())
    doc["data"] = '{"x": 1}'
    with pytest.raises(ValueError, match="schema 0"):
        AuditRecord.from_dict(doc)


def test_data_added_to_a_schema_0_record_in_storage_or_an_export_is_altered() -> None:
    """A row of audit_decisions and an exported record are read as they are (no line to
    refuse): ``data`` a schema-0 record carries there is covered by its hash all the same,
    so whoever writes it in is named, never verified as the record's own."""
    record = legacy("decide").sealed(seq=1, prev_hash=GENESIS_HASH)
    stored = StoredRecord.of(dataclasses.replace(record, data='{"approval_of": "e9"}'))
    assert stored.computed_hash() != record.record_hash
    broken = ChainChecker().feed(stored)
    assert broken is not None and broken.reason == ALTERED
    assert ChainChecker().feed(StoredRecord.of(record)) is None


def test_a_legacy_incident_is_an_incident_opened_event() -> None:
    """An incident written before typed events (an "escalation" record opening an escalation
    of no decision) is projected as an incident.opened; ListEvents and acgs audit tail name
    it so too, and a filter for incidents finds it (it found only new ones)."""
    incident = dataclasses.replace(ESC, decision_id="", reason="audit_unavailable")
    record = legacy("escalation", canonical.dumps(
        {"escalation": {"event": "opened", "state": "open", **incident.spec()}, "input": {}}))
    assert isinstance(events.legacy_payload(record.kind, record.request_json),
                      events.IncidentOpened)
    assert events.kind_of(record.kind, 0, record.request_json) == events.INCIDENT_OPENED
    incidents = EventFilter(kinds=event_kinds([events.INCIDENT_OPENED]))
    assert "escalation" in stored_kinds(incidents.kinds) and incidents.matches(record)
    assert not EventFilter(kinds=event_kinds([events.ESCALATION_OPENED])).matches(record)


def test_envelope_fills_the_searchable_columns_from_the_payload() -> None:
    opened = events.envelope(events.EscalationOpened(ESC), event_id="e1", instance_id="i",
                             at_us=1, caller_id="svc-a", caller_role="agent")
    assert (opened.kind, opened.tenant_id, opened.principal_id, opened.escalation_id,
            opened.request_id) == (events.ESCALATION_OPENED, "t1", "p1", ESC.id, "req-1")
    assert opened.request_json == "" and opened.effect is Effect.DENY


def test_legacy_escalation_records_map_to_their_events() -> None:
    detail = {"event": "opened", **ESC.spec()}
    opened = legacy("escalation", canonical.dumps({"escalation": detail, "input": {}}))
    assert events.kind_of(opened.kind, 0, opened.request_json) == events.ESCALATION_OPENED
    payload = events.legacy_payload(opened.kind, opened.request_json)
    assert isinstance(payload, events.EscalationOpened) and payload.escalation.id == ESC.id
    changed = legacy("escalation", canonical.dumps(
        {"escalation": {"event": "approved", "id": ESC.id}, "input": {}}))
    assert events.kind_of(changed.kind, 0, changed.request_json) == events.ESCALATION_CHANGED
    assert events.legacy_payload(changed.kind, changed.request_json) is None
    approval = legacy("approval", canonical.dumps(
        {"escalation": {"event": "approved", "id": ESC.id, "decision_id": "d0",
                        "approvers": ["alice"]}}))
    assert events.legacy_payload("approval", approval.request_json) == events.ApprovalOf(
        ESC.id, "d0", ("alice",))
    with pytest.raises(events.EventError):
        events.legacy_payload("approval", "{}")
