"""The errors of ACGS-2. Caught only at the edges (gRPC servicers, the CLI)."""

from __future__ import annotations

import math


class AcgsError(Exception):
    """Base class of every error raised by ACGS-2."""


class ConfigurationError(AcgsError):
    """A setting is missing, malformed or unsafe for the chosen environment."""


class ConstitutionMismatch(AcgsError):
    """A request, policy or database names another constitution than the one in force."""

    def __init__(self, *, expected: str, got: str, what: str = "request") -> None:
        shown = got or "(missing)"
        super().__init__(
            f"{what} carries constitutional hash {shown!r}; this server enforces {expected!r}"
        )
        self.expected = expected
        self.got = got


class InvalidRequest(AcgsError):
    """A request is malformed: a missing or wrong-typed field, bad JSON, too deep."""


class LimitExceeded(AcgsError):
    """A request is over a configured limit (size, batch length, rate)."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    @property
    def retry_after_ms(self) -> int | None:
        """``retry_after_s`` in whole milliseconds, rounded up and at least 1: a client told
        0 would retry at once and be refused again."""
        return None if self.retry_after_s is None else whole_ms(self.retry_after_s)


def whole_ms(seconds: float) -> int:
    """``seconds`` in milliseconds, rounded up and at least 1."""
    return max(1, math.ceil(seconds * 1000))


class PolicyError(AcgsError):
    """A policy does not load: syntax error, unsupported built-in, failing test."""


class UnsupportedBuiltin(PolicyError):
    """A policy calls a built-in the engine lacks or refuses (http.send, opa.runtime)."""


class PolicyTestsFailed(PolicyError):
    """A policy version's Rego unit tests (rules ``test_*``) do not all pass."""


class BadSignature(AcgsError):
    """A policy version is unsigned or not signed by a trusted key where signatures are required."""


class UnknownRule(AcgsError):
    """An Evaluate path names no rule of the active policy."""


class EngineError(AcgsError):
    """The engine failed to evaluate (an error, or an undefined decision)."""


class EvaluationFailed(EngineError):
    """The policy's evaluation fails for this input, the same way every time (a built-in
    error under strict errors, a value the engine cannot return): retrying cannot help."""


class EngineTimeout(EngineError):
    """Evaluation took longer than its budget."""


class DeadlineExceeded(AcgsError):
    """The caller's deadline passed before the decision was made."""


class AuditUnavailable(AcgsError):
    """The audit journal cannot take another record (full, or its disk failed)."""


class NotFound(AcgsError):
    """The named object (decision, policy version, escalation) does not exist."""


class Unauthenticated(AcgsError):
    """The call carries no credential, or one that is unknown or revoked."""


class PermissionDenied(AcgsError):
    """The caller's role may not call this method."""


class SelfResolution(PermissionDenied):
    """A principal tried to resolve the escalation of its own action (separation of powers)."""


class IdempotencyConflict(AcgsError):
    """A request_id the caller used recently arrives again with another request body."""


class InvalidTransition(AcgsError):
    """The escalation's state does not allow this change (already resolved, or expired)."""


class Unavailable(AcgsError):
    """A dependency (the database) cannot be reached, or the server is stopping; retry."""


class SnapshotInvalid(AcgsError):
    """A local snapshot (policy version or token table) failed its verification: not served."""
