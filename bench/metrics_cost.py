"""What metrics cost per decision: ``python3 bench/metrics_cost.py [--seconds 2] [--rounds 5]``.

Measures, for :class:`acgs.metrics.Metrics`, :class:`acgs.metrics.NullTelemetry`
and, for comparison, the obvious design with synchronous OpenTelemetry SDK
instruments (one counter and two histograms per decision):

1. µs per ``decision_made`` call, on a realistic mix of decisions;
2. throughput, in decisions per CPU-second, of a loop that simulates 100 µs
   decisions (burning 100 µs of CPU, like a CPU-bound engine) with a scrape of the
   exposition every second, and the throughput lost relative to NullTelemetry.
   The budget is 5 %.

Not a test: numbers depend on the machine. Run it from the repository root.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "service"))

from acgs.domain.model import Decision, Effect, Severity, Violation
from acgs.metrics import LATENCY_BUCKETS_S, Metrics, NullTelemetry
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

DECISION_US = 100


def _decision(effect: Effect, *, cached: bool, principles: tuple[str, ...] = ()) -> Decision:
    violations = tuple(Violation(p, Severity.HIGH, "m") for p in principles)
    return Decision(decision_id="d", request_id="r", effect=effect, violations=violations,
                    policy_revision="rev", constitutional_hash="cdd01ef066bc6cf2", cached=cached,
                    latency_us=180, decided_at_ns=0)


MIX = [_decision(Effect.ALLOW, cached=True)] * 6 + [
    _decision(Effect.ALLOW, cached=False),
    _decision(Effect.DENY, cached=True, principles=("tenant_isolation",)),
    _decision(Effect.DENY, cached=False, principles=("role_permissions", "priority_ceiling")),
    _decision(Effect.ESCALATE, cached=False, principles=("high_impact",)),
]


class NaiveOtel:
    """Synchronous SDK instruments on the hot path: the design metrics.py avoids."""

    def __init__(self) -> None:
        buckets = ExplicitBucketHistogramAggregation(LATENCY_BUCKETS_S)
        views = [View(instrument_type=Histogram, aggregation=buckets)]
        self.provider = MeterProvider(shutdown_on_exit=False, views=views)
        meter = self.provider.get_meter("bench")
        self.decisions = meter.create_counter("acgs_decisions")
        self.violations = meter.create_counter("acgs_constitutional_violations")
        self.latency = meter.create_histogram("acgs_decision_duration_seconds", unit="s")
        self.engine = meter.create_histogram("acgs_engine_evaluation_duration_seconds", unit="s")

    def decision_made(self, decision: Decision, *, engine_us: float | None) -> None:
        cached = "true" if decision.cached else "false"
        self.decisions.add(1, {"effect": decision.effect.value, "cached": cached})
        self.latency.record(decision.latency_us * 1e-6, {"cached": cached})
        if engine_us is not None:
            self.engine.record(engine_us * 1e-6)
        if decision.effect is not Effect.ALLOW:
            for v in decision.violations:
                self.violations.add(1, {"principle": v.principle, "severity": v.severity.value})


Record = Callable[[Decision], None]


def _recorder(sink: Metrics | NullTelemetry | NaiveOtel) -> Record:
    def record(d: Decision) -> None:
        sink.decision_made(d, engine_us=None if d.cached else 90.0)
    return record


def per_call_us(record: Record, n: int = 200_000) -> float:
    mix, k = MIX, len(MIX)
    start = time.perf_counter_ns()
    for i in range(n):
        record(mix[i % k])
    return (time.perf_counter_ns() - start) / n / 1000


def throughput(record: Record, seconds: float, scrape: Callable[[], object] | None) -> float:
    """Decisions per CPU-second of a loop whose decisions each burn DECISION_US of CPU.

    CPU time (this process, the scrape thread included), not wall time, so other
    processes on a shared machine do not move the result.
    """
    stop = threading.Event()
    scraper = threading.Thread(target=_scrape_every_second, args=(scrape, stop), daemon=True)
    if scrape is not None:
        scraper.start()
    mix, k, n = MIX, len(MIX), 0
    cpu, wall = time.thread_time_ns, time.perf_counter_ns
    end = wall() + int(seconds * 1e9)
    cpu_start = time.process_time()
    while wall() < end:
        busy_until = cpu() + DECISION_US * 1000
        while cpu() < busy_until:
            pass
        record(mix[n % k])
        n += 1
    stop.set()
    return n / (time.process_time() - cpu_start)


def _scrape_every_second(scrape: Callable[[], object] | None, stop: threading.Event) -> None:
    while scrape is not None and not stop.wait(1.0):
        scrape()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    metrics = Metrics(address="127.0.0.1:0", instance_id="bench")
    sinks: dict[str, tuple[Record, Callable[[], object] | None]] = {
        "NullTelemetry": (_recorder(NullTelemetry()), None),
        "Metrics": (_recorder(metrics), metrics.render),
        "naive OTel sync": (_recorder(NaiveOtel()), None),
    }
    print(f"python {sys.version.split()[0]}; decision mix of {len(MIX)} (60 % cached ALLOW)")
    for name, (record, _) in sinks.items():
        best = min(per_call_us(record) for _ in range(args.rounds))
        print(f"  {name:16s} {best:6.2f} µs per decision_made")
    rates: dict[str, list[float]] = {name: [] for name in sinks}
    for _ in range(args.rounds):  # interleaved, so drift hits every sink alike
        for name, (record, scrape) in sinks.items():
            rates[name].append(throughput(record, args.seconds, scrape))
    base = statistics.median(rates["NullTelemetry"])
    print(f"simulated {DECISION_US} µs decisions, median of {args.rounds} x {args.seconds:g} s:")
    for name, values in rates.items():
        rate = statistics.median(values)
        spread = f"{min(values):.0f}..{max(values):.0f}"
        print(f"  {name:16s} {rate:8.0f} decisions/CPU-s  cost {100 * (1 - rate / base):5.2f} %"
              f"  (range {spread})")
    metrics.close()


if __name__ == "__main__":
    main()
