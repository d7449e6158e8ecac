"""In-process decision cache: a bounded LRU with a time-to-live, one per server process.

Not thread-safe, by design: it is used only from the event loop thread, where
no two calls interleave (neither ``get`` nor ``put`` awaits anything), so a
lock would only cost time.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from acgs.domain.cache_key import cacheable_effects, is_cacheable
from acgs.domain.model import EngineResult

Clock = Callable[[], float]
RevisionSource = Callable[[], str]

# Distinct results worth sharing: a policy says few different things (per revision).
_MAX_INTERNED = 1024


@dataclass(slots=True)
class MemoryCacheStats:
    """Counters since start; read by the metrics module, never reset."""

    hits: int = 0
    misses: int = 0
    expired: int = 0  # misses because the entry outlived its TTL
    stale: int = 0  # misses because the entry's policy revision is not the current one
    evictions: int = 0
    puts: int = 0
    refused: int = 0  # puts of results that must not be cached


class MemoryDecisionCache:
    """A :class:`~acgs.service_layer.ports.DecisionCache` kept in this process.

    Holds at most ``max_entries`` results (least recently used evicted first;
    0 disables the cache) for ``ttl_s`` seconds each (0 or less: no expiry).
    Only results whose effect is in ``effects`` are kept, never ESCALATE or a
    fail-safe DENY. When ``current_revision`` is given, an entry whose
    ``policy_revision`` differs from it is a miss and is dropped. ``clock``
    (monotonic seconds) is injectable for tests. Never raises.
    """

    def __init__(
        self,
        *,
        max_entries: int = 100_000,
        ttl_s: float = 300.0,
        effects: Iterable[str] = ("ALLOW", "DENY"),
        current_revision: RevisionSource | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._max = max_entries
        self._ttl = ttl_s
        self._effects = cacheable_effects(effects)
        self._current_revision = current_revision
        self._clock = clock
        # Kept so that a full cache adds almost no objects for the garbage collector to
        # scan (a full collection over 100,000 entries stored as tuples of fresh objects
        # took ~40 ms here, ~5 ms like this): results are interned, so equal ones are one
        # object, and expiries sit in a dict of floats, which the collector skips.
        self._results: OrderedDict[str, EngineResult] = OrderedDict()  # end: most recent
        self._expiry: dict[str, float] = {}
        self._interned: dict[EngineResult, EngineResult] = {}
        self.stats = MemoryCacheStats()

    # Deliberately no __len__: an empty cache must not be falsy to ``if cache:``.
    @property
    def size(self) -> int:
        """Number of entries held, expired ones included until looked up or evicted."""
        return len(self._results)

    async def get(self, key: str) -> EngineResult | None:
        """Return the result cached under ``key``, or None. Does not suspend."""
        return self.lookup(key)

    async def put(self, key: str, result: EngineResult) -> None:
        """Cache ``result`` under ``key`` unless it must not be cached. Does not suspend."""
        self.store(key, result)

    def lookup(self, key: str) -> EngineResult | None:
        """Synchronous :meth:`get`, for callers on the event loop that need no await."""
        result = self._results.get(key)
        if result is None:
            self.stats.misses += 1
            return None
        if self._ttl > 0 and self._clock() >= self._expiry[key]:
            self._drop(key)
            self.stats.expired += 1
            self.stats.misses += 1
            return None
        if not self._is_current(result):
            self._drop(key)
            self.stats.stale += 1
            self.stats.misses += 1
            return None
        self._results.move_to_end(key)
        self.stats.hits += 1
        return result

    def store(self, key: str, result: EngineResult) -> None:
        """Synchronous :meth:`put`."""
        if self._max <= 0:
            return
        if not is_cacheable(result, self._effects):
            self.stats.refused += 1
            return
        self._results[key] = self._intern(result)
        self._results.move_to_end(key)
        self._expiry[key] = self._clock() + self._ttl
        self.stats.puts += 1
        while len(self._results) > self._max:
            oldest, _ = self._results.popitem(last=False)
            del self._expiry[oldest]
            self.stats.evictions += 1

    async def aclose(self) -> None:
        """Drop every entry; there is nothing else to release."""
        self.clear()

    def _is_current(self, result: EngineResult) -> bool:
        """False when ``result`` came from another policy revision than the active one."""
        current = self._current_revision
        return current is None or result.policy_revision == current()

    def _intern(self, result: EngineResult) -> EngineResult:
        if len(self._interned) >= _MAX_INTERNED:
            # Results that name their input are all distinct; start afresh rather than grow.
            self._interned.clear()
        return self._interned.setdefault(result, result)

    def _drop(self, key: str) -> None:
        del self._results[key]
        del self._expiry[key]

    def clear(self) -> None:
        """Drop every entry (for example when memory is short); counters are kept."""
        self._results.clear()
        self._expiry.clear()
        self._interned.clear()
