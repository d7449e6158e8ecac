"""``make bench`` → ``python3 -m bench.run``: how fast is a decision, next to an empty call?

First, server CPU per call at 1,000/s against a bare grpc.aio server in its own process,
by thread (bench/cost.py: cache hit, evaluated, Zipf; ``--no-cost`` skips it). After the
ladder, the shadow's cost (bench/shadow_cost.py: server CPU per decision with
no shadow, ``--sample 0.1`` and ``--sample 1``; ``--shadow`` runs only that,
``--no-shadow`` skips it).

Modes: the scenario ladder (default, ~5 min per target; ``--quick`` ~1), ``--soak N``
(memory over N decisions) and ``--profile`` (py-spy on the uncached path).
Servers are real ``acgs serve`` processes on free ports; load comes from
:mod:`bench.loadgen` (open loop, latency from the scheduled send time). Each scenario
runs against every target of ``--targets``: the server's own port (``direct``) and
HAProxy in front of it (``haproxy``, :mod:`bench.edge`), one after the other.
Writes bench/results/bench.json, latency.png, and prints a README-ready table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import cost, h2load_check, profile, report, scenarios, shadow_cost, soak, workloads
from bench.edge import TARGETS, endpoint
from bench.loadgen import Driver, percentile
from bench.scenarios import SCENARIOS, SERVERS, Cursor, Plan
from bench.server import REPO, Server, features, total

HEADERS = workloads.HEADERS
BASELINE_NOTE = (
    "Baseline = grpc.health.v1.Health/Check on the same grpc.aio server, in the same process, "
    "as Decide: identical transport, HTTP/2, grpc.aio dispatch and protobuf framing, with a "
    "handler that does nothing but return SERVING. The difference to it is the decision path.")


GENERATOR_NOTE = (
    "Load: bench.loadgen, open loop on one HTTP/2 connection (bench.h2grpc: a minimal gRPC "
    "client, ~50 µs CPU per call where grpc.aio needs ~250), paced by a sleeping thread; "
    "latency runs from each call's scheduled send time and every call's grpc-status trailer "
    "is checked, and the server's acgs_decisions_total must count exactly the OK calls. "
    "Not h2load: its --rps sends in 10 ms bursts and starts the clock at the actual send "
    "(see the h2load check below).")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="~1 minute: short steps, fewer rates")
    p.add_argument("--scenarios", default=",".join(s.key for s in SCENARIOS),
                   help="comma-separated subset of: %(default)s")
    p.add_argument("--targets", default=",".join(TARGETS),
                   help="where load goes, comma-separated: 'direct' (the server's port), "
                        "'haproxy' (HAProxy's h2c listener in front of it; bench/edge.py); "
                        "--soak and --profile use the first (default: %(default)s)")
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin the server to the last CPU and the load generator and "
                        "HAProxy to CPU 0")
    p.add_argument("--out", type=Path, default=report.RESULTS, help="results directory")
    p.add_argument("--soak", type=int, metavar="N", help="memory soak: send N decisions")
    p.add_argument("--soak-every", type=int, default=50_000, help="RSS sample period (decisions)")
    p.add_argument("--soak-workload", choices=("distinct", "zipf"), default="distinct")
    p.add_argument("--shadow", action="store_true",
                   help="only the shadow's cost (no shadow, --sample 0.1, --sample 1)")
    p.add_argument("--no-shadow", action="store_true",
                   help="skip the shadow's cost after the ladder")
    p.add_argument("--no-cost", action="store_true",
                   help="skip the CPU-per-call comparison with a bare grpc.aio server at "
                        "1,000/s (bench/cost.py) before the ladder")
    p.add_argument("--profile", action="store_true",
                   help="py-spy the server under load (--profile-workload, default uncached)")
    p.add_argument("--profile-workload", choices=("distinct", "same"), default="distinct",
                   help="distinct: every input new (evaluated); same: one input (cache hit)")
    p.add_argument("--profile-rate", type=float, default=1000.0)
    p.add_argument("--profile-seconds", type=int, default=20)
    p.add_argument("--profile-hz", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--profile-native", action="store_true",
                   help="py-spy --native: C/Cython frames too, but pauses the server per sample")
    args = p.parse_args(argv)
    args.targets = [t for t in args.targets.split(",") if t]
    unknown = set(args.targets) - set(TARGETS)
    if unknown or not args.targets:
        p.error(f"--targets: expected some of {', '.join(TARGETS)}, got {args.targets}")
    return args


def pinning(args: argparse.Namespace) -> tuple[set[int] | None, set[int] | None, str]:
    """(the server's CPUs, the CPUs of everything else: load generator, HAProxy, database; a
    note); None: not pinned."""
    cpus = sorted(os.sched_getaffinity(0))
    if args.no_pin or len(cpus) < 2:
        return None, None, f"not pinned: server, load generator and HAProxy share CPUs {cpus}"
    os.sched_setaffinity(0, {cpus[0]})
    return {cpus[-1]}, {cpus[0]}, (f"server pinned to CPU {cpus[-1]}; load generator, HAProxy, "
                                   f"the embedded PostgreSQL (and py-spy) to CPU {cpus[0]}")


def meta(args: argparse.Namespace, pin_note: str) -> dict[str, Any]:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                         text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                .splitlines() if ln.startswith("model name")), platform.processor())
    load = os.getloadavg()[0]
    note = (f"{os.cpu_count()} CPUs ({cpu}) shared by server and load generator; {pin_note}; "
            f"load average at start {load:.2f} (other processes were running)")
    return {"command": " ".join([sys.executable, "-m", "bench.run", *sys.argv[1:]]),
            "git": rev + ("+dirty" if dirty else ""), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "python": platform.python_version(), "cpus": os.cpu_count(), "cpu_model": cpu,
            "pinning": pin_note, "loadavg_start": load, "note": note, "baseline": BASELINE_NOTE,
            "targets": args.targets, "quick": args.quick,
            "generator": GENERATOR_NOTE}


async def calibrate(host: str, port: int, server: Server, n: int,
                    target: str) -> dict[str, Any]:
    """Closed-loop Health calls: the generator's CPU per call against the server's."""
    driver = Driver(host, port, scenarios.HEALTH, headers=server.headers(HEADERS))
    await driver.open()
    try:
        body = scenarios.SCENARIOS[0].body("c")
        await driver.blast(n // 5, body, 0)
        cpu0 = server.cpu_s()
        s = await driver.blast(n, body, 0)
        server_us = (server.cpu_s() - cpu0) / n * 1e6
    finally:
        driver.close()
    client_us = s.client_cpu_s / n * 1e6
    out = {"calls": n, "target": target, "closed_loop_rate": s.rate, "errors": s.errors,
           "client_cpu_us_per_call": client_us, "server_cpu_us_per_call": server_us,
           "headroom": server_us / client_us if client_us else None}
    print(f"calibration: generator {client_us:.0f} µs CPU per call vs server {server_us:.0f} µs "
          f"per empty call ({out['headroom']:.1f}x headroom); closed loop {s.rate:.0f}/s "
          f"({target})",
          flush=True)
    return out


def start_server(key: str, env: dict[str, str], cpus: set[int] | None,
                 gen_cpus: set[int] | None) -> Server:
    server = Server(key, env, cpus=cpus).start()
    server.pin_helpers(gen_cpus)  # the embedded PostgreSQL stands in for a database host
    auth = "agent token" if "authorization" in server.headers({}) else "no token"
    print(f"server {key} (pid {server.pid}, env {env or 'defaults'}) SERVING; RSS "
          f"{server.rss_mb():.0f} MB; calling with {auth}", flush=True)
    return server


def reach(server: Server, target: str, gen_cpus: set[int] | None) -> tuple[str, int]:
    """``endpoint`` with a line about the HAProxy it started, if it did."""
    started = server.edge is None
    host, port = endpoint(server, target, cpus=gen_cpus)
    if target == "haproxy" and started and server.edge is not None:
        print(f"haproxy (pid {server.edge.pid}, {server.edge.threads()} thread(s), CPUs "
              f"{sorted(os.sched_getaffinity(server.edge.pid))}) in front of server "
              f"{server.name}: h2c on {host}:{port}, server UP", flush=True)
    return host, port


async def run_ladders(args: argparse.Namespace, cpus: set[int] | None,
                      gen_cpus: set[int] | None, results: dict[str, Any]) -> None:
    """Per server configuration: each wanted scenario against each target in turn (so the
    two targets of a scenario meet the server at nearly the same age)."""
    plan = Plan(warmup_s=0.4, measure_s=1.0, rates=scenarios.RATES["quick"], refine=False,
                retry=False) if args.quick else Plan(warmup_s=1.0, measure_s=3.0,
                                                     rates=scenarios.RATES["full"], refine=True,
                                                     retry=True)
    wanted = [s for s in SCENARIOS if s.key in args.scenarios.split(",")]
    nonce = f"{os.getpid() % 36**2:02x}"[-2:]
    for server_key in dict.fromkeys(s.server for s in wanted):
        server = start_server(server_key, SERVERS[server_key], cpus, gen_cpus)
        try:
            reached = {t: reach(server, t, gen_cpus) for t in args.targets}
            if server_key == "default":
                first = args.targets[0]
                host, port = reached[first]
                results["calibration"] = await calibrate(host, port, server,
                                                         1500 if args.quick else 4000, first)
                results["h2load_check"] = {**h2load_check.check(host, port, 1000,
                                                                1.0 if args.quick else 3.0),
                                           "target": first}
                print(h2load_check.render(results["h2load_check"]), flush=True)
            for i, scen in enumerate(s for s in wanted if s.server == server_key):
                print(f"{scen.key}: {scen.title}", flush=True)
                for t, target in enumerate(args.targets):
                    # distinct tags per target: uncached bodies never repeat on one server
                    results[report.KEYS[target]][scen.key] = await run_scenario(
                        args, plan, server, scen, target, reached[target], f"{nonce}{t}{i}")
            found = features(server)
            results["servers"][server_key] = {"env": SERVERS[server_key], **found,
                                              "rss_end_mb": server.rss_mb()}
            if server_key == "default":
                results["features"] = found
        finally:
            server.stop()


async def run_scenario(args: argparse.Namespace, plan: Plan, server: Server,
                       scen: scenarios.Scenario, target: str, address: tuple[str, int],
                       tag: str) -> dict[str, Any]:
    driver = Driver(*address, scen.path, headers=server.headers(HEADERS))
    await driver.open()
    try:
        prewarm = (2000 if args.quick else 6000) if scen.key == "zipf" else 0
        return await scenarios.ladder(driver, server, scen, Cursor(), plan, tag,
                                      prewarm=prewarm, target=target,
                                      edge=server.edge if target == "haproxy" else None)
    finally:
        driver.close()


async def run_profile(args: argparse.Namespace, cpus: set[int] | None,
                      gen_cpus: set[int] | None) -> dict[str, Any]:
    server = start_server("profile", {}, cpus, gen_cpus)
    try:
        host, port = reach(server, args.targets[0], gen_cpus)
        driver = Driver(host, port, scenarios.DECIDE, headers=server.headers(HEADERS))
        await driver.open()
        secs = args.profile_seconds
        body = (workloads.same("p") if args.profile_workload == "same"
                else scenarios.SCENARIOS[1].body("p"))
        load = asyncio.create_task(driver.run(args.profile_rate, secs * 1.5 + 6, body, 0))
        await asyncio.sleep(3)
        m0, cpu0, threads0 = server.metrics(), server.cpu_s(), server.thread_cpu_s()
        raw = args.out / "profile.txt"
        summary = await profile.record(server.pid, raw, secs, fmt="raw",
                                       native=args.profile_native, rate=args.profile_hz)
        threads1, cpu, m1 = server.thread_cpu_s(), server.cpu_s() - cpu0, server.metrics()
        decided = total(m1, "acgs_decisions_total") - total(m0, "acgs_decisions_total")
        thread_cpu = {t: c - threads0.get(t, 0.0) for t, c in threads1.items()}
        svg = await profile.record(server.pid, args.out / "profile.svg", max(5, secs // 2),
                                   fmt="flamegraph", native=args.profile_native)
        sample = await load
        driver.close()
    finally:
        server.stop()
    us = cpu / max(decided, 1) * 1e6
    result = {"rate": args.profile_rate, "target": args.targets[0], "decisions": decided,
              "workload": args.profile_workload,
              "server_cpu_us_per_decision": us,
              "load_errors": sample.error_names(), "py_spy": [summary, svg],
              "native": args.profile_native, "thread_cpu_s": thread_cpu,
              "load_p99_ms": percentile(sample.latency_s, 99) * 1e3,
              **profile.analyse(raw.read_text(), thread_cpu, decided)}
    mode = "native, pausing" if args.profile_native else "Python frames, non-blocking"
    what = "uncached" if args.profile_workload == "distinct" else "cache hit"
    print(f"profile at {args.profile_rate:.0f}/s {what} ({mode} py-spy at {args.profile_hz} Hz): "
          f"{decided:.0f} decisions in {secs} s, server {us:.0f} µs CPU per decision, load "
          f"p99 {result['load_p99_ms']:.1f} ms, errors {sample.error_names() or 'none'}\n")
    print(profile.render(result))
    return result


async def amain(args: argparse.Namespace) -> int:
    cpus, gen_cpus, pin_note = pinning(args)
    results: dict[str, Any] = {"meta": meta(args, pin_note), "features": {}, "servers": {},
                               "calibration": {}, **{report.KEYS[t]: {} for t in TARGETS}}
    print("\n".join([results["meta"]["note"], BASELINE_NOTE, GENERATOR_NOTE, ""]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.profile:
        report.write_json({**results, "profile": await run_profile(args, cpus, gen_cpus)},
                          args.out / "profile.json")
        return 0
    if args.soak:
        server = start_server("soak", {}, cpus, gen_cpus)
        try:
            host, port = reach(server, args.targets[0], gen_cpus)
            out = await soak.soak(server, host, port, args.soak, every=args.soak_every,
                                  workload=args.soak_workload,
                                  headers=server.headers(HEADERS))
        finally:
            server.stop()
        report.write_json({**results, "soak": {**out, "target": args.targets[0]}},
                          args.out / "soak.json")
        return 0 if out["errors"] == 0 else 1
    if args.shadow:
        report.write_json({**results, "shadow": await run_shadow(args, cpus, gen_cpus)},
                          args.out / "shadow.json")
        return 0
    started = time.monotonic()
    if not args.no_cost:
        print("cost: server CPU per call at 1,000/s against a bare grpc.aio server "
              "(bench/cost.py)", flush=True)
        results["cost"] = await cost.cost(seconds=3.0 if args.quick else 10.0,
                                          warmup=1.0 if args.quick else 3.0,
                                          cpus=cpus, gen_cpus=gen_cpus)
    await run_ladders(args, cpus, gen_cpus, results)
    if not args.no_shadow:
        results["shadow"] = await run_shadow(args, cpus, gen_cpus)
    for target in TARGETS:  # both keys always there; a target that did not run has Nones
        results[report.RATIO_KEYS[target]] = report.ratios(results, target)
    results["meta"].update(elapsed_s=time.monotonic() - started, loadavg_end=os.getloadavg()[0])
    report.write_json(results, args.out / "bench.json")
    report.plot(results, args.out / "latency.png")
    print("\nAll steps:\n\n" + report.steps_table(results) + "\n")
    print(report.markdown(results))
    if "cost" in results:
        print("\nServer CPU per call against a bare grpc.aio server (bench/cost.py):\n\n"
              + cost.markdown(results["cost"]))
    if "shadow" in results:
        print("\nShadow evaluation cost (uncached Decide):\n\n"
              + shadow_cost.markdown(results["shadow"]))
    print(f"\n{results['meta']['note']}; load average at end {os.getloadavg()[0]:.2f}; "
          f"took {results['meta']['elapsed_s']:.0f} s.\nWrote {args.out / 'bench.json'} and "
          f"{args.out / 'latency.png'}")
    return 0


async def run_shadow(args: argparse.Namespace, cpus: set[int] | None,
                     gen_cpus: set[int] | None) -> dict[str, Any]:
    """The shadow's cost on its own server (bench/shadow_cost.py), first target only."""
    print("shadow: server CPU per uncached decision, no shadow vs --sample 0.1 vs --sample 1",
          flush=True)
    server = start_server("shadow", {"ACGS_POLICY_SYNC_S": "0.5"}, cpus, gen_cpus)
    try:
        host, port = reach(server, args.targets[0], gen_cpus)
        out = await shadow_cost.shadow_cost(server, host, port, headers=server.headers(HEADERS),
                                            seconds=3.0 if args.quick else 8.0,
                                            rounds=1 if args.quick else 2)
    finally:
        server.stop()
    print(shadow_cost.markdown(out), flush=True)
    return {**out, "target": args.targets[0]}


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(amain(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
