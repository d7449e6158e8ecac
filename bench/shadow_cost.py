"""The shadow's cost (issue 18): server CPU per decision with no shadow, ``--sample 0.1`` and 1.

One real server (audit on, its embedded PostgreSQL), uncached Decide at a fixed open-loop
rate well below capacity; per phase: StartShadow (or StopShadow), wait until the server
reports it follows the plan, warm up, then measure the server process's CPU seconds (every
thread: the shadow's private engine included) per decision, latency percentiles, and the
shadow's own counters (evaluated, dropped). Phases run ``rounds`` times in turn (off, 0.1,
1, off, ...) so drift on a shared machine hits each alike. The candidate is the project's
policy under another version name: the same rules, so the shadow's evaluations cost what a
real candidate's would and every difference count is 0.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import grpc
from acgs.v1 import policy_admin_pb2 as pb
from acgs.v1 import policy_admin_pb2_grpc as pb_grpc

from bench import workloads
from bench.loadgen import Driver, percentile
from bench.scenarios import DECIDE, Cursor
from bench.server import REPO, Server, total

PHASES = (0.0, 0.1, 1.0)  # 0: no shadow


def _admin(server: Server) -> tuple[pb_grpc.PolicyAdminStub, list[tuple[str, str]], Any]:
    text = (Path(server.env["ACGS_DATA_DIR"]) / "dev-tokens").read_text()
    m = re.search(r"ACGS_ADMIN_TOKEN=['\"]?([A-Za-z0-9_.-]+)", text)
    meta = [("authorization", f"Bearer {m.group(1)}")] if m else []
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    return pb_grpc.PolicyAdminStub(channel), meta, channel


def _candidate() -> pb.CreatePolicyVersionRequest:
    from acgs.entrypoints.policy_cli import read_policy_dir

    request = read_policy_dir(REPO / "policy")
    manifest = json.loads(request.manifest_json)
    manifest["version"] = "shadow-bench"
    request.manifest_json = json.dumps(manifest)
    return request


def _follow(stub: pb_grpc.PolicyAdminStub, meta: list[tuple[str, str]], sample: float,
            revision: str) -> None:
    """Start (sample > 0) or stop the shadow; wait until the server follows the plan."""
    if sample <= 0:
        stub.StopShadow(pb.StopShadowRequest(), metadata=meta, timeout=10)
        time.sleep(2.5)  # a round of reconciliation (ACGS_POLICY_SYNC_S) and then some
        return
    stub.StartShadow(pb.StartShadowRequest(revision=revision, sample=sample),
                     metadata=meta, timeout=10)
    deadline = time.monotonic() + 30
    while not stub.GetShadowReport(pb.GetShadowReportRequest(), metadata=meta,
                                   timeout=10).servers:
        if time.monotonic() > deadline:
            raise TimeoutError("the server did not start shadowing")
        time.sleep(0.2)


async def _phase(driver: Driver, server: Server, cursor: Cursor, tag: str, *, rate: float,
                 seconds: float) -> dict[str, Any]:
    body = workloads.distinct(tag)
    warm = max(1, round(rate * 1.0))
    await driver.run(rate, warm / rate, body, cursor.take(warm))
    m0, cpu0 = server.metrics(), server.cpu_s()
    n = max(1, round(rate * seconds))
    sample = await driver.run(rate, n / rate, body, cursor.take(n))
    cpu, m1 = server.cpu_s() - cpu0, server.metrics()

    def d(name: str) -> float:
        return total(m1, name) - total(m0, name)

    decisions = d("acgs_decisions_total")
    latency = [x * 1000 for x in sample.latency_s]
    return {"offered": rate, "calls": n, "ok": sample.ok, "errors": sample.errors,
            "decisions": decisions, "fail_safe": total(m1, "acgs_decisions_total",
                                                       fail_safe="true")
            - total(m0, "acgs_decisions_total", fail_safe="true"),
            "cpu_us_per_decision": cpu / max(decisions, 1) * 1e6,
            "p50_ms": percentile(latency, 50), "p99_ms": percentile(latency, 99),
            "shadow_evaluated": d("acgs_policy_shadow_evaluations_total"),
            "shadow_differences": d("acgs_policy_shadow_differences_total"),
            "shadow_dropped": d("acgs_policy_shadow_dropped_total")}


async def shadow_cost(server: Server, host: str, port: int, *, headers: dict[str, str],
                      rate: float = 300.0, seconds: float = 8.0,
                      rounds: int = 2) -> dict[str, Any]:
    """Measure every phase ``rounds`` times; return the runs and the mean per phase."""
    stub, meta, channel = _admin(server)
    driver = Driver(host, port, DECIDE, headers=headers)
    await driver.open()
    runs: list[dict[str, Any]] = []
    try:
        revision = stub.CreatePolicyVersion(_candidate(), metadata=meta, timeout=120).revision
        cursor = Cursor()
        for r in range(rounds):
            for p, sample in enumerate(PHASES):
                _follow(stub, meta, sample, revision)
                run = await _phase(driver, server, cursor, f"s{r}{p}", rate=rate,
                                   seconds=seconds)
                runs.append({"sample": sample, "round": r, **run})
                print(_line(runs[-1]), flush=True)
        _follow(stub, meta, 0.0, revision)
    finally:
        driver.close()
        channel.close()
    return {"rate": rate, "seconds": seconds, "rounds": rounds, "runs": runs,
            "summary": summarize(runs)}


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean CPU per decision per phase, and its increase over no shadow."""
    out: dict[str, dict[str, float]] = {}
    for sample in PHASES:
        mine = [r for r in runs if r["sample"] == sample]
        out[str(sample)] = {"cpu_us_per_decision": sum(r["cpu_us_per_decision"]
                                                       for r in mine) / len(mine),
                            "p99_ms": max(r["p99_ms"] for r in mine),
                            "shadow_evaluated": sum(r["shadow_evaluated"] for r in mine),
                            "shadow_dropped": sum(r["shadow_dropped"] for r in mine),
                            "errors": sum(r["errors"] for r in mine)}
    base = out[str(PHASES[0])]["cpu_us_per_decision"]
    for phase in out.values():
        phase["cpu_increase"] = phase["cpu_us_per_decision"] / base - 1 if base else 0.0
    return out


def _line(r: dict[str, Any]) -> str:
    label = "no shadow" if r["sample"] == 0 else f"--sample {r['sample']:g}"
    return (f"  shadow {label:<13} {r['offered']:.0f}/s  cpu {r['cpu_us_per_decision']:6.0f} us"
            f"/decision  p50 {r['p50_ms']:.2f}  p99 {r['p99_ms']:.2f} ms  shadowed "
            f"{r['shadow_evaluated']:.0f} (dropped {r['shadow_dropped']:.0f}, differ "
            f"{r['shadow_differences']:.0f})  errors {r['errors']}  fail_safe {r['fail_safe']:.0f}")


def markdown(result: dict[str, Any]) -> str:
    rows = ["| shadow | server CPU per decision | vs. no shadow | p99 (worst run) | shadowed "
            "| dropped |", "|---|---|---|---|---|---|"]
    for sample, s in result["summary"].items():
        label = "none" if float(sample) == 0 else f"`--sample {float(sample):g}`"
        rows.append(f"| {label} | {s['cpu_us_per_decision']:.0f} µs | "
                    f"{s['cpu_increase']:+.1%} | {s['p99_ms']:.2f} ms | "
                    f"{s['shadow_evaluated']:.0f} | {s['shadow_dropped']:.0f} |")
    return "\n".join(rows)
