"""The composition root: the only module that constructs adapters.

``build`` wires settings into concrete adapters (regopy, PostgreSQL, Redis,
Prometheus) and returns an :class:`Application` whose ``start``/``stop``
implement the lifecycle: SERVING only once the policy, database and cache are
ready; on stop NOT_SERVING first, then drain, then close the audit trail and
the stores.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from acgs.adapters.memory_cache import MemoryDecisionCache
from acgs.adapters.redis_cache import RedisDecisionCache
from acgs.adapters.rego_source import load_policy_dir
from acgs.adapters.regopy_engine import RegopyEngine
from acgs.adapters.tiered_cache import TieredDecisionCache
from acgs.config import Settings
from acgs.entrypoints.callers import AnonymousAuthenticator, CallerResolver
from acgs.entrypoints.governance_servicer import GovernanceServicer
from acgs.entrypoints.grpc_server import GrpcServer
from acgs.metrics import Metrics
from acgs.service_layer.decisions import DecisionService
from acgs.service_layer.ports import AuditSink, DecisionCache, Telemetry
from acgs.v1 import governance_pb2

logger = logging.getLogger("acgs.bootstrap")

Closer = Callable[[], Awaitable[None]]


@dataclass
class Application:
    """A wired server. ``start`` then ``stop``; ``port`` is the bound gRPC port."""

    settings: Settings
    server: GrpcServer
    service: DecisionService
    engine: RegopyEngine
    telemetry: Telemetry
    closers: list[Closer] = field(default_factory=list)
    starters: list[Closer] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        for starter in self.starters:
            await starter()
        await self.server.start()
        await self.server.set_serving(True)
        logger.info(
            "serving policy %s under constitution %s",
            self.engine.policy.revision,
            self.settings.constitutional_hash,
        )

    async def stop(self) -> None:
        """NOT_SERVING, wait for the load balancer to notice, drain, then close in order."""
        await self.server.set_serving(False)
        if self.settings.drain_delay_s > 0:
            await asyncio.sleep(self.settings.drain_delay_s)
        await self.server.stop(self.settings.grace_period_s)
        for closer in reversed(self.closers):
            try:
                await closer()
            except Exception:
                logger.exception("error while closing")


async def build(settings: Settings, *, telemetry: Telemetry | None = None) -> Application:
    """Construct every adapter from ``settings``. Raises AcgsError subclasses on bad config."""
    closers: list[Closer] = []
    starters: list[Closer] = []
    if telemetry is None:
        metrics = Metrics(
            address=settings.metrics_addr,
            instance_id=settings.instance_id,
            constitutional_hash=settings.constitutional_hash,
        )
        starters.append(_async(metrics.start))
        closers.append(_async(metrics.close))
        telemetry = metrics
    engine = RegopyEngine(
        workers=settings.engine_workers, constitutional_hash=settings.constitutional_hash
    )
    closers.append(_async(engine.close))
    await engine.activate(
        load_policy_dir(settings.policy_dir, constitutional_hash=settings.constitutional_hash)
    )
    cache = _decision_cache(settings, engine, starters=starters, closers=closers)
    if isinstance(telemetry, Metrics):
        _watch(telemetry, engine=engine, cache=cache)
    audit: AuditSink | None = None
    service = DecisionService(
        engine=engine,
        cache=cache,
        audit=audit,
        escalator=None,
        telemetry=telemetry,
        constitutional_hash=settings.constitutional_hash,
        eval_timeout_s=settings.eval_timeout_ms / 1000,
    )
    callers = CallerResolver(authenticator=AnonymousAuthenticator())
    governance = GovernanceServicer(
        service=service,
        callers=callers,
        max_batch=settings.max_batch,
        max_input_depth=settings.max_input_depth,
    )
    server = GrpcServer(
        address=settings.grpc_addr,
        services=[(governance_pb2.DESCRIPTOR.services_by_name["Governance"], governance)],
        max_message_bytes=settings.max_message_bytes,
    )
    return Application(
        settings=settings,
        server=server,
        service=service,
        engine=engine,
        telemetry=telemetry,
        closers=closers,
        starters=starters,
    )


def _decision_cache(
    settings: Settings, engine: RegopyEngine, *, starters: list[Closer], closers: list[Closer]
) -> DecisionCache | None:
    """The in-process cache; tiered over Redis when ``ACGS_REDIS_URL`` is set; None if both off.

    The Redis tier is pinged at start (a down Redis is not an outage: it is
    skipped and reconnected in the background) and closed on stop.
    """

    def revision() -> str:
        return engine.policy.revision

    if settings.redis_url is None and settings.cache_local_size == 0:
        return None
    local = MemoryDecisionCache(
        max_entries=settings.cache_local_size,
        ttl_s=settings.cache_local_ttl_s,
        effects=settings.cache_effects,
        current_revision=revision,
    )
    if settings.redis_url is None:
        return local
    remote = RedisDecisionCache(
        url=settings.redis_url,
        ttl_s=settings.cache_redis_ttl_s,
        timeout_ms=settings.cache_redis_timeout_ms,
        effects=settings.cache_effects,
        current_revision=revision,
    )
    starters.append(remote.open)
    cache = TieredDecisionCache(local=local, remote=remote)
    closers.append(cache.aclose)
    return cache


def _watch(metrics: Metrics, *, engine: RegopyEngine, cache: DecisionCache | None) -> None:
    """Let the metrics read the active revision and each cache tier's counters at scrape time."""
    metrics.watch_policy(revision=lambda: engine.policy.revision)
    if isinstance(cache, TieredDecisionCache):
        metrics.watch_cache(tier="local", stats=cache.local.stats)
        if isinstance(cache.remote, RedisDecisionCache):
            metrics.watch_cache(tier="redis", stats=cache.remote.stats)
    elif isinstance(cache, MemoryDecisionCache):
        metrics.watch_cache(tier="local", stats=cache.stats)


def _async(fn: Callable[[], object]) -> Closer:
    async def call() -> None:
        result = fn()
        if asyncio.iscoroutine(result):
            await result

    return call
