"""Every metric ACGS-2 exports, declared in this one module.

Metrics go through the OpenTelemetry SDK (a ``MeterProvider`` with a
``PrometheusMetricReader`` on a private ``CollectorRegistry``) and are served
by prometheus_client's HTTP server on ``Settings.metrics_addr`` at ``/metrics``.
The same server answers ``/ready`` (200 ``SERVING`` or 503 ``NOT_SERVING``, see
:meth:`Metrics.watch_readiness`) for load balancers that cannot speak gRPC health.

The hot path does not call SDK instruments. A synchronous ``Counter.add`` or
``Histogram.record`` costs about 6 µs in opentelemetry-sdk 1.45 (attribute
cleaning and hashing on every call): a counter and two histograms per decision
measured 8 µs, ~9.5 % of the throughput of 100 µs decisions. So
:meth:`Metrics.decision_made` only increments plain ints: 0.7 µs, ~1.6 %
(``python3 bench/metrics_cost.py``). Hence:

* counters and gauges are *observable* instruments whose callbacks read those
  ints, or the counters other components keep, when Prometheus scrapes;
* the two per-decision latency histograms are bucketed in-process with
  :data:`LATENCY_BUCKETS_S` and handed to the exporter as OpenTelemetry
  histogram points at collection time (:class:`_Reader`), so they take the same
  name translation as every other metric. SDK histograms (the audit ship
  duration) get the same bounds through a View.

Names are final as written here: counters get ``_total`` from the exporter,
every other name already ends in its unit, ``target_info`` and the
``otel_scope_*`` labels are disabled. Callbacks run in the scrape thread; the
counters they read are written by the event loop thread only.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import Histogram as HistogramInstrument
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from acgs import CONSTITUTIONAL_HASH, __version__
from acgs.domain.model import Decision, Effect, Severity
from acgs.os_threads import name_os_thread

logger = logging.getLogger(__name__)

LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)
"""Upper bounds (seconds) of every latency histogram: 25 µs to 1 s."""

RESOLUTION_BUCKETS_S: tuple[float, ...] = (
    10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0,
)
"""Upper bounds (seconds) of the escalation time-to-resolution histogram: 10 s to a day."""
_OUTCOMES = ("approved", "denied", "expired")

_BOOL = {True: "true", False: "false"}
_SERVICE_PRINCIPLES = ("fail_safe", "audit_unavailable", "constitutional_hash")
Observations = Iterable[Observation]


class CacheCounters(Protocol):
    """Counters a cache tier keeps since start (``hits``, ``misses``; Redis adds ``errors``)."""

    @property
    def hits(self) -> int: ...

    @property
    def misses(self) -> int: ...


class ShipperHealth(Protocol):
    """What the audit shipper tells about itself (read at each scrape and ``/ready`` probe)."""

    @property
    def quarantined_records(self) -> int: ...

    @property
    def restarts(self) -> int: ...

    @property
    def stalled_for_s(self) -> float: ...

    @property
    def kept_journals(self) -> int: ...

    def stall_note(self) -> str | None: ...

    def kept_note(self) -> str | None: ...


class TaskHealth(Protocol):
    """One supervised task (:class:`acgs.lifecycle.supervisor.TaskState`)."""

    @property
    def name(self) -> str: ...

    @property
    def up(self) -> bool: ...

    @property
    def restarts(self) -> int: ...


class _Buckets:
    """A cumulative fixed-bound histogram: one list index bump and one float add per value."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value_s: float) -> None:
        self.counts[bisect_left(self.bounds, value_s)] += 1
        self.sum += value_s

    def point(self, labels: Mapping[str, str], *, start_ns: int, now_ns: int) -> HistogramDataPoint:
        counts = list(self.counts)  # one snapshot, so _count always equals the +Inf bucket
        return HistogramDataPoint(
            attributes=dict(labels), start_time_unix_nano=start_ns, time_unix_nano=now_ns,
            count=sum(counts), sum=self.sum, bucket_counts=counts,
            explicit_bounds=self.bounds, min=math.nan, max=math.nan, exemplars=[],
        )  # min/max are not tracked; the Prometheus exporter does not use them


class _Reader(PrometheusMetricReader):
    """A PrometheusMetricReader that appends the in-process histograms to each collection."""

    def __init__(self, *, registry: CollectorRegistry, extra: Callable[[], list[Metric]]) -> None:
        super().__init__(disable_target_info=True, scope_info_enabled=False, registry=registry)
        self._extra = extra
        self._scope = InstrumentationScope("acgs.metrics", __version__)

    def _receive_metrics(self, metrics_data: MetricsData | None, timeout_millis: float = 10_000,
                         **kwargs: Any) -> None:
        if metrics_data is None:
            return
        empty = ResourceMetrics(Resource.get_empty(), [], "")
        first, *rest = metrics_data.resource_metrics or [empty]
        ours = ScopeMetrics(scope=self._scope, metrics=self._extra(), schema_url="")
        first = ResourceMetrics(first.resource, [*first.scope_metrics, ours], first.schema_url)
        super()._receive_metrics(MetricsData([first, *rest]), timeout_millis, **kwargs)


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr: health checks probe ``/ready`` several times a second."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Metrics:
    """The ACGS-2 metrics of one server; implements :class:`~acgs.service_layer.ports.Telemetry`.

    Construction does no I/O. ``start()`` serves ``/metrics`` on ``address``
    (``host:port``; port 0 picks a free one, see :attr:`port`) and raises
    OSError when it cannot bind; ``close()`` stops serving. Recording works
    before ``start()`` and is never blocked by a scrape.
    """

    def __init__(
        self, *, address: str = "127.0.0.1:9464", instance_id: str, version: str = __version__,
        constitutional_hash: str = CONSTITUTIONAL_HASH,
    ) -> None:
        self._address = address
        self._instance = {"instance_id": instance_id, "version": version}
        self._hash = constitutional_hash
        self._start_ns = time.time_ns()
        # Hot-path state: plain ints, written by the event loop thread only.
        # Series start at 0 so that rate() sees the first increment (fail-safe ones are DENYs).
        self._decisions: defaultdict[tuple[str, bool, bool], int] = defaultdict(int)
        for effect in Effect:
            for cached in (True, False):
                self._decisions[effect.value, cached, False] = 0
        self._decisions[Effect.DENY.value, False, True] = 0
        self._violations: defaultdict[tuple[str, str], int] = defaultdict(int)
        for principle in _SERVICE_PRINCIPLES:
            self._violations[principle, Severity.CRITICAL.value] = 0
        self._latency = {True: _Buckets(), False: _Buckets()}
        self._engine = _Buckets()
        self._events = {"hash_mismatches": 0, "audit_refusals": 0, "shadow_evaluations": 0,
                        "shadow_dropped": 0, "policy_auto_rollbacks": 0,
                        "escalations_limited": 0}
        self._shadow_differences: dict[str, int] = {}
        self._escalations_created: dict[str, int] = {}
        self._escalations_open: dict[tuple[str, str], int] = {}
        self._escalations_resolved: dict[tuple[str, str], int] = {}
        self._resolution = {o: _Buckets(RESOLUTION_BUCKETS_S) for o in _OUTCOMES}
        self._caches: dict[str, CacheCounters] = {}
        self._audit_sources: tuple[Callable[[], int], Callable[[], float]] | None = None
        self._shipper: ShipperHealth | None = None
        self._policy_revision: Callable[[], str] | None = None
        self._ready: Callable[[], bool] = lambda: False
        self._database: tuple[Callable[[], bool], Callable[[], str]] | None = None
        self._tasks: tuple[Callable[[], Sequence[TaskHealth]], Callable[[], str]] | None = None
        self._registry = CollectorRegistry(auto_describe=True)
        self._provider = MeterProvider(
            metric_readers=[_Reader(registry=self._registry, extra=self._histograms)],
            resource=Resource.get_empty(), shutdown_on_exit=False,
            views=[View(instrument_type=HistogramInstrument,
                        aggregation=ExplicitBucketHistogramAggregation(LATENCY_BUCKETS_S))],
        )
        self._declare()
        self._server: tuple[WSGIServer, threading.Thread] | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Serve ``/metrics`` and ``/ready`` on ``address``; raise OSError if it cannot bind."""
        if self._server is not None:
            raise RuntimeError("metrics server already started")
        host, _, port = self._address.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"

        class Server(ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        httpd = make_server(host, int(port), self._wsgi_app(), Server, handler_class=_QuietHandler)
        thread = threading.Thread(target=_named(httpd.serve_forever), name="acgs-metrics",
                                  daemon=True)
        thread.start()
        self._server = (httpd, thread)
        logger.info("metrics on http://%s:%d/metrics", host, self.port)

    def close(self) -> None:
        """Stop serving and release the SDK (idempotent); later recording is harmless, unseen."""
        if self._server is not None:
            server, thread = self._server
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            self._server = None
        if not self._closed:
            self._closed = True
            self._provider.shutdown()

    @property
    def port(self) -> int:
        """The bound port once started (useful with port 0)."""
        if self._server is None:
            raise RuntimeError("metrics server not started")
        return int(self._server[0].server_address[1])

    def _wsgi_app(self) -> WSGIApplication:
        """``/ready`` from the readiness callback; every other path is the exposition."""
        metrics = make_wsgi_app(self._registry)

        def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
            if environ.get("PATH_INFO") != "/ready":
                return metrics(environ, start_response)  # type: ignore[no-any-return]
            try:
                ready = bool(self._ready())
            except Exception:  # a broken callback must not read as ready
                logger.exception("readiness callback failed")
                ready = False
            body = (b"SERVING\n" if ready else b"NOT_SERVING\n") + self._ready_notes()
            start_response("200 OK" if ready else "503 Service Unavailable", [
                ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store")])
            return [body]

        return app

    def _ready_notes(self) -> bytes:
        """Lines after the status in ``/ready``'s body: what is degraded but not fatal
        (decisions go on, so the status stays)."""
        return self._database_note() + self._shipper_note() + self._tasks_note()

    def _database_note(self) -> bytes:
        try:
            note = self._database[1]() if self._database is not None else ""
        except Exception:
            logger.exception("database note callback failed")
            note = "database state unknown"
        return f"{note}\n".encode() if note else b""

    def _tasks_note(self) -> bytes:
        try:
            note = self._tasks[1]() if self._tasks is not None else ""
        except Exception:
            logger.exception("task health callback failed")
            note = "background tasks: health unknown"
        return f"{note}\n".encode() if note else b""

    def _shipper_note(self) -> bytes:
        try:
            notes = ([self._shipper.stall_note(), self._shipper.kept_note()]
                     if self._shipper is not None else [])
        except Exception:
            logger.exception("shipper health callback failed")
            notes = ["audit shipper: health unknown"]
        return "".join(f"{note}\n" for note in notes if note is not None).encode()

    def render(self) -> bytes:
        """The current exposition, exactly as ``/metrics`` would serve it (text format)."""
        return bytes(generate_latest(self._registry))

    # -- Telemetry (hot path) ----------------------------------------------------------------

    def decision_made(self, decision: Decision, *, engine_us: float | None) -> None:
        """Count one decision, its latency, engine time and (DENY/ESCALATE) violated principles."""
        # Keys hold enum values (`_value_` is a plain attribute): hashing an Enum member
        # runs Python code, and this runs once per decision.
        cached = decision.cached
        self._decisions[decision.effect._value_, cached, decision.fail_safe] += 1
        self._latency[cached].observe(decision.latency_us * 1e-6)
        if engine_us is not None:
            self._engine.observe(engine_us * 1e-6)
        violations = decision.violations
        if violations and decision.effect is not Effect.ALLOW:
            # One count per distinct (principle, severity) the decision names.
            for principle, severity in {(v.principle, v.severity._value_) for v in violations}:
                self._violations[principle, severity] += 1

    def hash_mismatch(self) -> None:
        """Count a request, policy or database that named another constitution."""
        self._events["hash_mismatches"] += 1

    def audit_refused(self) -> None:
        """Count an audit append the journal refused (the decisions became fail-safe DENYs)."""
        self._events["audit_refusals"] += 1

    # -- policy lifecycle: shadow and auto-rollback -------------------------------------------

    def shadow_evaluated(self, *, transition: str) -> None:
        """Count one shadow decision; ``transition`` ("ALLOW->DENY") when it differs, else ""."""
        self._events["shadow_evaluations"] += 1
        if transition:
            self._shadow_differences[transition] = self._shadow_differences.get(transition, 0) + 1

    def shadow_dropped(self) -> None:
        """Count a sampled decision the full shadow queue could not take."""
        self._events["shadow_dropped"] += 1

    def policy_rolled_back(self) -> None:
        """Count an automatic rollback this server made."""
        self._events["policy_auto_rollbacks"] += 1

    # -- other components ------------------------------------------------------------------

    def escalation_created(self, *, reason: str) -> None:
        """Count an escalation handed to humans."""
        self._escalations_created[reason] = self._escalations_created.get(reason, 0) + 1

    def escalation_limited(self) -> None:
        """Count a decision denied instead of opening an escalation past its caller's cap
        (ACGS_ESCALATION_CALLER_LIMIT)."""
        self._events["escalations_limited"] += 1

    def set_open_escalations(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Replace the open-escalation snapshot: ``{(reason, severity): open count}``."""
        self._escalations_open = dict(counts)

    def escalation_resolved(self, *, reason: str, outcome: str, duration_s: float) -> None:
        """Count an escalation approved, denied or expired ``duration_s`` after it was opened."""
        key = (reason, outcome)
        self._escalations_resolved[key] = self._escalations_resolved.get(key, 0) + 1
        if outcome in self._resolution:
            self._resolution[outcome].observe(duration_s)

    def audit_shipped(self, *, records: int, duration_s: float) -> None:
        """Count one batch of ``records`` shipped to PostgreSQL in ``duration_s`` seconds."""
        self._shipped.add(records)
        self._ship_duration.record(duration_s)

    def audit_checkpoint(self, *, ok: bool) -> None:
        """Count one signed checkpoint journaled (ok), or one attempt that failed."""
        self._checkpoints.add(1, {"outcome": "ok" if ok else "failed"})

    def watch_audit_journal(self, *, backlog_records: Callable[[], int],
                            ship_lag_s: Callable[[], float]) -> None:
        """Read the journal's unshipped record count and oldest unshipped age at each scrape.

        The callables run in the scrape thread and must return promptly without I/O.
        """
        self._audit_sources = (backlog_records, ship_lag_s)

    def watch_audit_shipper(self, shipper: ShipperHealth) -> None:
        """Export the shipper's quarantined records, restarts and stall; its note on ``/ready``."""
        self._shipper = shipper

    def watch_cache(self, *, tier: str, stats: CacheCounters) -> None:
        """Export ``stats.hits``/``.misses`` (and ``.errors`` if present) under ``tier``."""
        self._caches[tier] = stats

    def watch_policy(self, *, revision: Callable[[], str]) -> None:
        """Read the active policy revision at each scrape (cheap, no I/O, any thread)."""
        self._policy_revision = revision

    def watch_database(self, *, reachable: Callable[[], bool], note: Callable[[], str]) -> None:
        """Export ``acgs_database_reachable`` and add ``note()`` (when not empty) to ``/ready``'s
        body; its status stays what readiness says (decisions go on without the database).

        Both run in scrape and probe threads: cheap, no I/O.
        """
        self._database = (reachable, note)

    def watch_tasks(self, *, states: Callable[[], Sequence[TaskHealth]],
                    note: Callable[[], str]) -> None:
        """Export each supervised task's liveness (``acgs_task_up``) and restarts
        (``acgs_task_restarts_total``); add ``note()`` (the tasks down) to ``/ready``'s body,
        whose status stays what readiness says. Both run in scrape threads: cheap, no I/O."""
        self._tasks = (states, note)

    def watch_readiness(self, ready: Callable[[], bool]) -> None:
        """Answer ``GET /ready`` with 200 while ``ready()`` is true, else 503 (the default).

        ``ready`` runs in the HTTP server's threads on every probe: cheap, no I/O.
        HAProxy checks it (``option httpchk GET /ready``), as it cannot speak gRPC health.
        """
        self._ready = ready

    # -- instruments -------------------------------------------------------------------------

    def _declare(self) -> None:
        meter = self._provider.get_meter("acgs", __version__)
        counter, gauge = meter.create_observable_counter, meter.create_observable_gauge
        # Counters: the exporter appends _total. Unit "1" adds no suffix.
        for name, doc, callback in (
            ("acgs_decisions", "Decisions made, by effect, cached, fail_safe", self._obs_decisions),
            ("acgs_constitutional_violations", "Principles named by DENY/ESCALATE decisions",
             self._obs_violations),
            ("acgs_constitutional_hash_mismatches", "Requests, policies or databases naming "
             "another constitution", self._event("hash_mismatches")),
            ("acgs_audit_refusals", "Audit appends refused", self._event("audit_refusals")),
            ("acgs_cache_hits", "Cache lookups answered, by tier", self._cache_obs("hits")),
            ("acgs_cache_misses", "Cache lookups not answered, by tier", self._cache_obs("misses")),
            ("acgs_cache_redis_errors", "Redis errors and timeouts", self._obs_redis_errors),
            ("acgs_escalations_created", "Escalations opened, by reason", self._obs_escalated),
            ("acgs_escalations_limited", "Decisions denied instead of opening an escalation: "
             "their caller reached ACGS_ESCALATION_CALLER_LIMIT",
             self._event("escalations_limited")),
            ("acgs_policy_shadow_evaluations", "Live decisions also decided under the shadowed "
             "candidate", self._event("shadow_evaluations")),
            ("acgs_policy_shadow_differences", "Shadow decisions whose effect differs from the "
             "live answer, by transition", self._obs_shadow_differences),
            ("acgs_policy_shadow_dropped", "Sampled decisions dropped: the shadow queue was full",
             self._event("shadow_dropped")),
            ("acgs_policy_auto_rollbacks", "Activations rolled back automatically (too many "
             "fail-safe decisions)", self._event("policy_auto_rollbacks")),
            ("acgs_escalations_resolved", "Escalations approved, denied or expired, by reason "
             "and outcome", self._obs_resolved),
            ("acgs_audit_quarantined_records", "Audit records moved to quarantine (damaged "
             "journal lines, records PostgreSQL refused)", self._shipper_obs("quarantined")),
            ("acgs_audit_shipper_restarts", "Audit shipper rounds that failed and were retried",
             self._shipper_obs("restarts")),
            ("acgs_task_restarts", "Failures of a supervised background task (a crashed "
             "loop or a failed round), each retried after a back-off, by task",
             self._task_obs(up=False)),
        ):
            counter(name, [callback], unit="1", description=doc)
        for name, unit, doc, callback in (
            ("acgs_audit_journal_backlog_records", "1", "Journaled audit records not yet in "
             "PostgreSQL", self._audit_obs(0)),
            ("acgs_audit_ship_lag_seconds", "s", "Age of the oldest unshipped audit record",
             self._audit_obs(1)),
            ("acgs_audit_shipper_stalled", "1", "1 while audit records wait longer than "
             "ACGS_AUDIT_SHIP_STALL_S without the shipper making progress",
             self._shipper_obs("stalled")),
            ("acgs_audit_shipper_stalled_seconds", "s", "Time audit records have waited without "
             "the shipper making progress (0 while it ships)", self._shipper_obs("stalled_s")),
            ("acgs_audit_journals_kept", "1", "Adopted journals of dead servers kept on disk, "
             "unshipped, because PostgreSQL's chain disagrees with them (records lost or "
             "altered there)", self._shipper_obs("kept")),
            ("acgs_escalations_open", "1", "Open escalations, by reason and severity",
             self._obs_escalations_open),
            ("acgs_policy_info", "1", "Active policy revision (value 1)", self._obs_policy),
            ("acgs_instance_info", "1", "This server (value 1)", self._obs_instance),
            ("acgs_database_reachable", "1", "1 while this server can use PostgreSQL, 0 while "
             "it decides without it", self._obs_database),
            ("acgs_task_up", "1", "1 while a supervised background task runs as it should, 0 "
             "while it is down (crashed and waiting to restart, or not started), by task",
             self._task_obs(up=True)),
        ):
            gauge(name, [callback], unit=unit, description=doc)
        self._shipped = meter.create_counter(
            "acgs_audit_shipped_records", unit="1", description="Audit records shipped")
        self._shipped.add(0)  # the series exists (at 0) before the first batch
        self._ship_duration = meter.create_histogram(
            "acgs_audit_ship_duration_seconds", unit="s", description="Time to ship one batch")
        self._checkpoints = meter.create_counter(
            "acgs_audit_checkpoints", unit="1",
            description="Signed audit checkpoints journaled, by outcome (ok, failed)")

    def _histograms(self) -> list[Metric]:
        now, start = time.time_ns(), self._start_ns
        latency = [b.point({"cached": _BOOL[c]}, start_ns=start, now_ns=now)
                   for c, b in self._latency.items()]
        engine = [self._engine.point({}, start_ns=start, now_ns=now)]
        resolution = [b.point({"outcome": o}, start_ns=start, now_ns=now)
                      for o, b in self._resolution.items()]
        cumulative = AggregationTemporality.CUMULATIVE
        return [
            Metric(name="acgs_decision_duration_seconds", unit="s",
                   description="Time to decide one request, from arrival to durable answer",
                   data=Histogram(data_points=latency, aggregation_temporality=cumulative)),
            Metric(name="acgs_engine_evaluation_duration_seconds", unit="s",
                   description="Time the policy engine took to evaluate one uncached request",
                   data=Histogram(data_points=engine, aggregation_temporality=cumulative)),
            Metric(name="acgs_escalation_resolution_seconds", unit="s",
                   description="Time from an escalation's opening to its approval, denial "
                   "or expiry",
                   data=Histogram(data_points=resolution, aggregation_temporality=cumulative)),
        ]

    def _obs_decisions(self, _: CallbackOptions) -> Observations:
        for (effect, cached, fail_safe), n in list(self._decisions.items()):
            yield Observation(n, {"effect": effect, "cached": _BOOL[cached],
                                  "fail_safe": _BOOL[fail_safe]})

    def _obs_violations(self, _: CallbackOptions) -> Observations:
        for (principle, severity), n in list(self._violations.items()):
            yield Observation(n, {"principle": principle, "severity": severity})

    def _event(self, key: str) -> Callable[[CallbackOptions], Observations]:
        return lambda _: [Observation(self._events[key])]

    def _cache_obs(self, field: str) -> Callable[[CallbackOptions], Observations]:
        def observe(_: CallbackOptions) -> Observations:
            caches = list(self._caches.items())
            return [Observation(getattr(stats, field), {"tier": t}) for t, stats in caches]
        return observe

    def _obs_redis_errors(self, _: CallbackOptions) -> Observations:
        errors = [getattr(s, "errors", None) for s in list(self._caches.values())]
        return [Observation(sum(e for e in errors if isinstance(e, int)))]

    def _obs_escalated(self, _: CallbackOptions) -> Observations:
        return [Observation(n, {"reason": r}) for r, n in list(self._escalations_created.items())]

    def _obs_shadow_differences(self, _: CallbackOptions) -> Observations:
        return [Observation(n, {"transition": t})
                for t, n in list(self._shadow_differences.items())]

    def _obs_resolved(self, _: CallbackOptions) -> Observations:
        return [Observation(n, {"reason": r, "outcome": o})
                for (r, o), n in list(self._escalations_resolved.items())]

    def _obs_escalations_open(self, _: CallbackOptions) -> Observations:
        return [Observation(n, {"reason": r, "severity": s})
                for (r, s), n in self._escalations_open.items()]

    def _audit_obs(self, index: int) -> Callable[[CallbackOptions], Observations]:
        def observe(_: CallbackOptions) -> Observations:
            sources = self._audit_sources
            return [] if sources is None else [Observation(sources[index]())]
        return observe

    def _shipper_obs(self, what: str) -> Callable[[CallbackOptions], Observations]:
        def observe(_: CallbackOptions) -> Observations:
            s = self._shipper
            if s is None:  # no audit trail: nothing quarantined, nothing stalled
                return [Observation(0)]
            value: float
            if what == "quarantined":
                value = s.quarantined_records
            elif what == "restarts":
                value = s.restarts
            elif what == "stalled":
                value = int(s.stall_note() is not None)
            elif what == "kept":
                value = s.kept_journals
            else:
                value = s.stalled_for_s
            return [Observation(value)]
        return observe

    def _task_obs(self, *, up: bool) -> Callable[[CallbackOptions], Observations]:
        def observe(_: CallbackOptions) -> Observations:
            states = self._tasks[0]() if self._tasks is not None else ()
            return [Observation(int(t.up) if up else t.restarts, {"task": t.name})
                    for t in states]
        return observe

    def _obs_policy(self, _: CallbackOptions) -> Observations:
        if self._policy_revision is None:
            return []
        return [Observation(1, {"revision": self._policy_revision(),
                                "constitutional_hash": self._hash})]

    def _obs_instance(self, _: CallbackOptions) -> Observations:
        return [Observation(1, self._instance)]

    def _obs_database(self, _: CallbackOptions) -> Observations:
        if self._database is None:
            return []
        return [Observation(1 if self._database[0]() else 0)]


class NullTelemetry:
    """Records nothing; for tests and tools. Same methods as :class:`Metrics`."""

    def decision_made(self, decision: Decision, *, engine_us: float | None) -> None:
        pass

    def hash_mismatch(self) -> None:
        pass

    def shadow_evaluated(self, *, transition: str) -> None:
        pass

    def shadow_dropped(self) -> None:
        pass

    def policy_rolled_back(self) -> None:
        pass

    def audit_refused(self) -> None:
        pass

    def escalation_created(self, *, reason: str) -> None:
        pass

    def escalation_limited(self) -> None:
        pass

    def set_open_escalations(self, counts: Mapping[tuple[str, str], int]) -> None:
        pass

    def escalation_resolved(self, *, reason: str, outcome: str, duration_s: float) -> None:
        pass

    def audit_shipped(self, *, records: int, duration_s: float) -> None:
        pass

    def audit_checkpoint(self, *, ok: bool) -> None:
        pass

    def watch_audit_journal(self, *, backlog_records: Callable[[], int],
                            ship_lag_s: Callable[[], float]) -> None:
        pass

    def watch_audit_shipper(self, shipper: ShipperHealth) -> None:
        pass

    def watch_cache(self, *, tier: str, stats: CacheCounters) -> None:
        pass

    def watch_policy(self, *, revision: Callable[[], str]) -> None:
        pass

    def watch_readiness(self, ready: Callable[[], bool]) -> None:
        pass

    def watch_tasks(self, *, states: Callable[[], Sequence[TaskHealth]],
                    note: Callable[[], str]) -> None:
        pass

    def watch_database(self, *, reachable: Callable[[], bool], note: Callable[[], str]) -> None:
        pass


def _named(serve: Callable[[], None]) -> Callable[[], None]:
    """``serve`` run under the thread's own name in the OS (see acgs.os_threads)."""
    def run() -> None:
        name_os_thread()
        serve()
    return run
