"""The in-process decision cache: LRU bound, TTL, revision check, refusals."""

from __future__ import annotations

import asyncio

from acgs.adapters.memory_cache import MemoryDecisionCache
from acgs.domain.model import Effect, EngineResult


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def result(revision: str = "r1", effect: Effect = Effect.ALLOW) -> EngineResult:
    return EngineResult(effect=effect, violations=(), policy_revision=revision)


def test_least_recently_used_entry_is_evicted_at_the_bound() -> None:
    cache = MemoryDecisionCache(max_entries=2)
    cache.store("a", result())
    cache.store("b", result())
    assert cache.lookup("a") is not None  # "a" is now the most recently used
    cache.store("c", result())
    assert cache.size == 2
    assert cache.lookup("b") is None
    assert cache.lookup("a") is not None and cache.lookup("c") is not None
    assert cache.stats.evictions == 1


def test_entry_expires_after_ttl() -> None:
    clock = FakeClock()
    cache = MemoryDecisionCache(ttl_s=10, clock=clock)
    cache.store("k", result())
    clock.now += 9.9
    assert cache.lookup("k") is not None
    clock.now += 0.1
    assert cache.lookup("k") is None
    assert cache.size == 0
    assert cache.stats.expired == 1


def test_overwrite_restarts_the_ttl() -> None:
    clock = FakeClock()
    cache = MemoryDecisionCache(ttl_s=10, clock=clock)
    cache.store("k", result("r1"))
    clock.now += 8
    cache.store("k", result("r2"))
    clock.now += 8
    assert cache.lookup("k") == result("r2")


def test_an_empty_cache_is_truthy() -> None:
    # Callers write ``if cache:`` to mean "a cache is configured".
    assert MemoryDecisionCache()


def test_zero_size_disables_the_cache() -> None:
    cache = MemoryDecisionCache(max_entries=0)
    cache.store("k", result())
    assert cache.lookup("k") is None


def test_entry_of_another_revision_is_a_miss_and_dropped() -> None:
    current = ["r1"]
    cache = MemoryDecisionCache(current_revision=lambda: current[0])
    cache.store("k", result("r1"))
    current[0] = "r2"
    assert cache.lookup("k") is None
    assert cache.stats.stale == 1 and cache.size == 0


def test_counters_and_async_port() -> None:
    cache = MemoryDecisionCache(effects=("ALLOW",))

    async def scenario() -> None:
        assert await cache.get("k") is None
        await cache.put("k", result())
        await cache.put("d", result(effect=Effect.DENY))  # not configured: refused
        assert await cache.get("k") == result()
        assert await cache.get("d") is None

    asyncio.run(scenario())
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.puts, stats.refused) == (1, 2, 1, 1)


def test_equal_results_are_stored_once() -> None:
    # Fewer objects for the garbage collector to scan in a full cache.
    cache = MemoryDecisionCache()
    cache.store("a", result())
    cache.store("b", result())
    assert cache.lookup("a") is cache.lookup("b")
