"""Errors the client raises: one class per gRPC status a caller treats differently."""

from __future__ import annotations

import grpc


class AcgsError(Exception):
    """A call failed; ``code`` is the gRPC status, ``details`` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class InvalidRequest(AcgsError):
    """INVALID_ARGUMENT: the request is wrong (the message names the field). Never retried."""


class ConstitutionMismatch(AcgsError):
    """FAILED_PRECONDITION: another constitution, or a state that forbids the call."""


class Unauthenticated(AcgsError):
    """UNAUTHENTICATED: no token, or one the server refuses (unknown, revoked, expired)."""


class PermissionDenied(AcgsError):
    """PERMISSION_DENIED: the token's role may not call this method."""


class NotFound(AcgsError):
    """NOT_FOUND: no such decision or escalation (or not the caller's own)."""


class RateLimited(AcgsError):
    """RESOURCE_EXHAUSTED: rate limit, message size or batch size; ``retry_after_s`` is set
    when the server said when to come back (then the client already waited and retried)."""

    def __init__(self, code: grpc.StatusCode, details: str,
                 retry_after_s: float | None = None) -> None:
        super().__init__(code, details)
        self.retry_after_s = retry_after_s


class Unavailable(AcgsError):
    """UNAVAILABLE: no server answered, after every retry the deadline allowed."""


class DeadlineExceeded(AcgsError):
    """DEADLINE_EXCEEDED: the call's deadline passed."""


_BY_CODE: dict[grpc.StatusCode, type[AcgsError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.FAILED_PRECONDITION: ConstitutionMismatch,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def from_status(code: grpc.StatusCode, details: str,
                retry_after_s: float | None = None) -> AcgsError:
    """The typed error for a failed call."""
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return RateLimited(code, details, retry_after_s)
    return _BY_CODE.get(code, AcgsError)(code, details)
