"""The client's typed values: what a caller builds (requests) and gets back (decisions)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import struct_pb2

from acgs_client.v1 import audit_pb2, escalations_pb2, governance_pb2

#: The principle a fail-safe DENY names (engine error, time-out, undefined decision).
FAIL_SAFE = "fail_safe"
#: Escalation states after which nothing changes any more.
FINAL_STATES = frozenset({"APPROVED", "DENIED", "EXPIRED"})

Attributes = Mapping[str, Any]


def _struct(value: Attributes | None) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    if value:
        s.update(value)
    return s


@dataclass(frozen=True)
class Principal:
    """The subject of a decision (who would act), not the caller."""

    id: str
    tenant_id: str
    roles: Sequence[str] = ()
    attributes: Attributes = field(default_factory=dict)

    def to_proto(self) -> governance_pb2.Principal:
        return governance_pb2.Principal(id=self.id, roles=list(self.roles),
                                        tenant_id=self.tenant_id,
                                        attributes=_struct(self.attributes))


@dataclass(frozen=True)
class Action:
    type: str
    attributes: Attributes = field(default_factory=dict)

    def to_proto(self) -> governance_pb2.Action:
        return governance_pb2.Action(type=self.type, attributes=_struct(self.attributes))


@dataclass(frozen=True)
class Resource:
    type: str
    id: str = ""
    tenant_id: str = ""
    attributes: Attributes = field(default_factory=dict)

    def to_proto(self) -> governance_pb2.Resource:
        return governance_pb2.Resource(type=self.type, id=self.id, tenant_id=self.tenant_id,
                                       attributes=_struct(self.attributes))


@dataclass(frozen=True)
class DecisionRequest:
    """One logical decision. ``request_id`` is its idempotency key: generated once here
    when not given, and sent unchanged on every retry, so a retried call that the server
    already decided returns the same decision instead of a second one."""

    tenant_id: str
    principal: Principal
    action: Action
    resource: Resource
    context: Attributes = field(default_factory=dict)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_proto(self, constitutional_hash: str) -> governance_pb2.DecideRequest:
        return governance_pb2.DecideRequest(
            constitutional_hash=constitutional_hash, request_id=self.request_id,
            tenant_id=self.tenant_id, principal=self.principal.to_proto(),
            action=self.action.to_proto(), resource=self.resource.to_proto(),
            context=_struct(self.context))


@dataclass(frozen=True)
class Violation:
    principle: str
    severity: str  # LOW, MEDIUM, HIGH, CRITICAL
    message: str


@dataclass(frozen=True)
class Decision:
    """The server's answer. ``allowed`` is the only thing that permits the action."""

    decision_id: str
    effect: str  # ALLOW, DENY or ESCALATE
    violations: tuple[Violation, ...]
    escalation_id: str
    policy_revision: str
    request_id: str
    cached: bool
    replayed: bool

    @property
    def allowed(self) -> bool:
        return self.effect == "ALLOW"

    @property
    def fail_safe(self) -> bool:
        """True when the server could not decide (engine error, time-out, undefined
        result) and denied to stay safe: not a verdict on the action itself."""
        return any(v.principle == FAIL_SAFE for v in self.violations)

    @classmethod
    def from_proto(cls, d: governance_pb2.Decision) -> Decision:
        return cls(
            decision_id=d.decision_id, effect=governance_pb2.Effect.Name(d.effect),
            violations=tuple(Violation(v.principle, governance_pb2.Severity.Name(v.severity),
                                       v.message) for v in d.violations),
            escalation_id=d.escalation_id, policy_revision=d.policy_revision,
            request_id=d.request_id, cached=d.cached,
            # Servers older than the idempotency key's replay flag do not send it.
            replayed=bool(getattr(d, "replayed", False)))


@dataclass(frozen=True)
class Evaluation:
    """A rule's value (``Evaluate``): ``value`` is the decoded JSON, None when undefined."""

    value: Any
    undefined: bool
    policy_revision: str
    decision_id: str


@dataclass(frozen=True)
class Escalation:
    """An escalation as the server last reported it."""

    escalation_id: str
    state: str  # OPEN, ACKNOWLEDGED, APPROVED, DENIED, EXPIRED
    reason: str
    resolved_by: str
    resolution_comment: str
    approval: Decision | None
    last_event_seq: int

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def approved(self) -> bool:
        return self.state == "APPROVED"

    @classmethod
    def from_proto(cls, e: escalations_pb2.Escalation) -> Escalation:
        return cls(
            escalation_id=e.escalation_id, state=escalations_pb2.EscalationState.Name(e.state),
            reason=e.reason, resolved_by=e.resolved_by,
            resolution_comment=e.resolution_comment,
            approval=Decision.from_proto(e.approval) if e.HasField("approval") else None,
            last_event_seq=e.last_event_seq)


@dataclass(frozen=True)
class Event:
    """One record of the audit trail (``ListEvents``): what happened, who did it, when, and
    its place in its hash chain (``instance_id``: a server, or "admin" for policy and token
    changes). ``kind`` is as the chain holds it: "decision", "token.revoked", ...; records
    written before typed events (``schema`` 0) say "decide", "evaluate", "escalation" or
    "approval". ``data`` is the typed payload ({} for a decision, whose fields are the
    record's own)."""

    event_id: str
    instance_id: str
    seq: int
    at: dt.datetime
    kind: str
    actor_id: str
    actor_role: str
    schema: int
    data_json: str
    effect: str  # a decision's; DENY for every other event
    request_id: str
    tenant_id: str
    principal_id: str
    escalation_id: str
    policy_revision: str
    record_hash: str

    @property
    def data(self) -> Mapping[str, Any]:
        """The payload decoded (the server hands it out as canonical JSON)."""
        value = json.loads(self.data_json) if self.data_json else {}
        return value if isinstance(value, dict) else {}

    @classmethod
    def from_proto(cls, r: audit_pb2.AuditRecord) -> Event:
        return cls(
            event_id=r.decision_id, instance_id=r.instance_id, seq=r.seq,
            at=r.decided_at.ToDatetime(tzinfo=dt.timezone.utc),  # noqa: UP017 (3.9+)
            kind=r.kind,
            actor_id=r.caller_id, actor_role=r.caller_role, schema=r.schema,
            data_json=r.data, effect=governance_pb2.Effect.Name(r.effect),
            request_id=r.request_id, tenant_id=r.tenant_id, principal_id=r.principal_id,
            escalation_id=r.escalation_id, policy_revision=r.policy_revision,
            record_hash=r.record_hash)


@dataclass(frozen=True)
class EventPage:
    """A page of events, oldest first. Pass ``next_page_token`` back for the next page
    (empty after the last); ``resume_token`` reads the events recorded later (follow)."""

    events: tuple[Event, ...]
    next_page_token: str
    resume_token: str

    @classmethod
    def from_proto(cls, response: audit_pb2.ListEventsResponse) -> EventPage:
        return cls(tuple(Event.from_proto(r) for r in response.events),
                   response.next_page_token, response.resume_token)


def list_events_request(*, kinds: Iterable[str], actor: str, since: dt.datetime | None,
                        until: dt.datetime | None, instance_id: str, page_size: int,
                        page_token: str) -> audit_pb2.ListEventsRequest:
    """The request of ``list_events`` (times must be timezone-aware)."""
    f = audit_pb2.EventFilter(kinds=list(kinds), actor=actor, instance_id=instance_id)
    for name, moment in (("since", since), ("until", until)):
        if moment is not None:
            if moment.tzinfo is None:
                raise ValueError(f"{name} must be timezone-aware")
            getattr(f, name).FromDatetime(moment)
    return audit_pb2.ListEventsRequest(filter=f, page_size=page_size, page_token=page_token)


def evaluation_of(response: governance_pb2.EvaluateResponse) -> Evaluation:
    value = None if response.undefined or not response.result_json else json.loads(
        response.result_json)
    return Evaluation(value=value, undefined=response.undefined,
                      policy_revision=response.policy_revision,
                      decision_id=response.decision_id)


def _principal(value: Principal | Mapping[str, Any]) -> Principal:
    if isinstance(value, Principal):
        return value
    return Principal(id=value["id"], tenant_id=value.get("tenant_id", ""),
                     roles=tuple(value.get("roles", ())),
                     attributes=value.get("attributes") or {})


def _action(value: Action | str | Mapping[str, Any]) -> Action:
    if isinstance(value, Action):
        return value
    if isinstance(value, str):
        return Action(type=value)
    return Action(type=value["type"], attributes=value.get("attributes") or {})


def _resource(value: Resource | Mapping[str, Any]) -> Resource:
    if isinstance(value, Resource):
        return value
    return Resource(type=value["type"], id=value.get("id", ""),
                    tenant_id=value.get("tenant_id", ""),
                    attributes=value.get("attributes") or {})


def decision_request(*, tenant_id: str, principal: Principal | Mapping[str, Any],
                     action: Action | str | Mapping[str, Any],
                     resource: Resource | Mapping[str, Any],
                     context: Attributes | None = None,
                     request_id: str | None = None) -> DecisionRequest:
    """A :class:`DecisionRequest` from typed values or plain dicts (an action may be just
    its type); a new ``request_id`` unless one is given."""
    extra = {"request_id": request_id} if request_id else {}
    return DecisionRequest(tenant_id=tenant_id, principal=_principal(principal),
                           action=_action(action), resource=_resource(resource),
                           context=context or {}, **extra)
