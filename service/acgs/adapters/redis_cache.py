"""Shared decision cache in Redis (redis.asyncio with hiredis), used by every server.

Redis trouble is not an outage: every error, timeout or refusal (OOM, read-only
replica) is a miss, counted, never raised. Each operation gets a hard budget of
a few milliseconds. After a connection error or timeout a circuit breaker skips
Redis entirely while a background task reconnects and pings with exponential
back-off, so a down or stalled Redis costs nothing per request. A server that
answers but refuses writes (``maxmemory`` with ``noeviction``) pauses writes
only, since reads still work.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from acgs.adapters.memory_cache import RevisionSource
from acgs.domain.cache_key import cacheable_effects, is_cacheable
from acgs.domain.model import Effect, EngineResult, Severity, Violation

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class RedisCacheStats:
    """Counters since start; read by the metrics module, never reset."""

    hits: int = 0
    misses: int = 0  # every get that returned None, whatever the reason
    errors: int = 0  # Redis errors, timeouts and undecodable values
    timeouts: int = 0  # the part of ``errors`` that ran out of time
    skipped: int = 0  # operations not sent because the breaker was open or writes paused
    stale: int = 0  # entries whose policy revision is not the current one
    puts: int = 0
    refused: int = 0  # puts of results that must not be cached
    trips: int = 0  # times the breaker opened
    recoveries: int = 0  # times the background probe closed it again


def encode_result(result: EngineResult) -> bytes:
    """Compact JSON: ``[effect, policy_revision, [[principle, severity, message], ...]]``,
    plus ``required_approvals`` as a fourth item when the policy set it."""
    violations = [[v.principle, v.severity.value, v.message] for v in result.violations]
    doc: list[object] = [result.effect.value, result.policy_revision, violations]
    if result.required_approvals:
        doc.append(result.required_approvals)
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def decode_result(raw: bytes | str) -> EngineResult:
    """Inverse of :func:`encode_result`; raises ValueError (or TypeError) on anything else."""
    effect, revision, violations, *rest = json.loads(raw)
    if not isinstance(revision, str):
        raise ValueError("policy revision is not a string")
    approvals = rest[0] if rest else 0
    if not isinstance(approvals, int) or len(rest) > 1:
        raise ValueError("required_approvals is not an integer")
    return EngineResult(
        effect=Effect(effect),
        violations=tuple(Violation(str(p), Severity(s), str(m)) for p, s, m in violations),
        policy_revision=revision,
        required_approvals=approvals,
    )


class RedisDecisionCache:
    """A :class:`~acgs.service_layer.ports.DecisionCache` in a Redis every server shares.

    ``url`` is a ``redis://`` or ``rediss://`` URL; keys are ``key_prefix`` +
    the decision cache key, kept ``ttl_s`` seconds (0: no expiry). Each get or
    put takes at most ``timeout_ms`` (plus event-loop scheduling). After a
    connection error or timeout, Redis is skipped until a background ping
    succeeds; pings start after ``backoff_s`` and back off to ``backoff_max_s``,
    each bounded by ``probe_timeout_s``. ``effects`` and ``current_revision``
    mean what they mean for :class:`~acgs.adapters.memory_cache.MemoryDecisionCache`.

    Constructing it does no I/O. Call :meth:`open` once on the event loop to
    check the connection, and :meth:`aclose` on shutdown. Nothing here raises
    because of Redis; the constructor raises ConfigurationError for bad ``effects``.
    """

    def __init__(
        self,
        *,
        url: str,
        ttl_s: float = 300.0,
        timeout_ms: float = 5.0,
        key_prefix: str = "",
        effects: Iterable[str] = ("ALLOW", "DENY"),
        current_revision: RevisionSource | None = None,
        backoff_s: float = 0.025,
        backoff_max_s: float = 1.0,
        probe_timeout_s: float = 0.5,
    ) -> None:
        self._timeout_s = timeout_ms / 1000
        self._ttl_ms = int(ttl_s * 1000)
        self._prefix = key_prefix
        self._effects = cacheable_effects(effects)
        self._current_revision = current_revision
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._probe_timeout_s = probe_timeout_s
        # No retries inside redis-py: a retry would spend the request's budget on a
        # server that just failed; the breaker and the probe handle recovery instead.
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=probe_timeout_s,
            socket_connect_timeout=probe_timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._tripped = False
        self._writes_paused_until = 0.0
        self._probe: asyncio.Task[None] | None = None
        self.stats = RedisCacheStats()

    @property
    def available(self) -> bool:
        """False while the breaker is open (Redis is being skipped)."""
        return not self._tripped

    async def open(self) -> None:
        """Ping Redis once; when it does not answer, open the breaker and start probing."""
        if not await self._ping():
            self._trip("no answer to PING at start")

    async def aclose(self) -> None:
        """Stop the background probe and close every connection. Never raises."""
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
            self._probe = None
        try:
            await self._client.aclose()
        except Exception as err:  # closing a broken connection must not fail shutdown
            logger.debug("closing the Redis cache client failed: %s", err)

    async def get(self, key: str) -> EngineResult | None:
        """Return the result cached under ``key``, or None on a miss or any trouble."""
        result = await self._fetch(key)
        if result is None:
            self.stats.misses += 1
        else:
            self.stats.hits += 1
        return result

    async def put(self, key: str, result: EngineResult) -> None:
        """Store ``result`` under ``key`` unless it must not be cached or Redis is skipped."""
        if not is_cacheable(result, self._effects):
            self.stats.refused += 1
            return
        if self._tripped or time.monotonic() < self._writes_paused_until:
            self.stats.skipped += 1
            return
        value = encode_result(result)
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._client.set(self._prefix + key, value, px=self._ttl_ms or None)
        except Exception as err:  # any failure is a skipped write, by contract
            self._failed(err, writing=True)
            return
        self.stats.puts += 1

    async def _fetch(self, key: str) -> EngineResult | None:
        if self._tripped:
            self.stats.skipped += 1
            return None
        try:
            async with asyncio.timeout(self._timeout_s):
                raw = await self._client.get(self._prefix + key)
        except Exception as err:  # any failure is a miss, by contract
            self._failed(err, writing=False)
            return None
        if raw is None:
            return None
        try:
            result = decode_result(raw)
        except (ValueError, TypeError) as err:
            self.stats.errors += 1
            logger.warning("undecodable Redis cache entry %s%s: %s", self._prefix, key, err)
            return None
        current = self._current_revision
        if current is not None and result.policy_revision != current():
            self.stats.stale += 1
            return None
        return result

    def _failed(self, err: Exception, *, writing: bool) -> None:
        """Count ``err``; open the breaker unless Redis answered (then pause writes only)."""
        self.stats.errors += 1
        if isinstance(err, TimeoutError):
            self.stats.timeouts += 1
        if isinstance(err, ResponseError):
            # Redis is up and answered quickly; it refused this command (OOM, READONLY).
            if writing:
                self._writes_paused_until = time.monotonic() + self._backoff_max_s
            logger.warning("Redis cache refused a command: %s", err)
            return
        self._trip(self._describe(err, writing=writing))

    def _describe(self, err: Exception, *, writing: bool) -> str:
        """``err`` for the log: its type and what it means (asyncio's TimeoutError, the
        usual one, has no message of its own)."""
        if isinstance(err, TimeoutError) and not str(err):
            return (f"{type(err).__name__}: no answer to {'SET' if writing else 'GET'} within "
                    f"{self._timeout_s * 1000:g} ms (ACGS_CACHE_REDIS_TIMEOUT_MS)")
        return f"{type(err).__name__}: {str(err) or '(no message)'}"

    def _trip(self, reason: object) -> None:
        if self._tripped:
            return
        self._tripped = True
        self.stats.trips += 1
        # INFO, not WARNING: on a busy host a stray timeout trips the breaker and the
        # first probe closes it again; only an outage that outlasts that probe warns.
        logger.info("Redis cache skipped after %s; probing", reason)
        self._probe = asyncio.get_running_loop().create_task(
            self._reconnect(), name="acgs-redis-cache-probe"
        )

    async def _reconnect(self) -> None:
        """Ping with exponential back-off until Redis answers, then close the breaker."""
        delay = self._backoff_s
        warned = False
        while True:
            await asyncio.sleep(delay)
            if await self._ping():
                self._tripped = False
                self.stats.recoveries += 1
                logger.log(logging.WARNING if warned else logging.INFO, "Redis cache is back")
                return
            if not warned:
                logger.warning("Redis cache unavailable; skipping it, retrying in the background")
                warned = True
            delay = min(delay * 2, self._backoff_max_s)

    async def _ping(self) -> bool:
        """True when Redis answers PING on a fresh connection within the probe timeout."""
        try:
            # Connections opened before the failure may be half-dead; start afresh.
            await self._client.connection_pool.disconnect()
            async with asyncio.timeout(self._probe_timeout_s):
                return bool(await self._client.ping())
        except Exception as err:  # the probe's whole job is to survive failures
            logger.debug("Redis cache probe failed: %s", err)
            return False
