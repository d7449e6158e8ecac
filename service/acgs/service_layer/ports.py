"""The ports the service layer consumes. One adapter module per port and technology.

Every port is a small Protocol; unit tests pass fakes (tests/fakes.py), the
composition root (:mod:`acgs.lifecycle`) passes the real adapters.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from acgs.domain.events import Event
from acgs.domain.model import Caller, Decision, EngineResult, Violation, new_decision_id


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    """Identity of the policy an engine evaluates: its revision and its data's revision."""

    revision: str
    data_revision: str


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The value of one rule, as JSON text; ``undefined`` when the rule has no value."""

    result_json: str
    undefined: bool
    policy_revision: str


class PolicyEngine(Protocol):
    """Evaluates the active constitution. Implementations never block the event loop.

    ``decide`` raises :class:`~acgs.errors.EngineError` (``EngineTimeout`` after
    ``timeout_s``) when it cannot produce a trustworthy result; the service turns
    that into a fail-safe DENY. ``evaluate`` raises ``UnknownRule`` for a path
    that names no rule.
    """

    @property
    def policy(self) -> PolicyInfo: ...

    async def decide(
        self, policy_input: Mapping[str, Any], *, timeout_s: float
    ) -> EngineResult: ...

    async def decide_many(
        self, inputs: Sequence[Mapping[str, Any]], *, timeout_s: float
    ) -> list[EngineResult | Exception]: ...

    async def evaluate(self, path: str, input_value: Any, *, timeout_s: float) -> Evaluation: ...


class DecisionCache(Protocol):
    """Caches engine results by key. Failures are misses, never errors."""

    async def get(self, key: str) -> EngineResult | None: ...

    async def put(self, key: str, result: EngineResult) -> None: ...


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """What the audit trail keeps of one decision or evaluation (or a checkpoint)."""

    kind: str  # acgs.domain.events: DECISION, EVALUATION or CHECKPOINT
    decision: Decision
    caller: Caller
    request_json: str  # canonical JSON of the request (masked where configured)
    # The document request_json encodes, when the caller has it at hand: the sink reads
    # tenant and principal from it instead of parsing request_json again. Never mutated.
    request_doc: Mapping[str, Any] | None = None
    data: str = ""  # the typed payload of a decision that has one (events.ApprovalOf)


@dataclass(frozen=True, slots=True)
class EventEntry:
    """What the audit trail keeps of an event that is not a decision (acgs.domain.events):
    ``event`` done by ``caller``, journaled before it takes effect or is answered."""

    event: Event
    caller: Caller
    event_id: str = field(default_factory=new_decision_id)
    at_ns: int = field(default_factory=time.time_ns)
    constitutional_hash: str = ""


Entry = AuditEntry | EventEntry


class AuditSink(Protocol):
    """Makes events durable. ``append`` returns only once every entry is durable.

    Raises :class:`~acgs.errors.AuditUnavailable` when it cannot take them.
    """

    async def append(self, entries: Sequence[Entry]) -> None: ...


class Escalator(Protocol):
    """Hands decisions to humans (:mod:`acgs.service_layer.escalator`).

    ``opening`` does no I/O: it returns the id of the escalation ``decision``
    belongs to and the ``escalation.opened`` event that opens it (None when the
    decision joins an escalation of its group opened before). The escalation
    exists once that event is durable, so the caller appends it before the
    decision's own entry, then reports them with ``opened`` (or, when the
    journal refused them, ``abandoned``). It raises
    :class:`~acgs.domain.escalation_group.EscalationLimited` instead when the decision would
    open an escalation past its caller's cap (``ACGS_ESCALATION_CALLER_LIMIT``): the caller
    answers DENY with the error's violation and opens an incident for the flood.
    ``incident`` opens an escalation that no durable decision carries (a
    request naming another constitution, the audit trail refusing decisions):
    once per ``key`` at a time, durable before it returns when the journal or
    the database takes it (else retried in the background); it returns the id
    and never raises.
    """

    def opening(self, decision: Decision, *, reason: str, caller: Caller,
                policy_input: Mapping[str, Any]) -> tuple[str, EventEntry | None]: ...

    def opened(self, entries: Sequence[EventEntry]) -> None: ...

    def abandoned(self, entries: Sequence[EventEntry]) -> None: ...

    async def incident(self, *, reason: str, key: str, caller: Caller, violation: Violation,
                       policy_input: Mapping[str, Any] | None = None) -> str: ...


class Telemetry(Protocol):
    """What the service layer reports to metrics (see :mod:`acgs.metrics`)."""

    def decision_made(self, decision: Decision, *, engine_us: float | None) -> None: ...

    def hash_mismatch(self) -> None: ...

    def audit_refused(self) -> None: ...


class Authenticator(Protocol):
    """Establishes who is calling from the call's metadata (lower-case keys).

    Raises ``acgs.errors.Unauthenticated`` for a missing or unknown credential.
    """

    async def authenticate(self, metadata: Mapping[str, str]) -> Caller: ...
