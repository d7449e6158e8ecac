"""Memory soak: ``python3 -m bench.run --soak N`` sends N Decide calls and samples RSS.

The calls go closed-loop (64 in flight, as fast as the server answers) so a
soak takes as little time as possible; every call must be OK. The server's
RSS is sampled every ``--soak-every`` decisions (50,000). After the first
100,000 the time per 100k and the projected time for N and for 1,000,000 are
printed. The verdict: RSS is *flat* when, after warm-up (the first
``max(20 %, 200k)`` decisions, which fill the 100,000-entry decision cache
with distinct requests; half of N when N < 400k), it grows by less than 5 % and
less than 16 MB.
"""

from __future__ import annotations

import time
from typing import Any

from bench import workloads
from bench.loadgen import Driver
from bench.scenarios import DECIDE
from bench.server import Server, total

FLAT_PCT, FLAT_MB = 5.0, 16.0


def verdict(samples: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    after = [s for s in samples if s["decisions"] >= warmup]
    if len(after) < 2:
        return {"flat": None, "why": f"fewer than two samples after the warm-up of {warmup:,}"}
    first, last = after[0], after[-1]
    growth = last["rss_mb"] - first["rss_mb"]
    span = (last["decisions"] - first["decisions"]) / 100_000
    pct = 100 * growth / first["rss_mb"]
    return {"flat": growth < FLAT_MB and pct < FLAT_PCT, "warmup_decisions": warmup,
            "rss_after_warmup_mb": first["rss_mb"], "rss_end_mb": last["rss_mb"],
            "growth_mb": growth, "growth_pct": pct,
            "mb_per_100k": growth / span if span else None,
            "peak_mb": max(s["rss_mb"] for s in after)}


async def soak(server: Server, host: str, port: int, n: int, *, every: int, workload: str,
               headers: dict[str, str]) -> dict[str, Any]:
    body = workloads.zipf("s") if workload == "zipf" else workloads.distinct("s")
    driver = Driver(host, port, DECIDE, headers=headers)
    await driver.open()
    samples: list[dict[str, Any]] = []
    start, cpu0, done, errors = time.monotonic(), server.cpu_s(), 0, 0
    rss0 = server.rss_mb()
    print(f"soak: {n:,} Decide calls ({workload}), RSS sampled every {every:,}; "
          f"RSS at start {rss0:.1f} MB", flush=True)
    try:
        while done < n:
            chunk = min(every, n - done)
            sample = await driver.blast(chunk, body, done, check=workloads.check_decision)
            done += chunk
            errors += sample.errors
            elapsed = time.monotonic() - start
            rec = {"decisions": done, "elapsed_s": elapsed, "rss_mb": server.rss_mb(),
                   "rate": sample.rate, "errors": sample.errors,
                   "cpu_us_per_decision": (server.cpu_s() - cpu0) / done * 1e6}
            samples.append(rec)
            print(f"  {done:>9,}  {elapsed:7.1f} s  {sample.rate:6.0f}/s  RSS {rec['rss_mb']:7.1f}"
                  f" MB  errors {sample.errors}", flush=True)
            if done >= 100_000 and len([s for s in samples if s["decisions"] >= 100_000]) == 1:
                per_100k = elapsed / done * 100_000
                print(f"  -> {per_100k:.0f} s per 100k decisions: {n:,} take ~"
                      f"{per_100k * n / 100_000 / 60:.1f} min, 1,000,000 take ~"
                      f"{per_100k * 10 / 60:.1f} min", flush=True)
            if sample.errors:
                print(f"  errors: {sample.error_names()}", flush=True)
    finally:
        driver.close()
    elapsed = time.monotonic() - start
    metrics = server.metrics()
    result: dict[str, Any] = {
        "decisions": done, "errors": errors, "elapsed_s": elapsed,
        "s_per_100k": elapsed / max(done, 1) * 100_000,
        "projected_1m_min": elapsed / max(done, 1) * 1_000_000 / 60,
        "rss_start_mb": rss0, "samples": samples,
        "server_decisions": total(metrics, "acgs_decisions_total"),
        "verdict": verdict(samples, max(n // 5, min(200_000, n // 2) if workload == "distinct"
                                        else 0)),
    }
    v = result["verdict"]
    print(f"soak: {done:,} decisions in {elapsed:.0f} s ({result['s_per_100k']:.0f} s per 100k; "
          f"1M ≈ {result['projected_1m_min']:.0f} min), errors {errors}; RSS after warm-up "
          f"{v.get('rss_after_warmup_mb', float('nan')):.1f} MB → end "
          f"{v.get('rss_end_mb', float('nan')):.1f} MB: "
          f"{'FLAT' if v['flat'] else 'GROWING' if v['flat'] is False else v.get('why')}",
          flush=True)
    return result
