"""``acgs audit tail``'s lines: every event kind summarised, a bad payload said, --since read."""

from __future__ import annotations

import datetime as dt

import pytest
from acgs.domain import events
from acgs.entrypoints import audit_events_cli as cli
from acgs.entrypoints.audit_servicer import record_to_proto

from tests.unit.test_events import ESC, SAMPLES, T0


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_every_event_kind_has_a_line_naming_what_and_who(event: events.Event) -> None:
    record = events.envelope(event, event_id="00000000-0000-7000-8000-000000000001",
                             instance_id="admin", at_us=1_700_000_000_000_000,
                             caller_id="alice@host", caller_role="admin")
    line = cli.line(record_to_proto(record))
    assert f"admin#0 {event.KIND}" in line and "alice@host/admin" in line
    words = {events.TokenCreated: "tok-1", events.TokenRevoked: "tok-1",
             events.PolicyVersionCreated: "rev-2", events.PolicyVersionSigned: "rev-2",
             events.PolicyActivated: "rev-2",
             events.PolicyRolledBack: "rev-1", events.PolicyShadowStarted: "rev-3",
             events.PolicyShadowStopped: "generation=5"}
    assert words.get(type(event), ESC.id) in line
    assert "undecodable" not in line


def test_a_payload_that_does_not_decode_is_said_not_raised() -> None:
    record = events.envelope(SAMPLES[-1], event_id="e1", instance_id="admin", at_us=1,
                             caller_id="a", caller_role="admin")
    proto = record_to_proto(record)
    proto.data = '{"token_id": 5}'
    assert "undecodable data (token_id is not a string)" in cli.line(proto)


def test_since_is_a_time_or_a_duration_ago() -> None:
    assert cli.since("30m", now=T0) == T0 - dt.timedelta(minutes=30)
    assert cli.since("2026-12-03T12:00:00") == T0
    assert cli.since("2026-12-03T13:00:00+01:00") == T0
    with pytest.raises(ValueError, match="neither a time"):
        cli.since("yesterday")
    assert cli.kinds(["token.created, token.revoked", "policy.activated"]) == [
        "token.created", "token.revoked", "policy.activated"]


def test_after_seq_is_a_place_in_one_chain() -> None:
    from acgs.entrypoints.audit_servicer import event_filter_from_proto
    from acgs.errors import InvalidRequest
    from acgs.v1 import audit_pb2

    assert event_filter_from_proto(
        audit_pb2.EventFilter(instance_id="admin", after_seq=7)).after_seq == 7
    with pytest.raises(InvalidRequest, match=r"needs filter\.instance_id"):
        event_filter_from_proto(audit_pb2.EventFilter(after_seq=7))
    with pytest.raises(InvalidRequest, match="must not be negative"):
        event_filter_from_proto(audit_pb2.EventFilter(instance_id="admin", after_seq=-1))
