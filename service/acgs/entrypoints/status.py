"""Domain errors → gRPC status codes, with messages that leak no internals."""

from __future__ import annotations

import logging
from typing import Any, TypeAlias

import grpc
import grpc.aio

from acgs import errors

logger = logging.getLogger("acgs.grpc")

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
"""The servicer context of any acgs.v1 method."""

_CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (errors.ConstitutionMismatch, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.BadSignature, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.UnknownRule, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.PolicyError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.EngineTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.AuditUnavailable, grpc.StatusCode.UNAVAILABLE),
    # Deterministic: the same call fails the same way until the policy changes, so not
    # UNAVAILABLE (which clients retry). The request itself is well-formed.
    (errors.EvaluationFailed, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.EngineError, grpc.StatusCode.UNAVAILABLE),
    (errors.InvalidTransition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.IdempotencyConflict, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
)


def code_for(err: BaseException) -> grpc.StatusCode | None:
    for cls, code in _CODES:
        if isinstance(err, cls):
            return code
    return None


async def abort_with(context: Context, err: BaseException) -> None:
    """Abort the call with the status for ``err``; unexpected errors become INTERNAL, logged."""
    code = code_for(err)
    if code is None:
        logger.exception("unexpected error in handler", exc_info=err)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
    if isinstance(err, errors.LimitExceeded) and err.retry_after_ms is not None:
        context.set_trailing_metadata((("retry-after-ms", str(err.retry_after_ms)),))
    assert code is not None
    await context.abort(code, _short(str(err)))


MAX_DETAILS = 1000
"""Characters of a status message: one that echoes a 70 kB request field would pass gRPC's
metadata limit (16 kB), and the client would see RESOURCE_EXHAUSTED instead of the code."""


def _short(message: str) -> str:
    return message if len(message) <= MAX_DETAILS else message[:MAX_DETAILS - 1] + "…"
