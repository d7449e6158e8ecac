"""Per-caller rate limits: one token bucket per caller, its rate set by the caller's role.

A bucket holds up to ``burst`` calls and refills at ``per_s`` calls a second;
a call takes one. A role without a configured rate is not limited. No I/O here;
the clock is injected so that tests need not sleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from acgs.domain.model import Caller
from acgs.errors import LimitExceeded, whole_ms

_MAX_BUCKETS = 100_000  # callers come from the token table; this only bounds a surprise


@dataclass(frozen=True, slots=True)
class Rate:
    """``per_s`` calls a second on average, ``burst`` at once."""

    per_s: float
    burst: float

    def __post_init__(self) -> None:
        if self.per_s <= 0 or self.burst < 1:
            raise ValueError(f"a rate needs per_s > 0 and burst >= 1, not {self}")


class _Bucket:
    __slots__ = ("level", "updated")

    def __init__(self, level: float, now: float) -> None:
        self.level = level
        self.updated = now


class RateLimiter:
    """Token buckets keyed by caller id. Not thread-safe: use it from one event loop."""

    def __init__(
        self, *, rates: Mapping[str, Rate], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rates = dict(rates)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def check(self, caller: Caller) -> None:
        """Take one call from ``caller``'s bucket.

        Raises LimitExceeded, with ``retry_after_s`` the time until one call is
        available again, when the bucket is empty.
        """
        rate = self._rates.get(caller.role)
        if rate is None:
            return
        now = self._clock()
        bucket = self._bucket(caller.id, rate, now)
        bucket.level = min(rate.burst, bucket.level + (now - bucket.updated) * rate.per_s)
        bucket.updated = now
        if bucket.level >= 1.0:
            bucket.level -= 1.0
            return
        wait_s = (1.0 - bucket.level) / rate.per_s
        raise LimitExceeded(
            f"rate limit of {rate.per_s:g} calls/s (burst {rate.burst:g}) for role "
            f"{caller.role!r} exceeded; retry in {whole_ms(wait_s)} ms",
            retry_after_s=wait_s,
        )

    def _bucket(self, caller_id: str, rate: Rate, now: float) -> _Bucket:
        bucket = self._buckets.get(caller_id)
        if bucket is None:
            if len(self._buckets) >= _MAX_BUCKETS:
                self._buckets.clear()  # full buckets for everyone: errs on the generous side
            bucket = self._buckets[caller_id] = _Bucket(rate.burst, now)
        return bucket
