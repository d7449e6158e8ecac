"""The scenarios, and the ladder of offered rates each one climbs.

Each step warms up at its rate, then measures: client-side latency from the
scheduled send time and every call's gRPC status; server-side the deltas of
``acgs_decisions_total`` (by cached / fail_safe), ``acgs_cache_*``, process
CPU time and RSS. A step *passes* when every call was OK, no decision was a
fail-safe DENY, the server counted exactly the decisions the client saw
answered, the achieved rate is at least 95 % of the offered one and p99 is
within the scenario's limit (5 ms; 50 ms per DecideBatch call of 100). Through HAProxy
(``edge`` given) a step also records HAProxy's CPU time per decision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bench import workloads
from bench.edge import Edge
from bench.loadgen import Check, Driver, Sample, percentile
from bench.server import Metrics, Server, total

DECIDE = "/acgs.v1.Governance/Decide"
BATCH = "/acgs.v1.Governance/DecideBatch"
HEALTH = "/grpc.health.v1.Health/Check"
BATCH_SIZE = 100


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    path: str
    server: str  # key of SERVERS: which server configuration it runs on
    batch: int = 1
    p99_limit_ms: float = 5.0

    def body(self, tag: str) -> workloads.Body:
        if self.key == "baseline":
            return workloads.health()
        if self.key == "zipf":
            return workloads.zipf(tag)
        if self.batch > 1:
            return workloads.batch(tag, self.batch)
        return workloads.distinct(tag)

    def check(self) -> Check:
        if self.key == "baseline":
            return workloads.check_health
        if self.batch > 1:
            return lambda raw: workloads.check_batch(raw, self.batch)
        return workloads.check_decision


SERVERS: dict[str, dict[str, str]] = {
    "default": {},  # audit on, cache on, metrics on: the full path
    "audit_off": {"ACGS_AUDIT_ENABLED": "false"},
}

SCENARIOS = (
    Scenario("baseline", "baseline: grpc.health.v1.Health/Check (empty handler, same server)",
             HEALTH, "default"),
    Scenario("uncached", "Decide, uncached (every request distinct), audit on", DECIDE,
             "default"),
    Scenario("zipf", "Decide, Zipf s=1.1 over 10,000 requests, cache on, audit on", DECIDE,
             "default"),
    Scenario("batch", f"DecideBatch x{BATCH_SIZE} (rates in decisions/s), audit on", BATCH,
             "default", batch=BATCH_SIZE, p99_limit_ms=50.0),
    Scenario("audit_off", "Decide, uncached, ACGS_AUDIT_ENABLED=false", DECIDE, "audit_off"),
)

RATES = {
    "full": {"health": (250, 500, 1000, 1500, 2000, 3000, 4000, 5000, 6000, 8000, 10000),
             "decide": (250, 500, 1000, 1500, 2000, 2500, 3000, 4000, 5000, 6000, 8000),
             "batch": (1000, 2000, 3000, 4000, 6000, 8000, 12000, 16000)},
    "quick": {"health": (500, 1000, 2000, 4000, 8000),
              "decide": (250, 500, 1000, 2000, 4000),
              "batch": (1000, 2000, 4000, 8000)},
}


@dataclass(frozen=True)
class Plan:
    warmup_s: float
    measure_s: float
    rates: dict[str, tuple[int, ...]]
    refine: bool  # one extra step between the last pass and the first failure
    retry: bool  # repeat a failing step once before stopping (the machine is shared)


def rates_for(plan: Plan, scenario: Scenario) -> tuple[int, ...]:
    kind = "health" if scenario.key == "baseline" else "batch" if scenario.batch > 1 else "decide"
    return plan.rates[kind]


class Cursor:
    """Hands out request indexes so no two calls of one server repeat a body."""

    def __init__(self) -> None:
        self.next = 0

    def take(self, n: int) -> int:
        start, self.next = self.next, self.next + n
        return start


def _deltas(m0: Metrics, m1: Metrics) -> dict[str, Any]:
    def d(name: str, **labels: str) -> float:
        return total(m1, name, **labels) - total(m0, name, **labels)

    tiers = sorted({dict(lbl).get("tier", "") for (n, lbl) in m1 if n == "acgs_cache_hits_total"})
    tier_rates: dict[str, float | None] = {}
    for tier in tiers:
        hits = d("acgs_cache_hits_total", tier=tier)
        misses = d("acgs_cache_misses_total", tier=tier)
        tier_rates[tier] = hits / (hits + misses) if hits + misses else None
    return {"decisions": d("acgs_decisions_total"),
            "cached": d("acgs_decisions_total", cached="true"),
            "fail_safe": d("acgs_decisions_total", fail_safe="true"),
            "not_allow": d("acgs_decisions_total") - d("acgs_decisions_total", effect="ALLOW"),
            "hash_mismatches": d("acgs_constitutional_hash_mismatches_total"),
            "tier_hit_rate": tier_rates}


def summarize(scenario: Scenario, sample: Sample, server_info: dict[str, Any]) -> dict[str, Any]:
    """One step as a flat record (latencies in ms, rates in decisions/s)."""
    lat = [x * 1000 for x in sample.latency_s]
    lag = [x * 1000 for x in sample.lag_s]
    decisions = server_info["decisions"]
    is_decide = scenario.key != "baseline"
    expected = sample.ok * scenario.batch
    per_decision = max(expected if is_decide else sample.ok, 1)  # baseline: per call
    haproxy_cpu_s = server_info.get("haproxy_cpu_s")
    rec: dict[str, Any] = {
        "offered": sample.rate * scenario.batch, "calls": sample.calls, "ok": sample.ok,
        "errors": sample.errors, "error_codes": sample.error_names(),
        "achieved": sample.achieved * scenario.batch,
        "p50_ms": percentile(lat, 50), "p90_ms": percentile(lat, 90),
        "p99_ms": percentile(lat, 99), "p999_ms": percentile(lat, 99.9),
        "max_ms": max(lat) if lat else math.nan,
        "gen_lag_p50_ms": percentile(lag, 50), "gen_lag_p99_ms": percentile(lag, 99),
        "client_cpu_us_per_call": sample.client_cpu_s / sample.calls * 1e6,
        "server_decisions": decisions if is_decide else None,
        "consistent": (decisions == expected) if is_decide else True,
        "fail_safe": server_info["fail_safe"], "not_allow": server_info["not_allow"],
        "hit_rate": (server_info["cached"] / decisions) if is_decide and decisions else None,
        "tier_hit_rate": server_info["tier_hit_rate"],
        "server_cpu_util": server_info["cpu_s"] / max(sample.elapsed_s, 1e-9),
        "cpu_us_per_decision": server_info["cpu_s"] / per_decision * 1e6,
        "haproxy_cpu_us_per_decision": None if haproxy_cpu_s is None
        else haproxy_cpu_s / per_decision * 1e6,
        "rss_mb": server_info["rss_mb"], "problems": sample.problems[:5],
        "helper_cpu_us_per_decision": server_info["helper_cpu_s"] / max(expected, 1) * 1e6
        if is_decide else None,
    }
    rec["pass"] = bool(
        rec["errors"] == 0 and not rec["fail_safe"] and not rec["not_allow"] and rec["consistent"]
        and not sample.problems
        and rec["achieved"] >= 0.95 * rec["offered"] and rec["p99_ms"] <= scenario.p99_limit_ms)
    return rec


async def step(driver: Driver, server: Server, scenario: Scenario, body: workloads.Body,
               cursor: Cursor, rate: float, plan: Plan, edge: Edge | None) -> dict[str, Any]:
    call_rate = rate / scenario.batch
    warm = max(1, round(call_rate * plan.warmup_s))
    await driver.run(call_rate, warm / call_rate, body, cursor.take(warm))
    m0, cpu0, helper0 = server.metrics(), server.cpu_s(), server.helper_cpu_s()
    edge0 = edge.cpu_s() if edge else 0.0
    n = max(1, round(call_rate * plan.measure_s))
    sample = await driver.run(call_rate, n / call_rate, body, cursor.take(n),
                              check=scenario.check())
    cpu1, helper1 = server.cpu_s(), server.helper_cpu_s()
    info = {**_deltas(m0, server.metrics()), "cpu_s": cpu1 - cpu0, "rss_mb": server.rss_mb(),
            "helper_cpu_s": helper1 - helper0,
            "haproxy_cpu_s": edge.cpu_s() - edge0 if edge else None}
    return summarize(scenario, sample, info)


def _line(key: str, r: dict[str, Any]) -> str:
    hit = "" if r["hit_rate"] is None else f" hit {r['hit_rate']:.0%}"
    errs = f" ERR {r['error_codes']}" if r["errors"] else ""
    flags = "" if r["consistent"] else " SERVER-COUNT-MISMATCH"
    flags += f" fail_safe {r['fail_safe']:.0f}" if r["fail_safe"] else ""
    flags += " (generator lagging)" if r["gen_lag_p99_ms"] > 1.0 else ""
    edge = r["haproxy_cpu_us_per_decision"]
    edge_cpu = f" +haproxy {edge:4.0f} us" if edge is not None else ""
    return (f"  {key:<16} {r['offered']:>7.0f}/s -> {r['achieved']:>7.0f}/s  "
            f"p50 {r['p50_ms']:6.2f}  p99 {r['p99_ms']:7.2f}  p99.9 {r['p999_ms']:7.2f} ms  cpu "
            f"{r['cpu_us_per_decision']:6.0f} us{edge_cpu}  rss {r['rss_mb']:.0f} MB"
            f"{hit}{errs}{flags}  {'PASS' if r['pass'] else 'fail'}")


async def ladder(driver: Driver, server: Server, scenario: Scenario, cursor: Cursor,
                 plan: Plan, tag: str, *, prewarm: int = 0, target: str = "direct",
                 edge: Edge | None = None) -> dict[str, Any]:
    """Climb the rates until a step fails (always measuring 1,000/s if the server keeps up).
    ``target`` names where ``driver`` sends (``edge``: the HAProxy it goes through, if any).

    The highest passing rate is the result; steps that failed below it (noise on a shared
    machine) are listed in ``failed_below_max``."""
    body = scenario.body(tag)
    if prewarm:  # e.g. fill the decision cache before the first Zipf step
        await driver.blast(prewarm, body, cursor.take(prewarm))
    steps: list[dict[str, Any]] = []
    best: float | None = None
    first_fail: float | None = None
    name = scenario.key if target == "direct" else f"{scenario.key}@{target}"

    async def measure(rate: float) -> dict[str, Any]:
        rec = await step(driver, server, scenario, body, cursor, rate, plan, edge)
        if not rec["pass"] and plan.retry and rec["achieved"] >= 0.8 * rate:
            print(_line(name, rec) + "  -> retrying once", flush=True)
            rec = {**await step(driver, server, scenario, body, cursor, rate, plan, edge),
                   "retried": True}
        print(_line(name, rec), flush=True)
        steps.append(rec)
        return rec

    for rate in rates_for(plan, scenario):
        rec = await measure(rate)
        if rec["pass"]:
            best = rate
            continue
        first_fail = first_fail or rate
        saturated = rec["achieved"] < 0.8 * rate or rec["errors"] > 0
        if saturated or rate >= 1000:
            break
    if plan.refine and best is not None and first_fail is not None and first_fail > best * 1.2:
        mid = round((best + first_fail) / 2 / 50) * 50
        if (await measure(mid))["pass"]:
            best = mid
    steps.sort(key=lambda r: r["offered"])
    noisy = [r["offered"] for r in steps if best is not None and not r["pass"]
             and r["offered"] < best]
    return {"title": scenario.title, "path": scenario.path, "server": scenario.server,
            "target": target,
            "p99_limit_ms": scenario.p99_limit_ms, "max_sustainable": best,
            "failed_below_max": noisy, "steps": steps}
