"""Escalations: decisions handed to humans, and the rules of their life. No I/O here.

States: ``open`` → ``acknowledged`` → ``approved`` / ``denied`` / ``expired``
(acknowledging is optional). An escalation still pending at ``expires_at``
is expired, which is a denial; ``now`` is always the database's clock, so
expiry holds across restarts of every server.

Rules every transition obeys (each function below raises, never half-applies):

* only a pending (open or acknowledged) escalation changes; anything else is
  :class:`~acgs.errors.InvalidTransition` (FAILED_PRECONDITION);
* nobody resolves the escalation of their own action (separation of powers),
  whether they approve or deny: :class:`~acgs.errors.SelfResolution`
  (PERMISSION_DENIED) when the resolver's token is the requesting caller's
  token, or the resolver's token names an identity (``acgs token create
  --identity``) that is the requesting caller's identity or the request's
  ``principal.id``. A request body's ``principal.id`` is compared with
  identities only, never with token ids: token ids and principal ids are
  different namespaces, and whatever a caller writes in its request must not
  stop a chosen admin from resolving (the old rule let an agent do that by
  writing the admin's token id there). A person is therefore held to this rule
  across all their tokens only when their tokens name their identity;
* approvals are counted per approver: the same token, or the same identity
  through another token, twice counts once;
  the escalation is approved when ``required_approvals`` distinct approvers
  agreed; a single denial denies it.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from acgs.domain.model import Caller, Decision, Effect, Severity, Violation
from acgs.errors import InvalidTransition, SelfResolution

# Why an escalation was opened.
HIGH_IMPACT_ACTION = "high_impact_action"
CRITICAL_VIOLATION = "critical_violation"
FAIL_SAFE = "fail_safe"
CONSTITUTION_MISMATCH = "constitution_mismatch"
AUDIT_UNAVAILABLE = "audit_unavailable"
ESCALATION_LIMIT = "escalation_limit"  # a caller opened too many escalations (an incident)

# Event kinds (escalation_events.kind, and the "event" of the audit records).
OPENED = "opened"
ACKNOWLEDGED = "acknowledged"
APPROVAL = "approval"  # one approval recorded, more needed
APPROVED = "approved"
DENIED = "denied"
EXPIRED = "expired"

_RANK = {Severity.LOW: 0, Severity.MEDIUM: 1, Severity.HIGH: 2, Severity.CRITICAL: 3}


class State(enum.Enum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"


PENDING = frozenset({State.OPEN, State.ACKNOWLEDGED})


class Verdict(enum.Enum):
    APPROVE = "approve"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class Approval:
    approver_id: str
    approver_role: str
    approved_at: dt.datetime
    comment: str
    approver_identity: str = ""


@dataclass(frozen=True, slots=True)
class Escalation:
    """One escalation, as the ``escalations`` table holds it."""

    id: str
    decision_id: str  # "" for an incident that answered no decision
    reason: str
    severity: Severity
    message: str
    state: State
    requester_id: str
    requester_role: str
    principal_id: str
    tenant_id: str
    request_id: str
    effect: Effect
    violations: tuple[Violation, ...]
    policy_revision: str
    instance_id: str
    constitutional_hash: str
    required_approvals: int
    created_at: dt.datetime
    expires_at: dt.datetime
    approvals: tuple[Approval, ...] = ()
    dedup_key: str = ""
    acknowledged_by: str = ""
    acknowledged_at: dt.datetime | None = None
    resolved_by: str = ""
    resolved_at: dt.datetime | None = None
    resolution_comment: str = ""
    approval_decision_id: str = ""
    last_event_seq: int = 0
    requester_identity: str = ""
    group_key: str = ""  # "" for incidents: they are deduplicated by dedup_key
    count: int = 1  # decisions that opened or joined it (grouping, see escalator)
    last_seen_at: dt.datetime | None = None

    @property
    def pending(self) -> bool:
        return self.state in PENDING

    def is_due(self, now: dt.datetime) -> bool:
        """Pending, but past ``expires_at`` (to be expired)."""
        return self.pending and now >= self.expires_at

    def as_of(self, now: dt.datetime) -> Escalation:
        """This escalation as it stands at ``now``: expired if it is due, even if not yet swept."""
        return expire(self, now=now, by="") if self.is_due(now) else self

    def spec(self) -> dict[str, Any]:
        """The opening fields as JSON values, keyed by column (an escalation.opened payload)."""
        return {
            "id": self.id, "decision_id": self.decision_id or None, "reason": self.reason,
            "severity": self.severity.value, "message": self.message,
            "requester_id": self.requester_id, "requester_role": self.requester_role,
            "principal_id": self.principal_id, "tenant_id": self.tenant_id,
            "request_id": self.request_id, "effect": self.effect.value,
            "violations": [v.as_dict() for v in self.violations],
            "policy_revision": self.policy_revision, "instance_id": self.instance_id,
            "constitutional_hash": self.constitutional_hash,
            "required_approvals": self.required_approvals, "dedup_key": self.dedup_key or None,
            "requester_identity": self.requester_identity, "group_key": self.group_key or None,
            "created_at": self.created_at.isoformat(), "expires_at": self.expires_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class EscalationEvent:
    seq: int
    kind: str
    actor_id: str
    at: dt.datetime
    escalation: Escalation


@dataclass(frozen=True, slots=True)
class EscalationFilter:
    """Empty fields match everything. ``state`` is the state as of now (due ones are expired)."""

    state: State | None = None
    reason: str = ""
    tenant_id: str = ""
    since: dt.datetime | None = None  # created_at, inclusive
    until: dt.datetime | None = None  # created_at, exclusive


@dataclass(frozen=True, slots=True)
class EscalationPage:
    escalations: list[Escalation]
    next_cursor: str  # "" after the last page


# -- opening ---------------------------------------------------------------------------------


def reason_for(decision: Decision) -> str:
    """Why ``decision`` needs a human ("" when it does not)."""
    if decision.effect is Effect.ESCALATE:
        return HIGH_IMPACT_ACTION
    if decision.fail_safe:
        return FAIL_SAFE
    if any(v.severity is Severity.CRITICAL for v in decision.violations):
        return CRITICAL_VIOLATION
    return ""


def severity_of(violations: Sequence[Violation]) -> Severity:
    """The highest severity named (high when none is)."""
    return max((v.severity for v in violations), key=_RANK.__getitem__, default=Severity.HIGH)


def subject_of(policy_input: Mapping[str, Any] | None) -> tuple[str, str]:
    """The principal id and tenant id of a decision's input ("" when absent)."""
    doc = policy_input or {}
    principal = doc.get("principal")
    principal_id = principal.get("id") if isinstance(principal, Mapping) else None
    tenant = doc.get("tenant_id")
    return (principal_id if isinstance(principal_id, str) else "",
            tenant if isinstance(tenant, str) else "")


# -- transitions -----------------------------------------------------------------------------


def acknowledge(esc: Escalation, *, by: Caller, now: dt.datetime) -> Escalation:
    """open → acknowledged; InvalidTransition otherwise."""
    if esc.state is not State.OPEN:
        raise InvalidTransition(f"escalation {esc.id} is {esc.state.value}, not open")
    return replace(esc, state=State.ACKNOWLEDGED, acknowledged_by=by.id, acknowledged_at=now)


def resolve(esc: Escalation, *, by: Caller, verdict: Verdict, now: dt.datetime,
            comment: str) -> tuple[Escalation, str]:
    """Apply ``by``'s verdict; the new escalation and its event kind ("" when nothing changed:
    an approver approving again). Raises InvalidTransition or SelfResolution (see module)."""
    if not esc.pending:
        raise InvalidTransition(f"escalation {esc.id} is already {esc.state.value}")
    if is_own(esc, by):
        raise SelfResolution(f"{by.who} may not resolve the escalation of its own action")
    if verdict is Verdict.DENY:
        return replace(esc, state=State.DENIED, resolved_by=by.id, resolved_at=now,
                       resolution_comment=comment), DENIED
    if any(_same_approver(a, by) for a in esc.approvals):
        return esc, ""  # the same approver twice counts once
    approvals = (*esc.approvals, Approval(by.id, by.role, now, comment, by.identity))
    if len(approvals) < esc.required_approvals:
        return replace(esc, approvals=approvals), APPROVAL
    return replace(esc, approvals=approvals, state=State.APPROVED, resolved_by=by.id,
                   resolved_at=now, resolution_comment=comment), APPROVED


def is_own(esc: Escalation, by: Caller) -> bool:
    """True when ``by`` is the requesting caller, or its identity is the requester's identity
    or the request's principal (see the module docstring for why token ids never meet
    principal ids)."""
    if by.id == esc.requester_id:
        return True
    return bool(by.identity) and by.identity in (esc.requester_identity, esc.principal_id)


def _same_approver(a: Approval, by: Caller) -> bool:
    return a.approver_id == by.id or (bool(by.identity) and a.approver_identity == by.identity)


def expire(esc: Escalation, *, now: dt.datetime, by: str) -> Escalation:
    """pending → expired (a denial); InvalidTransition when not pending."""
    if not esc.pending:
        raise InvalidTransition(f"escalation {esc.id} is already {esc.state.value}")
    return replace(esc, state=State.EXPIRED, resolved_by=by, resolved_at=now)


def outcome_effect(esc: Escalation) -> Effect:
    """The effect an escalation stands for now: ALLOW approved, DENY denied or expired,
    else the escalated decision's own effect."""
    if esc.state is State.APPROVED:
        return Effect.ALLOW
    if esc.state in (State.DENIED, State.EXPIRED):
        return Effect.DENY
    return esc.effect


# -- rows ------------------------------------------------------------------------------------


def from_row(row: Mapping[str, Any]) -> Escalation:
    """An escalation from its row as JSON (``to_jsonb(escalations)``); KeyError/ValueError if
    it is not one."""
    return Escalation(
        id=str(row["id"]), decision_id=str(row.get("decision_id") or ""),
        reason=row["reason"], severity=Severity(row["severity"]), message=row["message"],
        state=State(row["state"]), requester_id=row["requester_id"],
        requester_role=row["requester_role"], principal_id=row["principal_id"],
        tenant_id=row["tenant_id"], request_id=row["request_id"], effect=Effect(row["effect"]),
        violations=tuple(Violation(v["principle"], Severity(v["severity"]), v["message"])
                         for v in row["violations"]),
        policy_revision=row["policy_revision"], instance_id=row["instance_id"],
        constitutional_hash=row["constitutional_hash"],
        required_approvals=int(row["required_approvals"]),
        created_at=_time(row["created_at"]), expires_at=_time(row["expires_at"]),
        approvals=tuple(Approval(a["approver_id"], a["approver_role"], _time(a["approved_at"]),
                                 a["comment"], a.get("approver_identity") or "")
                        for a in row.get("approvals") or ()),
        dedup_key=row.get("dedup_key") or "",
        acknowledged_by=row.get("acknowledged_by") or "",
        acknowledged_at=_maybe_time(row.get("acknowledged_at")),
        resolved_by=row.get("resolved_by") or "", resolved_at=_maybe_time(row.get("resolved_at")),
        resolution_comment=row.get("resolution_comment") or "",
        approval_decision_id=str(row.get("approval_decision_id") or ""),
        last_event_seq=int(row.get("last_event_seq") or 0),
        requester_identity=row.get("requester_identity") or "",
        group_key=row.get("group_key") or "", count=int(row.get("count") or 1),
        last_seen_at=_maybe_time(row.get("last_seen_at")),
    )


def approvals_json(esc: Escalation) -> list[dict[str, str]]:
    return [{"approver_id": a.approver_id, "approver_role": a.approver_role,
             "approved_at": a.approved_at.isoformat(), "comment": a.comment,
             "approver_identity": a.approver_identity}
            for a in esc.approvals]


def _time(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromisoformat(str(value))


def _maybe_time(value: Any) -> dt.datetime | None:
    return None if value is None else _time(value)
