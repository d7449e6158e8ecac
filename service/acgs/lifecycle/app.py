"""The composition root: the service's parts, in start order; the only place adapters are built.

:func:`build` reads as the list of the server's parts. Each adds its start,
stop and background work to one :class:`~acgs.lifecycle.supervisor.Supervisor`,
which starts them in this order and stops them in reverse:

1. config checks (the listen addresses free: a port in use stops the start here), metrics
   (``/metrics``, ``/ready``)
2. the policy engine and the decision cache (Redis tier)
3. the database: PostgreSQL or the embedded one, migrated and checked, or the
   local snapshots while it is unreachable (:mod:`acgs.lifecycle.database`)
4. the audit trail: journal, shipper, checkpointer (:mod:`acgs.lifecycle.audit`)
5. callers and the token refresh (:mod:`acgs.lifecycle.callers`)
6. escalations and the sweeper (:mod:`acgs.lifecycle.escalations`)
7. the policy lifecycle: seed, catch-up, shadow, fleet sync
   (:mod:`acgs.lifecycle.policy`; after the escalations, as an automatic
   rollback opens an incident)
8. the decision service and the servicers, on the gRPC server
9. the listener (LISTEN/NOTIFY for escalation watchers and activations), then
   the database watch: started last, stopped first.

:class:`Application` implements the server's lifecycle around them: SERVING
only once every part started; on stop NOT_SERVING first, the ``serving`` parts
stopped, the drain, the gRPC server stopped, then every other part in reverse
(the final checkpoint, the journal flushed, the shipper's last attempt, the
journal, the pool, the database...). The connection budget is in
:mod:`acgs.lifecycle.database`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from acgs.adapters.memory_cache import MemoryDecisionCache
from acgs.adapters.pg_notify import PgListener
from acgs.adapters.redis_cache import RedisDecisionCache
from acgs.adapters.rego_source import load_policy_dir
from acgs.adapters.regopy_engine import RegopyEngine
from acgs.adapters.tiered_cache import TieredDecisionCache
from acgs.config import Settings
from acgs.entrypoints.audit_servicer import AuditServicer
from acgs.entrypoints.callers import CallerResolver
from acgs.entrypoints.convert import StringLimits
from acgs.entrypoints.governance_servicer import GovernanceServicer
from acgs.entrypoints.grpc_server import GrpcServer
from acgs.lifecycle.audit import AuditTrail, build_audit
from acgs.lifecycle.callers import build_callers, require_secure, server_credentials
from acgs.lifecycle.database import Database, build_database, watching
from acgs.lifecycle.escalations import Escalations, build_escalations
from acgs.lifecycle.policy import PolicyLifecycle, build_policy_lifecycle, verify_policy_dir
from acgs.lifecycle.supervisor import Supervisor
from acgs.listen import cannot_listen, reason_of, require_free
from acgs.metrics import Metrics, NullTelemetry
from acgs.service_layer.decisions import DecisionService
from acgs.service_layer.idempotency import IdempotencyMap
from acgs.service_layer.ports import DecisionCache, Telemetry
from acgs.v1 import audit_pb2, governance_pb2

logger = logging.getLogger("acgs.lifecycle")


@dataclass
class Application:
    """A wired server. ``start`` then ``stop``; ``port`` is the bound gRPC port."""

    settings: Settings
    server: GrpcServer
    service: DecisionService
    engine: RegopyEngine
    telemetry: Telemetry
    parts: Supervisor
    """Every part of the server, in start order (see the module docstring)."""
    ready: bool = False
    """Follows gRPC health (SERVING); HTTP ``/ready`` on the metrics port reports it."""
    dev_tokens_file: Path | None = None
    """Development only: the file holding a token per role (see lifecycle.callers)."""
    policy_fresh: bool = True
    """False while the served policy lags the fleet's desired one too long (lifecycle.policy)."""
    serving_wanted: bool = False
    refused: str = ""
    """Why the server stopped serving for good (its database returned with another
    constitution); empty while it may serve."""

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self) -> None:
        await self.parts.start()
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
        """NOT_SERVING, stop the serving parts, wait for the load balancer to notice, drain,
        then stop every other part in reverse order."""
        self.ready = self.serving_wanted = False
        await self.server.set_serving(False)
        await self.parts.stop_serving()
        if self.settings.drain_delay_s > 0:
            await asyncio.sleep(self.settings.drain_delay_s)
        await self.server.stop(self.settings.grace_period_s)
        await self.parts.stop()

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
    """Construct every part from ``settings``, in start order. Raises AcgsError subclasses on
    bad config (and what opening the database raises, see lifecycle.database)."""
    require_secure(settings)
    require_free("ACGS_GRPC_ADDR", settings.grpc_addr)  # before anything is started or made
    if telemetry is None:
        require_free("ACGS_METRICS_ADDR", settings.metrics_addr)
    parts = Supervisor()
    metrics: Metrics | None = None
    if telemetry is None:
        metrics = telemetry = Metrics(address=settings.metrics_addr,
                                      instance_id=settings.instance_id,
                                      constitutional_hash=settings.constitutional_hash)
        parts.step("metrics", start=_async(_metrics_start(settings, metrics)),
                   stop=_async(metrics.close))
        metrics.watch_tasks(states=parts.states, note=parts.down_note)
    elif isinstance(telemetry, Metrics):
        metrics = telemetry
    engine = await _engine(settings, parts)
    cache = _decision_cache(settings, engine, parts)
    if metrics is not None:
        _watch(metrics, engine=engine, cache=cache)

    database = await build_database(settings, parts) if settings.audit_enabled else None
    trail = await _audit_trail(settings, parts, database, metrics)
    callers = await build_callers(settings, parts, database=database)
    escalations = (build_escalations(settings, parts, trail=trail,
                                     telemetry=metrics or NullTelemetry())
                   if trail is not None else None)
    policy = await _policy(settings, parts, trail, engine, escalations, metrics,
                           app=lambda: app)
    if policy is None:  # no fleet: the directory is served for good, so it is checked here
        verify_policy_dir(settings, engine.bundle)

    service = _decision_service(settings, engine, cache, trail, escalations, telemetry)
    service.observe_with(policy.observer if policy is not None else None)
    server = _grpc_server(settings, service, callers.resolver, trail, escalations, policy)
    app = Application(settings=settings, server=server, service=service, engine=engine,
                      telemetry=telemetry, parts=parts, dev_tokens_file=callers.dev_tokens_file)
    if metrics is not None:
        metrics.watch_readiness(lambda: app.ready)

    if database is not None:
        _listen(parts, database, escalations, policy)
        _watch_database(app, database, metrics)
    return app


async def _engine(settings: Settings, parts: Supervisor) -> RegopyEngine:
    """The policy engine, serving ACGS_POLICY_DIR until the fleet's policy is known."""
    engine = RegopyEngine(
        workers=settings.engine_workers, constitutional_hash=settings.constitutional_hash
    )
    parts.step("engine", stop=_async(engine.close))
    await engine.activate(
        load_policy_dir(settings.policy_dir, constitutional_hash=settings.constitutional_hash)
    )
    return engine


def _decision_cache(settings: Settings, engine: RegopyEngine,
                    parts: Supervisor) -> DecisionCache | None:
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
    cache = TieredDecisionCache(local=local, remote=remote)
    parts.step("redis-cache", start=remote.open, stop=cache.aclose)
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


async def _audit_trail(settings: Settings, parts: Supervisor, database: Database | None,
                       metrics: Metrics | None) -> AuditTrail | None:
    """Journal, shipper, checkpointer on ``database`` (none without it: audit disabled)."""
    if database is None:
        return None
    trail = await build_audit(settings, parts, database, on_shipped=(
        (lambda n, s: metrics.audit_shipped(records=n, duration_s=s)) if metrics else None),
        on_checkpoint=(lambda ok: metrics.audit_checkpoint(ok=ok)) if metrics else None)
    if metrics is not None:
        shipper = trail.shipper
        metrics.watch_audit_journal(backlog_records=lambda: shipper.backlog_records,
                                    ship_lag_s=lambda: shipper.lag_s)
        metrics.watch_audit_shipper(shipper)
    return trail


async def _policy(settings: Settings, parts: Supervisor, trail: AuditTrail | None,
                  engine: RegopyEngine, escalations: Escalations | None,
                  metrics: Metrics | None, *, app: Callable[[], Application],
                  ) -> PolicyLifecycle | None:
    """Policy versions and fleet sync on the audit trail's database (none without it)."""
    if trail is None:
        return None
    return await build_policy_lifecycle(
        settings, parts, trail=trail, engine=engine,
        address=lambda: f"{settings.grpc_addr.rsplit(':', 1)[0]}:{app().port}",
        serving=lambda: app().ready, on_fresh=lambda f: app().set_policy_fresh(f),
        telemetry=metrics or NullTelemetry(),
        incidents=escalations.escalator if escalations is not None else None)


def _decision_service(settings: Settings, engine: RegopyEngine, cache: DecisionCache | None,
                      trail: AuditTrail | None, escalations: Escalations | None,
                      telemetry: Telemetry) -> DecisionService:
    return DecisionService(
        engine=engine,
        cache=cache,
        audit=trail.journal if trail is not None else None,
        escalator=escalations.escalator if escalations is not None else None,
        telemetry=telemetry,
        constitutional_hash=settings.constitutional_hash,
        eval_timeout_s=settings.eval_timeout_ms / 1000,
        idempotency=IdempotencyMap(window_s=settings.idempotency_window_s,
                                   max_entries=settings.idempotency_max_entries,
                                   clock=time.monotonic)
        if settings.idempotency_window_s > 0 else None,
    )


def _grpc_server(settings: Settings, service: DecisionService, callers: CallerResolver,
                 trail: AuditTrail | None, escalations: Escalations | None,
                 policy: PolicyLifecycle | None) -> GrpcServer:
    """The servicers on one gRPC server (started by :meth:`Application.start`)."""
    governance = GovernanceServicer(
        service=service,
        callers=callers,
        max_batch=settings.max_batch,
        max_input_depth=settings.max_input_depth,
        limits=string_limits(settings),
    )
    services: list[tuple[Any, object]] = [
        (governance_pb2.DESCRIPTOR.services_by_name["Governance"], governance)]
    if trail is not None:
        services.append((audit_pb2.DESCRIPTOR.services_by_name["Audit"],
                         AuditServicer(reader=trail.queries, callers=callers)))
    if escalations is not None:
        services.extend(escalations.services(callers))
    if policy is not None:
        services.extend(policy.services(callers))
    return GrpcServer(
        address=settings.grpc_addr,
        services=services,
        max_message_bytes=settings.max_message_bytes,
        credentials=server_credentials(settings),
        guard=callers.resolve,
        limits=string_limits(settings),
    )


def _listen(parts: Supervisor, database: Database, escalations: Escalations | None,
            policy: PolicyLifecycle | None) -> None:
    """One LISTEN connection rings the escalation watchers' and the reconciler's bells."""
    bells = [p.bell for p in (escalations, policy) if p is not None]
    if bells:
        parts.loop("listener", PgListener(bells=bells).listen, held=database.offline,
                   expected=(psycopg.Error,), backoff_s=(0.1, 5.0))


def _watch_database(app: Application, database: Database, metrics: Metrics | None) -> None:
    """The database watch: started after everything else, stopped before anything else; it
    starts the held parts once the database is ready, and a database refused when it
    returns (another constitution) makes the server NOT_SERVING."""
    watch = database.watch
    watch.defer(app.parts.held())
    watch.on_refused = app.refuse
    watching(app.parts, watch)
    if metrics is not None:
        metrics.watch_database(reachable=lambda: watch.reachable, note=watch.note)


def string_limits(settings: Settings) -> StringLimits:
    """The request string bounds (ACGS_MAX_ID_CHARS, ACGS_MAX_TEXT_CHARS)."""
    return StringLimits(id_chars=settings.max_id_chars, text_chars=settings.max_text_chars,
                        roles=settings.max_roles, nodes=settings.max_input_nodes)


def _metrics_start(settings: Settings, metrics: Metrics) -> Callable[[], None]:
    """Start the metrics server; a failed bind is a ConfigurationError naming the setting."""
    def start() -> None:
        try:
            metrics.start()
        except OSError as err:
            raise cannot_listen("ACGS_METRICS_ADDR", settings.metrics_addr,
                                reason_of(err)) from err

    return start


def _async(fn: Callable[[], object]) -> Callable[[], Any]:
    async def call() -> None:
        fn()

    return call
