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
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acgs.adapters.memory_cache import MemoryDecisionCache
from acgs.adapters.redis_cache import RedisDecisionCache
from acgs.adapters.rego_source import load_policy_dir
from acgs.adapters.regopy_engine import RegopyEngine
from acgs.adapters.tiered_cache import TieredDecisionCache
from acgs.bootstrap_audit import AuditTrail, build_audit
from acgs.bootstrap_auth import build_callers, require_secure, server_credentials
from acgs.bootstrap_escalations import Escalations, build_escalations
from acgs.bootstrap_policy import PolicyLifecycle, build_policy_lifecycle
from acgs.config import Settings
from acgs.entrypoints.audit_servicer import AuditServicer
from acgs.entrypoints.callers import CallerResolver
from acgs.entrypoints.convert import StringLimits
from acgs.entrypoints.governance_servicer import GovernanceServicer
from acgs.entrypoints.grpc_server import GrpcServer
from acgs.metrics import Metrics, NullTelemetry
from acgs.service_layer.database_watch import DatabaseWatch
from acgs.service_layer.decisions import DecisionService
from acgs.service_layer.idempotency import IdempotencyMap
from acgs.service_layer.ports import AuditSink, DecisionCache, Telemetry
from acgs.v1 import audit_pb2, governance_pb2

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
    ready: bool = False
    """Follows gRPC health (SERVING); HTTP ``/ready`` on the metrics port reports it."""
    dev_tokens_file: Path | None = None
    """Development only: the file holding a token per role (see bootstrap_auth)."""
    stoppers: list[Closer] = field(default_factory=list)
    """Run once NOT_SERVING, before the drain: end long-lived streams (escalation watchers)."""
    policy_fresh: bool = True
    """False while the served policy lags the fleet's desired one too long (bootstrap_policy)."""
    serving_wanted: bool = False
    refused: str = ""
    """Why the server stopped serving for good (its database returned with another
    constitution); empty while it may serve."""

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        for starter in self.starters:
            await starter()
        await self.server.start()
        self.serving_wanted = True
        self.ready = self.policy_fresh and not self.refused
        await self.server.set_serving(self.ready)
        logger.info(
            "serving policy %s under constitution %s",
            self.engine.policy.revision,
            self.settings.constitutional_hash,
        )

    async def stop(self) -> None:
        """NOT_SERVING, wait for the load balancer to notice, drain, then close in order."""
        self.ready = self.serving_wanted = False
        await self.server.set_serving(False)
        for stopper in self.stoppers:
            await stopper()
        if self.settings.drain_delay_s > 0:
            await asyncio.sleep(self.settings.drain_delay_s)
        await self.server.stop(self.settings.grace_period_s)
        for closer in reversed(self.closers):
            try:
                await closer()
            except Exception:
                logger.exception("error while closing")

    async def set_policy_fresh(self, fresh: bool) -> None:
        """Readiness follows policy freshness while started (a stale server is NOT_SERVING)."""
        if fresh == self.policy_fresh:
            return
        self.policy_fresh = fresh
        logger.warning("policy %s: %s", self.engine.policy.revision,
                       "caught up, serving" if fresh else "lags the fleet: NOT_SERVING")
        if self.serving_wanted and not self.refused:
            self.ready = fresh
            await self.server.set_serving(fresh)

    async def refuse(self, reason: str) -> None:
        """NOT_SERVING for good: a dependency this server must not use came back wrong."""
        self.refused = reason
        self.ready = False
        await self.server.set_serving(False)


async def build(settings: Settings, *, telemetry: Telemetry | None = None) -> Application:
    """Construct every adapter from ``settings``. Raises AcgsError subclasses on bad config."""
    require_secure(settings)
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
    trail = await _audit_trail(settings, telemetry, closers) if settings.audit_enabled else None
    audit: AuditSink | None = trail.journal if trail is not None else None
    escalations = await _escalations(settings, trail, telemetry, starters, closers)
    service = DecisionService(
        engine=engine,
        cache=cache,
        audit=audit,
        escalator=escalations.escalator if escalations is not None else None,
        telemetry=telemetry,
        constitutional_hash=settings.constitutional_hash,
        eval_timeout_s=settings.eval_timeout_ms / 1000,
        idempotency=IdempotencyMap(window_s=settings.idempotency_window_s,
                                   max_entries=settings.idempotency_max_entries,
                                   clock=time.monotonic)
        if settings.idempotency_window_s > 0 else None,
    )
    database = trail.database if trail is not None else None
    auth = await build_callers(settings, conninfo=trail.conninfo if trail is not None else None,
                               snapshots=trail.snapshots if trail is not None else None,
                               database=database)
    starters.extend(auth.starters)
    closers.extend(auth.closers)
    callers = auth.resolver
    policy = await _policy(settings, trail, engine, starters, closers,
                           address=lambda: f"{settings.grpc_addr.rsplit(':', 1)[0]}:{app.port}",
                           serving=lambda: app.ready, on_fresh=lambda f: app.set_policy_fresh(f),
                           telemetry=telemetry, escalations=escalations)
    service.observe_with(policy.observer if policy is not None else None)
    governance = GovernanceServicer(
        service=service,
        callers=callers,
        max_batch=settings.max_batch,
        max_input_depth=settings.max_input_depth,
        limits=string_limits(settings),
    )
    server = GrpcServer(
        address=settings.grpc_addr,
        services=[(governance_pb2.DESCRIPTOR.services_by_name["Governance"], governance),
                  *_audit_services(trail, callers),
                  *(escalations.services(callers) if escalations is not None else []),
                  *(policy.services(callers) if policy is not None else [])],
        max_message_bytes=settings.max_message_bytes,
        credentials=server_credentials(settings),
        guard=callers.resolve,
        limits=string_limits(settings),
    )
    app = Application(
        settings=settings,
        server=server,
        service=service,
        engine=engine,
        telemetry=telemetry,
        closers=closers,
        starters=starters,
        dev_tokens_file=auth.dev_tokens_file,
        stoppers=[*(escalations.stoppers if escalations is not None else []),
                  *(policy.stoppers if policy is not None else [])],
    )
    if isinstance(telemetry, Metrics):
        telemetry.watch_readiness(lambda: app.ready)
    if database is not None:
        _watch_database(app, database)
    return app


def _watch_database(app: Application, database: DatabaseWatch) -> None:
    """Start the database watch after everything else, stop it before anything else; a
    database refused when it returns (another constitution) makes the server NOT_SERVING."""
    app.starters.append(database.start)
    app.closers.append(database.stop)
    database.on_refused = app.refuse
    if isinstance(app.telemetry, Metrics):
        app.telemetry.watch_database(reachable=lambda: database.reachable, note=database.note)


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


async def _audit_trail(
    settings: Settings, telemetry: Telemetry, closers: list[Closer]
) -> AuditTrail:
    """Database, migrations + constitution check, journal, shipper (see bootstrap_audit)."""
    metrics = telemetry if isinstance(telemetry, Metrics) else None
    trail = await build_audit(settings, on_shipped=(
        (lambda n, s: metrics.audit_shipped(records=n, duration_s=s)) if metrics else None),
        on_checkpoint=(lambda ok: metrics.audit_checkpoint(ok=ok)) if metrics else None)
    closers.extend(trail.closers)  # run reversed: flush, final ship, close, pool, database
    if metrics is not None:
        shipper = trail.shipper
        metrics.watch_audit_journal(backlog_records=lambda: shipper.backlog_records,
                                    ship_lag_s=lambda: shipper.lag_s)
        metrics.watch_audit_shipper(shipper)
    return trail


async def _escalations(settings: Settings, trail: AuditTrail | None, telemetry: Telemetry,
                       starters: list[Closer], closers: list[Closer]) -> Escalations | None:
    """Escalations on the audit trail's database (none without the audit trail)."""
    if trail is None:
        return None
    metrics = telemetry if isinstance(telemetry, Metrics) else NullTelemetry()
    escalations = await build_escalations(settings, trail=trail, telemetry=metrics)
    trail.database.start_with(starters, escalations.starters)
    closers.extend(escalations.closers)
    return escalations


async def _policy(settings: Settings, trail: AuditTrail | None, engine: RegopyEngine,
                  starters: list[Closer], closers: list[Closer], *, address: Callable[[], str],
                  serving: Callable[[], bool], on_fresh: Callable[[bool], Awaitable[None]],
                  telemetry: Telemetry, escalations: Escalations | None,
                  ) -> PolicyLifecycle | None:
    """Policy versions and fleet sync on the audit trail's database (none without it)."""
    if trail is None:
        return None
    policy = await build_policy_lifecycle(
        settings, trail=trail, engine=engine, address=address, serving=serving,
        on_fresh=on_fresh,
        telemetry=telemetry if isinstance(telemetry, Metrics) else NullTelemetry(),
        incidents=escalations.escalator if escalations is not None else None)
    trail.database.start_with(starters, policy.starters)
    closers.extend(policy.closers)
    return policy


def string_limits(settings: Settings) -> StringLimits:
    """The request string bounds (ACGS_MAX_ID_CHARS, ACGS_MAX_TEXT_CHARS)."""
    return StringLimits(id_chars=settings.max_id_chars, text_chars=settings.max_text_chars)


def _audit_services(trail: AuditTrail | None, callers: CallerResolver) -> list[tuple[Any, object]]:
    if trail is None:
        return []
    servicer = AuditServicer(reader=trail.queries, callers=callers)
    return [(audit_pb2.DESCRIPTOR.services_by_name["Audit"], servicer)]


def _async(fn: Callable[[], object]) -> Closer:
    async def call() -> None:
        result = fn()
        if asyncio.iscoroutine(result):
            await result

    return call
