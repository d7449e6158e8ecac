"""Two-tier decision cache: this process's LRU first, then the Redis every server shares.

A lookup tries the in-process tier (no await), then the shared tier; a hit
there fills the in-process tier on the way back. A put writes the in-process
tier at once and, by default, the shared tier in the background ("write
behind"), so a miss does not also wait for a Redis round trip before the
caller gets its answer. Each tier refuses results that must not be cached
(ESCALATE, fail-safe DENY) and checks the policy revision on read, so this
class adds no rules of its own.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from acgs.adapters.memory_cache import MemoryDecisionCache
from acgs.domain.model import EngineResult
from acgs.service_layer.ports import DecisionCache

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class TieredCacheStats:
    """Counters since start, per answering tier; each tier keeps finer ones in ``.stats``."""

    local_hits: int = 0
    remote_hits: int = 0
    misses: int = 0  # neither tier had it: the caller evaluates
    writes_dropped: int = 0  # background writes not started: too many already pending


class TieredDecisionCache:
    """A :class:`~acgs.service_layer.ports.DecisionCache` over ``local`` then ``remote``.

    ``remote`` is usually a :class:`~acgs.adapters.redis_cache.RedisDecisionCache`;
    it must, like every DecisionCache, turn its failures into misses. With
    ``write_behind`` (the default) ``put`` returns once the local tier has the
    result and the remote write runs as a task; at most ``max_pending_writes``
    run at once, further ones are dropped (counted). Use from one event loop
    only. Never raises.
    """

    def __init__(
        self,
        *,
        local: MemoryDecisionCache,
        remote: DecisionCache,
        write_behind: bool = True,
        max_pending_writes: int = 1024,
    ) -> None:
        self.local = local
        self.remote = remote
        self._write_behind = write_behind
        self._max_pending = max_pending_writes
        self._pending: set[asyncio.Task[None]] = set()
        self.stats = TieredCacheStats()

    async def get(self, key: str) -> EngineResult | None:
        """Return the cached result from the nearest tier that has it, or None."""
        result = self.local.lookup(key)
        if result is not None:
            self.stats.local_hits += 1
            return result
        result = await self.remote.get(key)
        if result is None:
            self.stats.misses += 1
            return None
        self.stats.remote_hits += 1
        self.local.store(key, result)
        return result

    async def put(self, key: str, result: EngineResult) -> None:
        """Store ``result`` locally now and remotely now or in the background."""
        self.local.store(key, result)
        if not self._write_behind:
            await self.remote.put(key, result)
            return
        if len(self._pending) >= self._max_pending:
            self.stats.writes_dropped += 1
            return
        task = asyncio.get_running_loop().create_task(self._remote_put(key, result))
        # Keep a reference until done: the loop holds tasks only weakly.
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def flush(self) -> None:
        """Wait for every background write started so far."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def aclose(self) -> None:
        """Finish background writes, then close the remote tier if it has resources."""
        await self.flush()
        close = getattr(self.remote, "aclose", None)
        if close is not None:
            await close()

    async def _remote_put(self, key: str, result: EngineResult) -> None:
        try:
            await self.remote.put(key, result)
        except Exception:  # the port says puts never raise; a bug must not kill the loop
            logger.exception("remote decision cache put raised")
