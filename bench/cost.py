"""Server CPU per audited decision at one rate, against a bare grpc.aio server, by thread.

``python3 -m bench.cost`` (``make bench`` runs it first): the yardstick is
:mod:`bench.bare_server` — grpc.aio and ``grpc.health.v1`` in a process of its own,
nothing else — offered the same rate from the same generator on the same pinned
core, with the metadata every Decide call carries (``grpc-timeout``, the constitutional
hash; not the token, whose check is the service's own cost). grpc's synchronous server,
bare, is measured next to it for reference. Then one ``acgs serve`` (defaults: audit on,
cache on, metrics on, an agent token) is offered, at that rate, in turn:

* ``hit``: the same decision input every call (unique request ids), so every call
  after the first is a cache hit that still pays its durable audit record;
* ``evaluated``: every input distinct, so every call is evaluated by the engine;
* ``zipf``: Zipf s=1.1 over 10,000 inputs (the ladder's cached scenario).

For each it reports server CPU per call (every thread, from /proc), its ratio to the
yardstick's, p50/p99 from the scheduled send, the calls not OK, and the CPU per call
of each thread (by OS name: our threads name themselves, see acgs.os_threads; the
main thread runs the event loop). Every call must be OK and the server must count
exactly the OK calls as decisions, or the run says so.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections import defaultdict
from typing import Any

from bench import scenarios, workloads
from bench.loadgen import Driver, Sample, percentile
from bench.server import Server, total

HEADERS = workloads.HEADERS
SCENARIOS = ("hit", "evaluated", "zipf")
TITLES = {
    "bare": "bare grpc.aio server, Health/Check (own process): the yardstick",
    "bare_sync": "bare grpc synchronous server, 8 threads, Health/Check (own process)",
    "hit": "Decide, same input every call (cache hit), audit on",
    "evaluated": "Decide, every input distinct (evaluated), audit on",
    "zipf": "Decide, Zipf s=1.1 over 10,000 inputs, cache on, audit on",
}
# Goals of issue 19, as ratios to the bare server's CPU per call.
GOALS = {"hit": 1.6, "evaluated": 2.6}


def _body(key: str, tag: str) -> workloads.Body:
    if key == "hit":
        return workloads.same(tag)
    if key == "zipf":
        return workloads.zipf(tag)
    return workloads.distinct(tag)


def thread_group(tid: int, pid: int, name: str) -> str:
    """A thread's row in the table: the event loop, one of ours (by name), or grpc's."""
    if tid == pid:
        return "event loop (main thread)"
    if name.startswith("acgs-rego"):
        return "engine (acgs-rego-*)"
    if name.startswith("acgs-"):
        return name
    return f"other: {name}"


async def measure(server: Server, key: str, path: str, body: workloads.Body, rate: float,
                  seconds: float, warmup: float, *, headers: dict[str, str],
                  per_call: int = 1) -> dict[str, Any]:
    """Offer ``rate`` calls/s of ``body`` to ``path`` for ``warmup`` then ``seconds``: server
    CPU per call (all threads and by thread), latency, calls not OK. Unless ``key`` names a
    bare server, the server must count ``per_call`` decisions for each OK call."""
    driver = Driver("127.0.0.1", server.port, path, headers=headers)
    await driver.open()
    decisions = not key.startswith("bare")
    try:
        await driver.run(rate, warmup, body, 0)
        m0 = server.metrics() if decisions else None
        cpu0, t0 = server.cpu_s(), server.threads()
        sample: Sample = await driver.run(rate, seconds, body, 1_000_000)
        cpu, t1 = server.cpu_s() - cpu0, server.threads()
        m1 = server.metrics() if decisions else None
    finally:
        driver.close()
    calls = max(1, sample.calls)
    by_thread: dict[str, float] = defaultdict(float)
    kernel_by_thread: dict[str, float] = defaultdict(float)
    for tid, (name, user, kernel) in t1.items():
        _, user0, kernel0 = t0.get(tid, (name, 0.0, 0.0))
        group = thread_group(tid, server.pid, name)
        by_thread[group] += (user + kernel - user0 - kernel0)
        kernel_by_thread[group] += kernel - kernel0
    problems = list(sample.problems[:3])
    counted = None
    if m0 is not None and m1 is not None:
        counted = total(m1, "acgs_decisions_total") - total(m0, "acgs_decisions_total")
        cached = (total(m1, "acgs_decisions_total", cached="true")
                  - total(m0, "acgs_decisions_total", cached="true"))
        if counted != sample.ok * per_call:
            problems.append(f"server counted {counted:.0f} decisions for {sample.ok} OK calls")
    else:
        cached = 0.0
    return {"key": key, "title": TITLES.get(key, key), "rate": rate, "seconds": seconds,
            "calls": sample.calls, "not_ok": sample.errors, "errors": sample.error_names(),
            "problems": problems, "achieved": sample.achieved,
            "cached_share": (cached / counted) if counted else None,
            "cpu_us": cpu / calls * 1e6,
            "threads_us": {g: s / calls * 1e6 for g, s in sorted(by_thread.items())
                           if s / calls * 1e6 >= 0.5},
            "threads_kernel_us": {g: kernel_by_thread[g] / calls * 1e6 for g in by_thread},
            "p50_ms": percentile(sample.latency_s, 50) * 1e3,
            "p99_ms": percentile(sample.latency_s, 99) * 1e3}


async def cost(*, rate: float = 1000.0, seconds: float = 10.0, warmup: float = 3.0,
               keys: tuple[str, ...] = SCENARIOS, cpus: set[int] | None = None,
               gen_cpus: set[int] | None = None) -> dict[str, Any]:
    """Measure the yardstick, then each of ``keys`` on one server; ratios to the yardstick."""
    rows: list[dict[str, Any]] = []
    for key, env in (("bare", {}), ("bare_sync", {"BENCH_BARE_SYNC": "1"})):
        bare = Server(key, env, cpus=cpus, module="bench.bare_server").start()
        try:
            rows.append(await measure(bare, key, scenarios.HEALTH, workloads.health(), rate,
                                      seconds, warmup, headers=dict(HEADERS)))
        finally:
            bare.stop()
        print(_line(rows[-1], rows[0]), flush=True)
    server = Server("cost", {}, cpus=cpus).start()
    server.pin_helpers(gen_cpus)
    try:
        tag = f"{os.getpid() % 36**2:02x}"[-2:]
        for i, key in enumerate(keys):
            rows.append(await measure(server, key, scenarios.DECIDE, _body(key, f"{tag}{i}"),
                                      rate, seconds, warmup, headers=server.headers(HEADERS)))
            print(_line(rows[-1], rows[0]), flush=True)
    finally:
        server.stop()
    for row in rows:
        row["ratio"] = row["cpu_us"] / rows[0]["cpu_us"]
        row["goal"] = GOALS.get(row["key"])
    return {"rate": rate, "seconds": seconds, "warmup": warmup, "rows": rows}


def _line(row: dict[str, Any], bare: dict[str, Any]) -> str:
    return (f"{row['key']} at {row['rate']:.0f}/s: {row['cpu_us']:.0f} µs server CPU per call "
            f"({row['cpu_us'] / bare['cpu_us']:.2f}x bare), p50 {row['p50_ms']:.2f} ms, "
            f"p99 {row['p99_ms']:.2f} ms, {row['not_ok']} not OK"
            + (f" {row['errors']}" if row["errors"] else "")
            + (f"; PROBLEMS: {row['problems']}" if row["problems"] else ""))


def _goal(goal: float | None) -> str:
    return f"≤ {goal:.1f}x" if goal else ""


def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    head = (f"At {result['rate']:.0f} calls/s for {result['seconds']:.0f} s (after "
            f"{result['warmup']:.0f} s warm-up), server pinned to one core:\n\n"
            "| scenario | server CPU per call | vs bare grpc.aio | goal | p50 | p99 | not OK |\n"
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
    body = "".join(
        f"| {r['title']} | {r['cpu_us']:.0f} µs | {r['ratio']:.2f}x | {_goal(r['goal'])} | "
        f"{r['p50_ms']:.2f} ms | {r['p99_ms']:.2f} ms | "
        f"{r['not_ok']}{' !' if r['problems'] else ''} |\n"
        for r in rows)
    groups = sorted({g for r in rows for g in r["threads_us"]},
                    key=lambda g: -max(r["threads_us"].get(g, 0.0) for r in rows))
    table = ("\nServer CPU per call by thread, µs (of which in the kernel):\n\n| thread | "
             + " | ".join(r["key"] for r in rows) + " |\n| --- |"
             + " ---: |" * len(rows) + "\n")
    for g in groups:
        table += f"| {g} | " + " | ".join(
            f"{r['threads_us'][g]:.0f} ({r.get('threads_kernel_us', {}).get(g, 0.0):.0f})"
            if g in r["threads_us"] else "" for r in rows) + " |\n"
    table += "| **all threads** | " + " | ".join(f"**{r['cpu_us']:.0f}**" for r in rows) + " |\n"
    return head + body + table


def main() -> None:
    p = argparse.ArgumentParser(prog="python3 -m bench.cost",
                                description=(__doc__ or "").splitlines()[0])
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = p.parse_args()
    keys = tuple(k for k in args.scenarios.split(",") if k)
    unknown = set(keys) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios {sorted(unknown)}; choose from {SCENARIOS}")
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus, gen_cpus = ({cpus[-1]}, set(cpus[:-1])) if len(cpus) > 1 else (None, None)
    if gen_cpus:
        os.sched_setaffinity(0, gen_cpus)
    result = asyncio.run(cost(rate=args.rate, seconds=args.seconds, warmup=args.warmup,
                              keys=keys, cpus=server_cpus, gen_cpus=gen_cpus))
    print("\n" + markdown(result))


if __name__ == "__main__":
    main()
