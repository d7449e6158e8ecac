"""Translation between acgs.v1 escalation messages and domain objects."""

from __future__ import annotations

import datetime as dt

from google.protobuf import timestamp_pb2

from acgs.domain.escalation import (
    Escalation,
    EscalationEvent,
    EscalationFilter,
    State,
    Verdict,
)
from acgs.domain.model import Effect, Severity
from acgs.entrypoints import timestamps
from acgs.errors import InvalidRequest
from acgs.v1 import escalations_pb2 as pb
from acgs.v1 import governance_pb2 as gpb

_EFFECTS = {Effect.ALLOW: gpb.ALLOW, Effect.DENY: gpb.DENY, Effect.ESCALATE: gpb.ESCALATE}
_SEVERITIES = {Severity.LOW: gpb.LOW, Severity.MEDIUM: gpb.MEDIUM,
               Severity.HIGH: gpb.HIGH, Severity.CRITICAL: gpb.CRITICAL}
_STATES = {State.OPEN: pb.OPEN, State.ACKNOWLEDGED: pb.ACKNOWLEDGED, State.APPROVED: pb.APPROVED,
           State.DENIED: pb.DENIED, State.EXPIRED: pb.EXPIRED}
_STATES_FROM_PB = {v: k for k, v in _STATES.items()}
_VERDICTS: dict[int, Verdict] = {pb.VERDICT_APPROVE: Verdict.APPROVE, pb.VERDICT_DENY: Verdict.DENY}


def _ts(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def escalation_to_proto(e: Escalation) -> pb.Escalation:
    out = pb.Escalation(
        escalation_id=e.id, decision_id=e.decision_id, reason=e.reason,
        severity=_SEVERITIES[e.severity], message=e.message, state=_STATES[e.state],
        requester_id=e.requester_id, requester_role=e.requester_role,
        principal_id=e.principal_id, tenant_id=e.tenant_id, request_id=e.request_id,
        effect=_EFFECTS[e.effect],
        violations=[gpb.Violation(principle=v.principle, severity=_SEVERITIES[v.severity],
                                  message=v.message) for v in e.violations],
        policy_revision=e.policy_revision, required_approvals=e.required_approvals,
        approvals=[pb.Approval(approver_id=a.approver_id, approver_role=a.approver_role,
                               approved_at=_ts(a.approved_at), comment=a.comment,
                               approver_identity=a.approver_identity)
                   for a in e.approvals],
        created_at=_ts(e.created_at), expires_at=_ts(e.expires_at),
        acknowledged_by=e.acknowledged_by, acknowledged_at=_ts(e.acknowledged_at),
        resolved_by=e.resolved_by, resolved_at=_ts(e.resolved_at),
        resolution_comment=e.resolution_comment, approval_decision_id=e.approval_decision_id,
        instance_id=e.instance_id, constitutional_hash=e.constitutional_hash,
        last_event_seq=e.last_event_seq, count=e.count,
        last_seen_at=_ts(e.last_seen_at or e.created_at),
        requester_identity=e.requester_identity,
    )
    if e.approval_decision_id:
        out.approval.CopyFrom(gpb.Decision(
            decision_id=e.approval_decision_id, effect=gpb.ALLOW,
            policy_revision=e.policy_revision, constitutional_hash=e.constitutional_hash,
            escalation_id=e.id, request_id=e.request_id, decided_at=_ts(e.resolved_at)))
    return out


def event_to_proto(event: EscalationEvent) -> pb.EscalationEvent:
    return pb.EscalationEvent(seq=event.seq, kind=event.kind, actor_id=event.actor_id,
                              at=_ts(event.at), escalation=escalation_to_proto(event.escalation))


def filter_from_proto(r: pb.ListEscalationsRequest) -> EscalationFilter:
    """An EscalationFilter; InvalidRequest for an unknown state or a time outside years
    1-9999."""
    state = None
    if r.state:
        if r.state not in _STATES_FROM_PB:
            raise InvalidRequest(f"state {r.state} is not an EscalationState")
        state = _STATES_FROM_PB[r.state]
    return EscalationFilter(
        state=state, reason=r.reason, tenant_id=r.tenant_id,
        since=timestamps.moment(r, "since", "since"),
        until=timestamps.moment(r, "until", "until"),
    )


def verdict_from_proto(value: int) -> Verdict:
    """The verdict; InvalidRequest when it is unset or unknown."""
    if value not in _VERDICTS:
        raise InvalidRequest("verdict must be VERDICT_APPROVE or VERDICT_DENY")
    return _VERDICTS[value]
