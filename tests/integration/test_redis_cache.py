"""The Redis decision cache against a real Redis: shared between servers, and outages.

Outage tests use a private ``redis-server`` (fixture ``redis_server``) that
they stop, stall with DEBUG SLEEP or fill, while a loop of gets and puts runs:
no exception may escape, every operation must return within a few times its
timeout, errors must be counted, and the cache must come back with Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from acgs.adapters.memory_cache import MemoryDecisionCache
from acgs.adapters.redis_cache import RedisDecisionCache
from acgs.adapters.tiered_cache import TieredDecisionCache
from acgs.domain.model import Effect, EngineResult, Severity, Violation

from tests.plugins.redis import ThrowawayRedis

pytestmark = pytest.mark.redis

TIMEOUT_MS = 5.0
OP_BOUND_S = 6 * TIMEOUT_MS / 1000  # "a few times the timeout", for 99 % of operations
# Every operation, even on a host so busy that the process is descheduled for tens of
# milliseconds; still far below what a hang would show (the stall, the socket timeout).
OP_MAX_S = 0.15
BACKOFF_MAX_S = 0.2
PROBE_TIMEOUT_S = 0.5
RECOVERY_S = BACKOFF_MAX_S + PROBE_TIMEOUT_S + 0.5

RESULT = EngineResult(
    effect=Effect.DENY,
    violations=(Violation("role_permissions", Severity.HIGH, "x" * 2000),),
    policy_revision="r1",
)


def redis_cache(url: str, **kwargs: object) -> RedisDecisionCache:
    return RedisDecisionCache(
        url=url, timeout_ms=TIMEOUT_MS, backoff_s=0.05, backoff_max_s=BACKOFF_MAX_S,
        probe_timeout_s=PROBE_TIMEOUT_S, **kwargs,  # type: ignore[arg-type]
    )


async def hammer(cache: RedisDecisionCache | TieredDecisionCache, seconds: float) -> list[float]:
    """Put and get in a loop for ``seconds``; return each operation's duration."""
    durations: list[float] = []
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        key = f"k{i % 64}"
        for op in (cache.put(key, RESULT), cache.get(key)):
            start = time.perf_counter()
            await op
            durations.append(time.perf_counter() - start)
        i += 1
        await asyncio.sleep(0.001)  # a request stream, not a busy loop
    return durations


def assert_bounded(durations: list[float]) -> None:
    ordered = sorted(durations)
    assert ordered[int(len(ordered) * 0.99)] < OP_BOUND_S, ordered[-20:]
    assert ordered[-1] < OP_MAX_S, ordered[-20:]


async def later(delay_s: float, action: Callable[[], object]) -> None:
    """Run the blocking ``action`` in a thread after ``delay_s``, off the event loop."""
    await asyncio.sleep(delay_s)
    await asyncio.to_thread(action)


async def until(condition: Callable[[], Awaitable[bool]], within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if await condition():
            return True
        await asyncio.sleep(0.02)
    return False


async def comes_back(cache: RedisDecisionCache) -> bool:
    """True once a put followed by a get round-trips through Redis again."""
    async def round_trip() -> bool:
        await cache.put("probe", RESULT)
        return await cache.get("probe") == RESULT

    return await until(round_trip, RECOVERY_S)


def test_second_server_sees_the_first_servers_entry(redis_url: str, redis_prefix: str) -> None:
    async def scenario() -> None:
        first, second = (
            TieredDecisionCache(local=MemoryDecisionCache(),
                                remote=redis_cache(redis_url, key_prefix=redis_prefix))
            for _ in range(2)
        )
        try:
            await first.put("shared", RESULT)
            await first.flush()  # the Redis write runs behind the put
            assert await second.get("shared") == RESULT
            assert await second.get("shared") == RESULT
            assert (second.stats.remote_hits, second.stats.local_hits) == (1, 1)
        finally:
            await first.aclose()
            await second.aclose()

    asyncio.run(scenario())


def test_redis_stopped_is_a_miss_and_it_comes_back(redis_server: ThrowawayRedis) -> None:
    async def scenario() -> None:
        remote = redis_cache(redis_server.url)
        cache = TieredDecisionCache(local=MemoryDecisionCache(), remote=remote)
        try:
            await remote.open()
            durations, _ = await asyncio.gather(
                hammer(cache, 1.2), later(0.3, redis_server.stop)
            )
            assert_bounded(durations)
            assert remote.stats.errors >= 1 and remote.stats.trips >= 1
            assert remote.stats.skipped > 0 and not remote.available
            assert cache.stats.local_hits > 0  # the in-process tier keeps serving
            await asyncio.to_thread(redis_server.start)
            assert await comes_back(remote)
        finally:
            await cache.aclose()

    asyncio.run(scenario())


def test_redis_stalled_is_a_miss_and_it_comes_back(redis_server: ThrowawayRedis) -> None:
    async def scenario() -> None:
        cache = redis_cache(redis_server.url)
        try:
            await cache.open()
            durations, _ = await asyncio.gather(
                hammer(cache, 2.0), later(0.3, lambda: redis_server.stall(1.0))
            )
            assert_bounded(durations)
            assert cache.stats.timeouts >= 1 and cache.stats.trips >= 1
            assert cache.stats.recoveries >= 1  # back before the loop ended
            assert await comes_back(cache)
        finally:
            await cache.aclose()

    asyncio.run(scenario())


def test_redis_full_pauses_writes_only(redis_server: ThrowawayRedis) -> None:
    async def scenario() -> None:
        cache = redis_cache(redis_server.url)
        try:
            await cache.put("before", RESULT)
            redis_server.config_set("maxmemory-policy", "noeviction")
            redis_server.config_set("maxmemory", "1mb")
            durations = await hammer(cache, 1.0)
            assert_bounded(durations)
            refusals = cache.stats.errors - cache.stats.timeouts
            assert refusals >= 1  # OOM, counted
            # An OOM never opens the breaker; on a busy host a stray timeout may, and then
            # reads are skipped until its probe closes it again (within backoff_max_s).
            assert cache.stats.trips <= cache.stats.timeouts

            async def reads() -> bool:
                return await cache.get("before") == RESULT

            assert await until(reads, RECOVERY_S)  # reads still work while Redis is full
            redis_server.config_set("maxmemory", "0")
            assert await comes_back(cache)
        finally:
            await cache.aclose()

    asyncio.run(scenario())


def test_start_with_redis_down_then_up(redis_server: ThrowawayRedis) -> None:
    async def scenario() -> None:
        redis_server.stop()
        cache = redis_cache(redis_server.url)
        try:
            await cache.open()
            assert not cache.available
            start = time.perf_counter()
            assert await cache.get("k") is None
            assert time.perf_counter() - start < OP_MAX_S
            await asyncio.to_thread(redis_server.start)
            assert await comes_back(cache)
        finally:
            await cache.aclose()

    asyncio.run(scenario())
