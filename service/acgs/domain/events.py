"""The closed set of events the audit trail records: every change of the system is one.

An event is one record of a hash chain (:class:`acgs.domain.audit.AuditRecord`):
the envelope (``decision_id`` as the event id, ``instance_id`` and ``seq``,
``decided_at_us``, ``kind``, the actor as ``caller_id``/``caller_role``, the
chain hashes) is common to every kind; ``schema`` is the version of the typed
payload and ``data`` its canonical JSON. Decisions and evaluations keep their
payload in the record's own columns (``request_json``, ``effect``, ...), so
their ``data`` is empty; an approval's ALLOW is a decision whose ``data``
names the escalation it approved.

Records written before typed events (``schema`` 0: kinds "decide",
"evaluate", "escalation", "approval") stay readable and verifiable;
:func:`kind_of` names the event each of them is.

Payloads are validated strictly when decoded (:func:`decode` raises
:class:`EventError`): a projector never acts on a payload it does not fully
understand. Nothing here does I/O.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from acgs.domain import canonical
from acgs.domain import escalation as esc
from acgs.domain.audit import AuditRecord
from acgs.domain.escalation import Approval, Escalation, State
from acgs.domain.model import Effect

SCHEMA = 1  # the payload version this code writes

ADMIN_CHAIN = "admin"
"""The chain PostgreSQL holds for admin events (acgs.adapters.pg_event_chain): the
``instance_id`` of its records, so no server may take it as its own."""

DECISION = "decision"  # Decide and each DecideBatch item; an approval's ALLOW
EVALUATION = "evaluation"  # Evaluate
ESCALATION_OPENED = "escalation.opened"
ESCALATION_CHANGED = "escalation.changed"  # acknowledged, approval, approved, denied, expired
INCIDENT_OPENED = "incident.opened"  # an escalation that answers no decision
POLICY_VERSION_CREATED = "policy.version_created"
POLICY_VERSION_SIGNED = "policy.version_signed"  # a signature attached to an unsigned version
POLICY_ACTIVATED = "policy.activated"
POLICY_ROLLED_BACK = "policy.rolled_back"
POLICY_SHADOW_STARTED = "policy.shadow_started"  # a candidate shadowed on live decisions
POLICY_SHADOW_STOPPED = "policy.shadow_stopped"
TOKEN_CREATED = "token.created"
TOKEN_REVOKED = "token.revoked"
CHECKPOINT = "checkpoint"  # a signed checkpoint of the chain (acgs.domain.checkpoint)

KINDS = (DECISION, EVALUATION, ESCALATION_OPENED, ESCALATION_CHANGED, INCIDENT_OPENED,
         POLICY_VERSION_CREATED, POLICY_VERSION_SIGNED, POLICY_ACTIVATED, POLICY_ROLLED_BACK,
         POLICY_SHADOW_STARTED, POLICY_SHADOW_STOPPED, TOKEN_CREATED, TOKEN_REVOKED, CHECKPOINT)
DECISION_KINDS = frozenset({DECISION, EVALUATION, "decide", "evaluate", "approval"})
"""Kinds (new and legacy) whose records are decisions: what the decision queries read."""

# Kinds of records written before typed events (schema 0); "escalation" is opened (an
# incident when it names no decision) or changed by its request's ``escalation.event``.
LEGACY_KINDS = {"decide": DECISION, "evaluate": EVALUATION, "approval": DECISION}


class EventError(ValueError):
    """A payload that is not the event its kind names (what, and where)."""


@dataclass(frozen=True, slots=True)
class Event:
    """Base of the typed payloads; ``KIND`` names the event."""

    KIND: ClassVar[str] = ""

    def to_data(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_data(cls, doc: Mapping[str, Any]) -> Event:
        raise NotImplementedError

    # Columns of the envelope a reader filters on; each kind fills those it has.
    @property
    def subject(self) -> Subject:
        return Subject()


@dataclass(frozen=True, slots=True)
class Subject:
    """The envelope's searchable columns an event fills (empty when it has none)."""

    tenant_id: str = ""
    principal_id: str = ""
    request_id: str = ""
    escalation_id: str = ""
    policy_revision: str = ""


# -- decisions -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApprovalOf(Event):
    """The ``data`` of a decision that an approval produced: the escalated request, allowed."""

    KIND: ClassVar[str] = DECISION
    escalation_id: str
    escalated_decision_id: str
    approvers: tuple[str, ...]

    def to_data(self) -> dict[str, Any]:
        return {"approval_of": self.escalation_id,
                "escalated_decision_id": self.escalated_decision_id,
                "approvers": list(self.approvers)}

    @classmethod
    def from_data(cls, doc: Mapping[str, Any]) -> ApprovalOf:
        _only(doc, {"approval_of", "escalated_decision_id", "approvers"})
        return cls(_s(doc, "approval_of", required=True), _s(doc, "escalated_decision_id"),
                   tuple(_strs(doc, "approvers")))


# -- escalations -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EscalationOpened(Event):
    """An escalation opened for a decision: every field of the new row."""

    KIND: ClassVar[str] = ESCALATION_OPENED
    escalation: Escalation

    def to_data(self) -> dict[str, Any]:
        return {"escalation": {**self.escalation.spec(), "state": State.OPEN.value}}

    @classmethod
    def from_data(cls, doc: Mapping[str, Any]) -> EscalationOpened:
        _only(doc, {"escalation"})
        return cls(_escalation(doc.get("escalation")))

    @property
    def subject(self) -> Subject:
        e = self.escalation
        return Subject(e.tenant_id, e.principal_id, e.request_id, e.id, e.policy_revision)


@dataclass(frozen=True, slots=True)
class IncidentOpened(EscalationOpened):
    """An escalation that answers no decision (another constitution, a refusing journal)."""

    KIND: ClassVar[str] = INCIDENT_OPENED


CHANGES = frozenset({esc.ACKNOWLEDGED, esc.APPROVAL, esc.APPROVED, esc.DENIED, esc.EXPIRED})


@dataclass(frozen=True, slots=True)
class EscalationChanged(Event):
    """A change of a pending escalation: ``change`` (acknowledged, approval, approved,
    denied, expired), the state it was made from and the changeable fields after it."""

    KIND: ClassVar[str] = ESCALATION_CHANGED
    escalation_id: str
    change: str
    from_state: State
    state: State
    approvals: tuple[Approval, ...]
    acknowledged_by: str
    acknowledged_at: dt.datetime | None
    resolved_by: str
    resolved_at: dt.datetime | None
    resolution_comment: str
    approval_decision_id: str
    comment: str
    tenant_id: str = ""
    principal_id: str = ""

    @classmethod
    def of(cls, before: Escalation, after: Escalation, *, change: str,
           comment: str = "") -> EscalationChanged:
        """The event that turns ``before`` into ``after``."""
        return cls(escalation_id=after.id, change=change, from_state=before.state,
                   state=after.state, approvals=after.approvals,
                   acknowledged_by=after.acknowledged_by, acknowledged_at=after.acknowledged_at,
                   resolved_by=after.resolved_by, resolved_at=after.resolved_at,
                   resolution_comment=after.resolution_comment,
                   approval_decision_id=after.approval_decision_id, comment=comment,
                   tenant_id=after.tenant_id, principal_id=after.principal_id)

    def to_data(self) -> dict[str, Any]:
        return {
            "escalation_id": self.escalation_id, "change": self.change,
            "from_state": self.from_state.value, "state": self.state.value,
            "approvals": [{"approver_id": a.approver_id, "approver_role": a.approver_role,
                           "approved_at": a.approved_at.isoformat(), "comment": a.comment,
                           "approver_identity": a.approver_identity} for a in self.approvals],
            "acknowledged_by": self.acknowledged_by,
            "acknowledged_at": _iso(self.acknowledged_at),
            "resolved_by": self.resolved_by, "resolved_at": _iso(self.resolved_at),
            "resolution_comment": self.resolution_comment,
            "approval_decision_id": self.approval_decision_id, "comment": self.comment,
            "tenant_id": self.tenant_id, "principal_id": self.principal_id,
        }

    @classmethod
    def from_data(cls, doc: Mapping[str, Any]) -> EscalationChanged:
        _only(doc, {"escalation_id", "change", "from_state", "state", "approvals",
                    "acknowledged_by", "acknowledged_at", "resolved_by", "resolved_at",
                    "resolution_comment", "approval_decision_id", "comment", "tenant_id",
                    "principal_id"})
        change = _s(doc, "change", required=True)
        if change not in CHANGES:
            raise EventError(f"change {change!r} is not one of {sorted(CHANGES)}")
        approvals = doc.get("approvals", [])
        if not isinstance(approvals, list):
            raise EventError("approvals is not a list")
        try:
            parsed = tuple(Approval(_s(a, "approver_id", required=True),
                                    _s(a, "approver_role", required=True),
                                    _time(a.get("approved_at"), "approved_at"),
                                    _s(a, "comment"), _s(a, "approver_identity"))
                           for a in approvals)
        except AttributeError as err:
            raise EventError("an approval is not an object") from err
        return cls(
            escalation_id=_s(doc, "escalation_id", required=True), change=change,
            from_state=_state(doc, "from_state"), state=_state(doc, "state"), approvals=parsed,
            acknowledged_by=_s(doc, "acknowledged_by"),
            acknowledged_at=_maybe_time(doc.get("acknowledged_at"), "acknowledged_at"),
            resolved_by=_s(doc, "resolved_by"),
            resolved_at=_maybe_time(doc.get("resolved_at"), "resolved_at"),
            resolution_comment=_s(doc, "resolution_comment"),
            approval_decision_id=_s(doc, "approval_decision_id"), comment=_s(doc, "comment"),
            tenant_id=_s(doc, "tenant_id"), principal_id=_s(doc, "principal_id"))

    @property
    def subject(self) -> Subject:
        return Subject(self.tenant_id, self.principal_id, "", self.escalation_id)


# -- policies --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicyVersionCreated(Event):
    """A policy version stored (checked, signature verified where keys are trusted)."""

    KIND: ClassVar[str] = POLICY_VERSION_CREATED
    revision: str
    name: str
    version: str
    message: str
    signed: bool
    tests_passed: int

    def to_data(self) -> dict[str, Any]:
        return {"revision": self.revision, "name": self.name, "version": self.version,
                "message": self.message, "signed": self.signed,
                "tests_passed": self.tests_passed}

    @classmethod
    def from_data(cls, doc: Mapping[str, Any]) -> PolicyVersionCreated:
        _only(doc, {"revision", "name", "version", "message", "signed", "tests_passed"})
        return cls(_s(doc, "revision", required=True), _s(doc, "name"), _s(doc, "version"),
                   _s(doc, "message"), _b(doc, "signed"), _i(doc, "tests_passed"))

    @property
    def subject(self) -> Subject:
        return Subject(policy_revision=self.revision)


@dataclass(frozen=True, slots=True)
class PolicyVersionSigned(Event):
    """A signature attached to a stored version (the same content pushed again, signed, or
    seeded signed): one stored unsigned, or, where keys are trusted, one whose signature no
    trusted key verifies. The content and its revision are unchanged."""

    KIND: ClassVar[str] = POLICY_VERSION_SIGNED
    revision: str
    name: str
    version: str
    message: str

    def to_data(self) -> dict[str, Any]:
        return {"revision": self.revision, "name": self.name, "version": self.version,
                "message": self.message}

    @classmethod
    def from_data(cls, doc: Mapping[str, Any]) -> PolicyVersionSigned:
        _only(doc, {"revision", "name", "version", "message"})
        return cls(_s(doc, "revision", required=True), _s(doc, "name"), _s(doc, "version"),
                   _s(doc, "message"))

    @property
    def subject(self) -> Subject:
        return Subject(policy_revision=self.revision)


@dataclass(frozen=True, slots=True)
class PolicyActivated(Event):
    """``revision`` made the fleet's desired policy, replacing ``previous_revision``;
    ``history_seq`` is its place in the activation history."""

    KIND: ClassVar[str] = POLICY_ACTIVATED
    revision: str
    previous_revision: str
    history_seq: int
    message: str = ""

    def to_data(self) -> dict[str, Any]:
        return {"revision": self.revision, "previous_revision": self.previous_revision,
                "history_seq": self.history_seq, "message": self.message}

    @classmethod
    def from_data(cls, doc: Mapping[str, Any]) -> PolicyActivated:
        _only(doc, {"revision", "previous_revision", "history_seq", "message"})
        return cls(_s(doc, "revision", required=True), _s(doc, "previous_revision"),
                   _i(doc, "history_seq"), _s(doc, "message"))

    @property
    def subject(self) -> Subject:
        return Subject(policy_revision=self.revision)


@dataclass(frozen=True, slots=True)
class PolicyRolledBack(Event):
    """The activation of ``rolled_back_revision`` undone: ``revision`` is desired again."""

    KIND: ClassVar[str] = POLICY_ROLLED_BACK
    revision: str
    rolled_back_revision: str
    history_seq: int
    reason: str = ""  # e.g. the shadow comparison that triggered an automatic rollback

    def to_data(self) -> dict[str, Any]:
        return {"revision": self.revision, "rolled_back_revision": self.rolled_back_revision,
                "history_seq": self.history_seq, "reason": self.reason}

    @classmethod
    def from_data(cls, doc: Mapping[str, Any]) -> PolicyRolledBack:
        _only(doc, {"revision", "rolled_back_revision", "history_seq", "reason"})
        return cls(_s(doc, "revision", required=True),
                   _s(doc, "rolled_back_revision", required=True), _i(doc, "history_seq"),
                   _s(doc, "reason"))

    @property
    def subject(self) -> Subject:
        return Subject(policy_revision=self.revision)


@dataclass(frozen=True, slots=True)
class PolicyShadowStarted(Event):
    """The fleet shadows ``revision`` on a ``sample`` of live decisions (plan ``generation``)."""

    KIND: ClassVar[str] = POLICY_SHADOW_STARTED
    revision: str
    sample: float
    examples: int
    generation: int

    def to_data(self) -> dict[str, Any]:
        return {"revision": self.revision, "sample": self.sample, "examples": self.examples,
                "generation": self.generation}

    @classmethod
    def from_data(cls, doc: Mapping[str, Any]) -> PolicyShadowStarted:
        _only(doc, {"revision", "sample", "examples", "generation"})
        sample = doc.get("sample")
        if isinstance(sample, bool) or not isinstance(sample, (int, float)) \
                or not 0 < sample <= 1:
            raise EventError("sample is not a fraction in (0, 1]")
        return cls(_s(doc, "revision", required=True), float(sample), _i(doc, "examples"),
                   _i(doc, "generation"))

    @property
    def subject(self) -> Subject:
        return Subject(policy_revision=self.revision)


@dataclass(frozen=True, slots=True)
class PolicyShadowStopped(Event):
    """The fleet stopped shadowing (plan ``generation`` has no candidate)."""

    KIND: ClassVar[str] = POLICY_SHADOW_STOPPED
    generation: int

    def to_data(self) -> dict[str, Any]:
        return {"generation": self.generation}

    @classmethod
    def from_data(cls, doc: Mapping[str, Any]) -> PolicyShadowStopped:
        _only(doc, {"generation"})
        return cls(_i(doc, "generation"))


# -- tokens ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenCreated(Event):
    """A bearer token issued (never its secret, nor anything derived from it)."""

    KIND: ClassVar[str] = TOKEN_CREATED
    token_id: str
    name: str
    role: str
    identity: str
    expires_at: dt.datetime | None

    def to_data(self) -> dict[str, Any]:
        return {"token_id": self.token_id, "name": self.name, "role": self.role,
                "identity": self.identity, "expires_at": _iso(self.expires_at)}

    @classmethod
    def from_data(cls, doc: Mapping[str, Any]) -> TokenCreated:
        _only(doc, {"token_id", "name", "role", "identity", "expires_at"})
        return cls(_s(doc, "token_id", required=True), _s(doc, "name"),
                   _s(doc, "role", required=True), _s(doc, "identity"),
                   _maybe_time(doc.get("expires_at"), "expires_at"))

    @property
    def subject(self) -> Subject:
        return Subject(principal_id=self.identity or self.token_id)


@dataclass(frozen=True, slots=True)
class TokenRevoked(Event):
    KIND: ClassVar[str] = TOKEN_REVOKED
    token_id: str
    name: str = ""

    def to_data(self) -> dict[str, Any]:
        return {"token_id": self.token_id, "name": self.name}

    @classmethod
    def from_data(cls, doc: Mapping[str, Any]) -> TokenRevoked:
        _only(doc, {"token_id", "name"})
        return cls(_s(doc, "token_id", required=True), _s(doc, "name"))

    @property
    def subject(self) -> Subject:
        return Subject(principal_id=self.token_id)


PAYLOADS: dict[str, type[Event]] = {
    cls.KIND: cls for cls in (
        EscalationOpened, IncidentOpened, EscalationChanged, PolicyVersionCreated,
        PolicyVersionSigned, PolicyActivated, PolicyRolledBack, PolicyShadowStarted,
        PolicyShadowStopped, TokenCreated, TokenRevoked)
}
"""The payload type of each kind whose ``data`` is a payload (decisions: only approvals)."""


def encode(event: Event) -> str:
    """The canonical JSON ``data`` of ``event``."""
    return canonical.dumps(event.to_data())


def decode(kind: str, data: str) -> Event | None:
    """The typed payload of a schema-1 record of ``kind``; None for a kind whose payload is
    its record's columns (a decision without ``data``, an evaluation, a checkpoint).

    Raises EventError when ``kind`` is unknown or ``data`` is not its payload."""
    if kind not in KINDS:
        raise EventError(f"unknown event kind {kind!r}")
    if kind == DECISION:
        return ApprovalOf.from_data(_object(data)) if data else None
    cls = PAYLOADS.get(kind)
    if cls is None:
        if data:
            raise EventError(f"a {kind} event carries no data")
        return None
    return cls.from_data(_object(data))


def envelope(event: Event, *, event_id: str, instance_id: str, at_us: int, caller_id: str,
             caller_role: str, constitutional_hash: str = "") -> AuditRecord:
    """The (unsealed) record of ``event``: its envelope and its payload as ``data``.

    The columns a decision would fill from its request are filled from the event's
    :class:`Subject`; ``effect`` is a decision's column, DENY for every other event."""
    subject = event.subject
    return AuditRecord(
        decision_id=event_id, instance_id=instance_id, seq=0, decided_at_us=at_us,
        kind=event.KIND, caller_id=caller_id, caller_role=caller_role,
        request_id=subject.request_id, tenant_id=subject.tenant_id,
        principal_id=subject.principal_id, request_json="", effect=Effect.DENY, violations=(),
        policy_revision=subject.policy_revision, constitutional_hash=constitutional_hash,
        cached=False, latency_us=0, escalation_id=subject.escalation_id, prev_hash="",
        schema=SCHEMA, data=encode(event))


def legacy_payload(kind: str, request_json: str) -> Event | None:
    """The payload of a record written before typed events (schema 0), where it has one
    this code acts on: an escalation's opening (``request_json``'s ``escalation``), an
    approval's decision. A legacy escalation change was applied by the server that made
    it, so it has none here. Raises EventError for an opening or approval that does not
    parse."""
    if kind not in ("escalation", "approval"):
        return None
    try:
        detail = json.loads(request_json)["escalation"]
        event = detail["event"]
    except (ValueError, KeyError, TypeError) as err:
        raise EventError(f"a legacy {kind} record without its escalation: {err!r}") from err
    if kind == "approval":
        return ApprovalOf(_s(detail, "id", required=True), _s(detail, "decision_id"),
                          tuple(_strs(detail, "approvers")))
    if event != esc.OPENED:
        return None
    spec = {k: v for k, v in detail.items() if k not in ("event",)}
    spec["state"] = State.OPEN.value
    e = _escalation(spec)
    return EscalationOpened(e) if e.decision_id else IncidentOpened(e)


def kind_of(kind: str, schema: int, request_json: str = "") -> str:
    """The event kind of a record (legacy records included: see :data:`LEGACY_KINDS`)."""
    if schema >= 1:
        return kind
    if kind == "escalation":
        try:
            detail = json.loads(request_json)["escalation"]
            event = detail["event"]
        except (ValueError, KeyError, TypeError):
            return ESCALATION_CHANGED
        if event != esc.OPENED:
            return ESCALATION_CHANGED
        # As legacy_payload tells them apart: an opening of no decision is an incident.
        return ESCALATION_OPENED if detail.get("decision_id") else INCIDENT_OPENED
    return LEGACY_KINDS.get(kind, kind)


# -- strict field readers --------------------------------------------------------------------


def _object(data: str) -> Mapping[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError as err:
        raise EventError(f"data is not JSON: {err}") from err
    if not isinstance(doc, dict):
        raise EventError("data is not a JSON object")
    return doc


def _only(doc: Mapping[str, Any], allowed: set[str]) -> None:
    extra = set(doc) - allowed
    if extra:
        raise EventError(f"unknown field(s) {sorted(extra)}")


def _s(doc: Mapping[str, Any], key: str, *, required: bool = False) -> str:
    value = doc.get(key, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise EventError(f"{key} is not a string")
    if required and not value:
        raise EventError(f"{key} is required")
    return value


def _b(doc: Mapping[str, Any], key: str) -> bool:
    value = doc.get(key, False)
    if not isinstance(value, bool):
        raise EventError(f"{key} is not a boolean")
    return value


def _i(doc: Mapping[str, Any], key: str) -> int:
    value = doc.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool):
        raise EventError(f"{key} is not an integer")
    return value


def _strs(doc: Mapping[str, Any], key: str) -> list[str]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise EventError(f"{key} is not a list of strings")
    return value


def _state(doc: Mapping[str, Any], key: str) -> State:
    try:
        return State(_s(doc, key, required=True))
    except ValueError as err:
        raise EventError(f"{key} is not an escalation state") from err


def _time(value: Any, key: str) -> dt.datetime:
    if not isinstance(value, str):
        raise EventError(f"{key} is not a timestamp")
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError as err:
        raise EventError(f"{key} is not an ISO 8601 timestamp") from err
    if moment.tzinfo is None:
        raise EventError(f"{key} has no time zone")
    return moment


def _maybe_time(value: Any, key: str) -> dt.datetime | None:
    return None if value is None or value == "" else _time(value, key)


def _iso(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _escalation(doc: Any) -> Escalation:
    if not isinstance(doc, dict):
        raise EventError("escalation is not an object")
    try:
        e = esc.from_row(doc)
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        raise EventError(f"escalation does not parse: {type(err).__name__}: {err}") from err
    if e.state is not State.OPEN:
        raise EventError("an opened escalation must be open")
    for moment in (e.created_at, e.expires_at):
        if moment.tzinfo is None:
            raise EventError("escalation timestamps need a time zone")
    return e
