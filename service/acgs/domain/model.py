"""Decision requests and decisions, independent of gRPC and of the engine."""

from __future__ import annotations

import enum
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class Effect(enum.Enum):
    ALLOW = "ALLOW"
    DENY = "DENY"
    ESCALATE = "ESCALATE"


class Severity(enum.Enum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


# Principles the service itself (not the policy) can name.
FAIL_SAFE = "fail_safe"
AUDIT_UNAVAILABLE = "audit_unavailable"
CONSTITUTIONAL_HASH = "constitutional_hash"
ESCALATION_LIMIT = "escalation_limit"  # a caller past ACGS_ESCALATION_CALLER_LIMIT


@dataclass(frozen=True, slots=True)
class Violation:
    principle: str
    severity: Severity
    message: str

    def as_dict(self) -> dict[str, str]:
        return {
            "principle": self.principle,
            "severity": self.severity.value,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class Caller:
    """Who called, as established by authentication (never by a request body)."""

    id: str
    role: str
    identity: str = ""
    """The person or service behind the credential ("" when the token names none)."""

    @property
    def who(self) -> str:
        """Whom separation of powers compares: the identity, else the credential's id."""
        return self.identity or self.id

    @classmethod
    def anonymous(cls) -> Caller:
        return cls(id="anonymous", role="anonymous")


@dataclass(frozen=True, slots=True)
class DecisionRequest:
    """One question: may ``principal`` perform ``action`` on ``resource``?

    ``policy_input`` is the whole input document handed to the constitution;
    it is what decides the answer and what the cache key is computed from.
    ``normalized``: ``policy_input`` is already as :func:`acgs.domain.canonical.normalize`
    makes it, so encoding it need not walk it again. Internal: only
    :func:`acgs.entrypoints.convert.decision_request` sets it (it checks the same while
    converting; tests/unit/test_canonical_fast.py holds it to that); nothing a caller
    sends can.
    """

    constitutional_hash: str
    request_id: str
    policy_input: Mapping[str, Any]
    normalized: bool = False


@dataclass(frozen=True, slots=True)
class EngineResult:
    """What the constitution said, before the service adds ids and timing."""

    effect: Effect
    violations: tuple[Violation, ...]
    policy_revision: str
    required_approvals: int = 0
    """Approvals an escalation of this result needs (0: the configured default)."""


@dataclass(frozen=True, slots=True)
class Decision:
    decision_id: str
    request_id: str
    effect: Effect
    violations: tuple[Violation, ...]
    policy_revision: str
    constitutional_hash: str
    cached: bool
    latency_us: int
    decided_at_ns: int
    escalation_id: str = ""
    fail_safe: bool = field(default=False)
    required_approvals: int = 0  # from the EngineResult; 0: the configured default
    replayed: bool = False  # answered again for a repeated request_id (not decided anew)


# The random bits of decision ids come from a generator seeded once per process (and
# again in a forked child) from the OS: ids must be unique, not secret, and os.urandom
# on every decision costs a system call and a release of the GIL on the hot path.
_ids = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))


def new_decision_id() -> str:
    """A time-ordered UUID (version 7 layout): sorts by creation time, unique.

    Not a secret: nothing is authorised by knowing an id."""
    ms = time.time_ns() // 1_000_000
    rand = _ids.getrandbits(74)
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    h = f"{value:032x}"  # str(uuid.UUID(int=value)), without its checks (~2 µs a decision)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def fail_safe_result(message: str, *, revision: str, principle: str = FAIL_SAFE) -> EngineResult:
    """A DENY the service makes on its own when it cannot trust an evaluation."""
    return EngineResult(
        effect=Effect.DENY,
        violations=(Violation(principle, Severity.CRITICAL, message),),
        policy_revision=revision,
    )


TIMED_OUT = "evaluation timed out: "  # how the message of a timeout's fail-safe DENY begins


def timed_out_result(reason: object, *, revision: str) -> EngineResult:
    """The fail-safe DENY for an evaluation not finished in its budget: the engine was busy
    or the input slow, which says nothing about whether the policy can decide."""
    return fail_safe_result(f"{TIMED_OUT}{reason}", revision=revision)


def timed_out(v: Violation) -> bool:
    """``v`` is the violation of :func:`timed_out_result`."""
    return v.principle == FAIL_SAFE and v.message.startswith(TIMED_OUT)
