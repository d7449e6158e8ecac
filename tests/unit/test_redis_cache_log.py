"""The Redis tier's log line when it starts skipping Redis names what went wrong.

A time-out used to read ``Redis cache skipped after TimeoutError: ; probing``:
asyncio's TimeoutError carries no message."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from acgs.adapters.redis_cache import RedisDecisionCache


def test_a_timeout_names_its_budget_and_the_operation(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        cache = RedisDecisionCache(url="redis://127.0.0.1:1/0", timeout_ms=5,
                                   backoff_s=60.0)  # no probe during the test

        async def stalled(*_: Any, **__: Any) -> None:
            await asyncio.sleep(1)

        cache._client.get = stalled  # type: ignore[method-assign]
        try:
            assert await cache.get("k") is None
            assert not cache.available
        finally:
            await cache.aclose()

    with caplog.at_level(logging.INFO, logger="acgs"):
        asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if "Redis cache skipped" in r.getMessage()]
    assert lines == ["Redis cache skipped after TimeoutError: no answer to GET within 5 ms "
                     "(ACGS_CACHE_REDIS_TIMEOUT_MS); probing"], lines
