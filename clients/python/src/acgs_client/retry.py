"""Which failures are retried, and how long to wait: the one retry rule of the client.

Retried: UNAVAILABLE (no server answered, or it died mid-call: the same request_id makes
the retry idempotent on the server), and RESOURCE_EXHAUSTED when the server sent a
``retry-after-ms`` trailer (a rate limit; an oversized message or batch has none and is
not retried). CANCELLED from the server's side, for the idempotent calls only (Decide,
DecideBatch, Evaluate): a stopping server cancels a call that reached it in the instant
its stop began, before deciding anything (README, status codes); a cancellation made by
this process (the caller's task cancelled, the channel closed) is never retried. Nothing
else: INVALID_ARGUMENT, FAILED_PRECONDITION, PERMISSION_DENIED … would fail the same way
again. Every wait fits inside the caller's deadline.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

RETRY_AFTER_KEY = "retry-after-ms"

LOCAL_CANCELLATIONS = frozenset({
    "Locally cancelled by application!",   # grpc.aio: call.cancel(), the channel closed
    "Cancelled upon garbage collection!",  # grpc.aio: the call object collected
    "Channel closed!",                     # grpc (sync): the channel closed mid-call
})
"""grpc's messages for a call this process cancelled itself."""


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded, jittered exponential back-off for UNAVAILABLE; the server's word for
    RESOURCE_EXHAUSTED. ``max_attempts`` counts the first call."""

    max_attempts: int = 5
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    multiplier: float = 2.0

    def delay_s(self, attempt: int, code: grpc.StatusCode,
                retry_after_s: float | None, *, cancelled_by_server: bool = False,
                ) -> float | None:
        """Seconds to wait before attempt ``attempt + 1`` (attempt counts from 1), or None
        when this failure is not retried. ``cancelled_by_server``: a CANCELLED that
        :func:`server_cancelled` accepts, on an idempotent call (retried as UNAVAILABLE)."""
        if attempt >= self.max_attempts:
            return None
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            # Never sooner than the server asked; a little jitter spreads the herd.
            return None if retry_after_s is None else retry_after_s * random.uniform(1.0, 1.1)
        if code == grpc.StatusCode.CANCELLED and not cancelled_by_server:
            return None
        if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
            return None
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


NO_RETRY = RetryPolicy(max_attempts=1)


def server_cancelled(code: grpc.StatusCode, details: str | None) -> bool:
    """A CANCELLED that came from the other side (a stopping server), not from this process.

    grpc.aio raises ``asyncio.CancelledError``, not an RPC error, when the caller's task or
    the call is cancelled; the messages of :data:`LOCAL_CANCELLATIONS` cover the rest.
    """
    return code == grpc.StatusCode.CANCELLED and (details or "") not in LOCAL_CANCELLATIONS


def retry_after_s(trailing: Sequence[Any] | None) -> float | None:
    """The ``retry-after-ms`` trailer in seconds, if the server sent a usable one."""
    for key, value in trailing or ():
        if key == RETRY_AFTER_KEY:
            try:
                ms = float(value)
            except (TypeError, ValueError):
                return None
            return max(ms, 1.0) / 1000 if ms == ms and ms < 3_600_000 else None
    return None
