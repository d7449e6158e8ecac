"""One DecisionCache contract, run against the in-process, Redis and tiered adapters."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import pytest
from acgs.adapters.memory_cache import MemoryDecisionCache
from acgs.adapters.redis_cache import RedisDecisionCache
from acgs.adapters.tiered_cache import TieredDecisionCache
from acgs.domain.model import (
    AUDIT_UNAVAILABLE,
    Effect,
    EngineResult,
    Severity,
    Violation,
    fail_safe_result,
)


class ClosableCache(Protocol):
    async def get(self, key: str) -> EngineResult | None: ...

    async def put(self, key: str, result: EngineResult) -> None: ...

    async def aclose(self) -> None: ...


Factory = Callable[..., ClosableCache]  # called on the event loop, with adapter kwargs


def _redis(url: str, prefix: str, **kwargs: Any) -> RedisDecisionCache:
    # A generous budget: this suite checks behaviour, not latency.
    return RedisDecisionCache(url=url, key_prefix=prefix, timeout_ms=200, **kwargs)


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("tiered", marks=pytest.mark.redis),
    ]
)
def make_cache(request: pytest.FixtureRequest) -> Factory:
    if request.param == "memory":
        return lambda **kw: MemoryDecisionCache(**kw)
    url: str = request.getfixturevalue("redis_url")
    prefix: str = request.getfixturevalue("redis_prefix")
    if request.param == "redis":
        return lambda **kw: _redis(url, prefix, **kw)
    return lambda **kw: TieredDecisionCache(
        local=MemoryDecisionCache(**kw), remote=_redis(url, prefix, **kw)
    )


def run(make: Factory, body: Callable[[ClosableCache], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        cache = make(**kw)
        try:
            await body(cache)
        finally:
            await cache.aclose()

    asyncio.run(main())


ALLOW = EngineResult(effect=Effect.ALLOW, violations=(), policy_revision="r1")
DENY = EngineResult(
    effect=Effect.DENY,
    violations=(
        Violation("tenant_isolation", Severity.CRITICAL, "acts outside its tenant: «ü»"),
        Violation("role_permissions", Severity.HIGH, "role may not delete"),
    ),
    policy_revision="r1",
)


def test_miss_then_hit(make_cache: Factory) -> None:
    async def body(cache: ClosableCache) -> None:
        assert await cache.get("k1") is None
        await cache.put("k1", DENY)
        assert await cache.get("k1") == DENY
        assert await cache.get("k2") is None

    run(make_cache, body)


def test_overwrite_replaces_the_entry(make_cache: Factory) -> None:
    async def body(cache: ClosableCache) -> None:
        await cache.put("k", ALLOW)
        await cache.put("k", DENY)
        assert await cache.get("k") == DENY

    run(make_cache, body)


@pytest.mark.parametrize(
    "refused",
    [
        EngineResult(effect=Effect.ESCALATE, violations=(), policy_revision="r1"),
        fail_safe_result("engine timed out", revision="r1"),
        fail_safe_result("journal full", revision="r1", principle=AUDIT_UNAVAILABLE),
    ],
    ids=["escalate", "fail_safe", "audit_unavailable"],
)
def test_refuses_results_that_must_not_be_cached(
    make_cache: Factory, refused: EngineResult
) -> None:
    async def body(cache: ClosableCache) -> None:
        await cache.put("k", refused)
        assert await cache.get("k") is None

    run(make_cache, body, effects=("ALLOW", "DENY"))


def test_refuses_effects_not_configured(make_cache: Factory) -> None:
    async def body(cache: ClosableCache) -> None:
        await cache.put("d", DENY)
        await cache.put("a", ALLOW)
        assert await cache.get("d") is None
        assert await cache.get("a") == ALLOW

    run(make_cache, body, effects=("ALLOW",))


def test_entry_of_another_policy_revision_is_a_miss(make_cache: Factory) -> None:
    current = ["r1"]

    async def body(cache: ClosableCache) -> None:
        await cache.put("k", ALLOW)
        assert await cache.get("k") == ALLOW
        current[0] = "r2"
        assert await cache.get("k") is None

    run(make_cache, body, current_revision=lambda: current[0])
