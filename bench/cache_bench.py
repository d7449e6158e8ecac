"""What the decision cache buys: ``python3 bench/cache_bench.py [--redis-url URL] [--lookups N]``.

Measures in one run:

1. µs per operation: key computation, and get (hit, miss) / put on the
   in-process, Redis and tiered adapters;
2. a Zipf workload (10,000 distinct requests, exponent 1.1, 200,000 lookups)
   where every miss costs a simulated 100 µs evaluation (busy-waiting, like a
   CPU-bound engine): µs per lookup, p50/p99 and hit rate per tier for no
   cache, in-process only, Redis only and both, on one server and on four
   servers sharing one Redis (lookups dealt round-robin).

Without ``--redis-url`` it starts a throwaway ``redis-server`` (no persistence)
on a free port; with it, keys go under a unique prefix that is deleted after.
Prints a table and writes ``bench/results/cache.json``. Not a test: the
numbers depend on the machine. Run it from the repository root.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "service"))

import redis  # noqa: E402
from acgs.adapters.memory_cache import MemoryDecisionCache  # noqa: E402
from acgs.adapters.redis_cache import RedisDecisionCache  # noqa: E402
from acgs.adapters.tiered_cache import TieredDecisionCache  # noqa: E402
from acgs.domain.cache_key import decision_cache_key  # noqa: E402
from acgs.domain.model import Effect, EngineResult, Severity, Violation  # noqa: E402
from acgs.service_layer.ports import DecisionCache, PolicyInfo  # noqa: E402

EVAL_US = 100
POLICY = PolicyInfo(revision="bench-rev", data_revision="bench-data")
ACTIONS = ("read", "write", "summarize", "send_message", "delete_record")


def spin(us: float) -> None:
    """Busy-wait ``us`` microseconds: the engine is CPU-bound, so a sleep would flatter it."""
    end = time.perf_counter_ns() + int(us * 1000)
    while time.perf_counter_ns() < end:
        pass


def request(i: int) -> dict[str, Any]:
    """The i-th distinct decision input, shaped like a real one (about 400 bytes of JSON)."""
    tenant = f"tenant-{i % 20}"
    return {
        "principal": {"id": f"agent-{i % 997}", "tenant": tenant, "role": f"role-{i % 7}"},
        "action": {"type": ACTIONS[i % len(ACTIONS)], "priority": i % 5, "impact": 0.1},
        "resource": {"id": f"doc-{i}", "tenant": tenant, "classification": "internal",
                     "contains_pii": i % 3 == 0},
        "context": {"purpose": "support", "channel": "api", "session": f"s-{i % 101}"},
    }


def evaluate(i: int) -> EngineResult:
    spin(EVAL_US)
    if i % 4:
        return EngineResult(effect=Effect.ALLOW, violations=(), policy_revision=POLICY.revision)
    violation = Violation("role_permissions", Severity.HIGH, "role may not perform this action")
    return EngineResult(effect=Effect.DENY, violations=(violation,),
                        policy_revision=POLICY.revision)


def zipf_sequence(*, distinct: int, lookups: int, exponent: float, seed: int) -> list[int]:
    weights = [1 / (rank**exponent) for rank in range(1, distinct + 1)]
    return random.Random(seed).choices(range(distinct), weights=weights, k=lookups)


@contextmanager
def throwaway_redis() -> Iterator[str]:
    """Start a private redis-server on a free port; yield its URL; stop it."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found: install it or pass --redis-url")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        try:
            with redis.Redis.from_url(url) as client:
                for _ in range(200):
                    try:
                        client.ping()
                        break
                    except redis.ConnectionError:
                        time.sleep(0.025)
            yield url
        finally:
            proc.terminate()
            proc.wait()


async def per_op_us(op: Callable[[int], Any], n: int) -> float:
    """Mean µs of ``await op(i)`` over ``n`` calls (``op`` may return a plain value)."""
    start = time.perf_counter()
    for i in range(n):
        result = op(i)
        if asyncio.iscoroutine(result):
            await result
    return (time.perf_counter() - start) / n * 1e6


async def micro(url: str, prefix: str, n: int, rounds: int = 3) -> dict[str, float]:
    """Median over ``rounds`` of :func:`micro_round`: a busy host skews single rounds."""
    results = [await micro_round(url, f"{prefix}{r}:", n) for r in range(rounds)]
    return {name: statistics.median(r[name] for r in results) for name in results[0]}


async def micro_round(url: str, prefix: str, n: int) -> dict[str, float]:
    keys = [decision_cache_key(POLICY, request(i)) for i in range(n)]
    miss_keys = [f"absent-{i}" for i in range(n)]
    hit = evaluate(1)
    memory = MemoryDecisionCache(max_entries=n)
    # A generous timeout: this measures what an operation costs, and a breaker
    # tripped by a stray stall of a busy host would time skipped operations instead.
    remote = RedisDecisionCache(url=url, key_prefix=prefix, timeout_ms=1000)
    tiered = TieredDecisionCache(local=MemoryDecisionCache(max_entries=n), remote=remote,
                                 write_behind=False)
    try:
        out = {
            "evaluation (simulated)": await per_op_us(lambda i: spin(EVAL_US), 2000),
            "key": await per_op_us(lambda i: decision_cache_key(POLICY, request(i)), n),
            "memory put": await per_op_us(lambda i: memory.put(keys[i], hit), n),
            "memory get hit": await per_op_us(lambda i: memory.get(keys[i]), n),
            "memory get miss": await per_op_us(lambda i: memory.get(miss_keys[i]), n),
            "redis put": await per_op_us(lambda i: remote.put(keys[i], hit), n),
            "redis get hit": await per_op_us(lambda i: remote.get(keys[i]), n),
            "redis get miss": await per_op_us(lambda i: remote.get(miss_keys[i]), n),
            # Local tier empty, Redis full: every get is a Redis hit that fills the local tier.
            "tiered get hit (redis, fills local)": await per_op_us(
                lambda i: tiered.get(keys[i]), n),
            "tiered get hit (local)": await per_op_us(lambda i: tiered.get(keys[i]), n),
            "tiered get miss": await per_op_us(lambda i: tiered.get(miss_keys[i]), n),
            "tiered put (awaiting redis)": await per_op_us(lambda i: tiered.put(keys[i], hit), n),
        }
        out["redis errors"] = float(remote.stats.errors)
        return out
    finally:
        await remote.aclose()


async def workload(name: str, servers: list[DecisionCache | None], sequence: list[int],
                   inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """Serve ``sequence`` round-robin over ``servers``; a miss costs one evaluation."""
    durations = [0] * len(sequence)
    evaluations = 0
    for n, i in enumerate(sequence):
        cache = servers[n % len(servers)]
        start = time.perf_counter_ns()
        if cache is None:
            evaluate(i)
            evaluations += 1
        else:
            key = decision_cache_key(POLICY, inputs[i])
            if await cache.get(key) is None:
                await cache.put(key, evaluate(i))
                evaluations += 1
        durations[n] = time.perf_counter_ns() - start
        # A server's loop runs other tasks between requests (here: write-behind puts).
        await asyncio.sleep(0)
    for cache in servers:
        if isinstance(cache, TieredDecisionCache):
            await cache.flush()
    return summarize(name, len(servers), servers, durations, evaluations)


def summarize(name: str, count: int, servers: list[DecisionCache | None], durations: list[int],
              evaluations: int) -> dict[str, Any]:
    total = len(durations)
    local = remote = errors = trips = 0
    for cache in servers:
        if isinstance(cache, TieredDecisionCache):
            local, remote = local + cache.stats.local_hits, remote + cache.stats.remote_hits
            cache = cache.remote  # for its Redis counters below
        elif isinstance(cache, MemoryDecisionCache):
            local += cache.stats.hits
        elif isinstance(cache, RedisDecisionCache):
            remote += cache.stats.hits
        if isinstance(cache, RedisDecisionCache):
            errors, trips = errors + cache.stats.errors, trips + cache.stats.trips
    ordered = sorted(durations)
    return {
        "config": name, "servers": count, "lookups": total, "evaluations": evaluations,
        "us_per_lookup": sum(durations) / total / 1000,
        "p50_us": ordered[total // 2] / 1000, "p99_us": ordered[int(total * 0.99)] / 1000,
        "hit_rate_local": local / total, "hit_rate_redis": remote / total,
        "hit_rate_total": (local + remote) / total, "redis_errors": errors,
        "redis_breaker_trips": trips,
    }


async def workloads(url: str, prefix: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    sequence = zipf_sequence(distinct=args.distinct, lookups=args.lookups,
                             exponent=args.exponent, seed=args.seed)
    inputs = [request(i) for i in range(args.distinct)]
    closers: list[RedisDecisionCache] = []

    def remote(tag: str) -> RedisDecisionCache:
        cache = RedisDecisionCache(url=url, key_prefix=f"{prefix}{tag}:")
        closers.append(cache)
        return cache

    def tiered(tag: str, size: int = 100_000, *, behind: bool = True) -> TieredDecisionCache:
        return TieredDecisionCache(local=MemoryDecisionCache(max_entries=size),
                                   remote=remote(tag), write_behind=behind)

    configs: list[tuple[str, list[DecisionCache | None]]] = [
        ("no cache", [None]),
        ("in-process (100k)", [MemoryDecisionCache()]),
        ("in-process (1k)", [MemoryDecisionCache(max_entries=1000)]),
        ("redis only", [remote("r1")]),
        ("both (100k + redis)", [tiered("t1")]),
        ("both, put awaits redis", [tiered("t0", behind=False)]),
        ("both (1k + redis)", [tiered("t2", 1000)]),
        ("in-process (100k), 4 servers", [MemoryDecisionCache() for _ in range(4)]),
        ("both (100k + redis), 4 servers", [tiered("t4") for _ in range(4)]),
        ("both (1k + redis), 4 servers", [tiered("t5", 1000) for _ in range(4)]),
    ]
    try:
        return [await workload(name, caches, sequence, inputs) for name, caches in configs]
    finally:
        for cache in closers:
            await cache.aclose()


class VirtualClock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def ttl_sweep(sequence: list[int], keys: list[str]) -> list[dict[str, Any]]:
    """Hit rate of the in-process tier by size and TTL when lookups arrive at a given rate.

    A virtual clock advances 1/rate per lookup, so 200,000 lookups at 100/s span
    2,000 s: long enough for a TTL to matter. No evaluation is timed here.
    """
    rows = []
    allow = EngineResult(effect=Effect.ALLOW, violations=(), policy_revision=POLICY.revision)
    for size in (1_000, 10_000, 100_000):
        for ttl in (10.0, 60.0, 300.0, 0.0):
            row: dict[str, Any] = {"size": size, "ttl_s": ttl}
            for rate in (100, 1000):
                clock = VirtualClock()
                cache = MemoryDecisionCache(max_entries=size, ttl_s=ttl, clock=clock)
                for n, i in enumerate(sequence):
                    clock.now = n / rate
                    if cache.lookup(keys[i]) is None:
                        cache.store(keys[i], allow)
                row[f"hit_rate_at_{rate}_rps"] = cache.stats.hits / len(sequence)
            rows.append(row)
    return rows


def print_tables(micro_us: dict[str, float], rows: list[dict[str, Any]],
                 sweep: list[dict[str, Any]]) -> None:
    print("\nµs per operation")
    for name, us in micro_us.items():
        print(f"  {name:<38} {us:9.2f}")
    print("\nZipf workload (µs per lookup, each miss costs one evaluation)")
    print(f"  {'config':<32} {'µs/lookup':>9} {'p50':>7} {'p99':>7} "
          f"{'local':>6} {'redis':>6} {'total':>6} {'evals':>7} {'trips':>5}")
    for r in rows:
        print(f"  {r['config']:<32} {r['us_per_lookup']:9.2f} {r['p50_us']:7.1f} "
              f"{r['p99_us']:7.1f} {r['hit_rate_local']:6.1%} {r['hit_rate_redis']:6.1%} "
              f"{r['hit_rate_total']:6.1%} {r['evaluations']:7d} {r['redis_breaker_trips']:5d}")
    print("\nIn-process hit rate by size and TTL (virtual clock; TTL 0 = none)")
    print(f"  {'size':>7} {'ttl_s':>6} {'100 rps':>8} {'1000 rps':>9}")
    for r in sweep:
        print(f"  {r['size']:>7} {r['ttl_s']:>6.0f} {r['hit_rate_at_100_rps']:8.1%} "
              f"{r['hit_rate_at_1000_rps']:9.1%}")


async def run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"acgs-bench:{uuid.uuid4().hex}:"
    try:
        micro_us = await micro(url, prefix + "micro:", args.micro_ops)
        rows = await workloads(url, prefix, args)
        sweep = ttl_sweep(
            zipf_sequence(distinct=args.distinct, lookups=args.lookups,
                          exponent=args.exponent, seed=args.seed),
            [decision_cache_key(POLICY, request(i)) for i in range(args.distinct)],
        )
    finally:
        with redis.Redis.from_url(url) as client:
            keys = list(client.scan_iter(match=prefix + "*", count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start : start + 1000])
    print_tables(micro_us, rows, sweep)
    return {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average_after": os.getloadavg(),
                    "platform": platform.platform(), "redis": "throwaway local"
                    if args.redis_url is None else "given"},
        "params": {"distinct": args.distinct, "lookups": args.lookups,
                   "exponent": args.exponent, "seed": args.seed, "evaluation_us": EVAL_US},
        "micro_us": micro_us, "workload": rows, "in_process_size_ttl": sweep,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis-url", help="use this Redis instead of a throwaway one")
    parser.add_argument("--distinct", type=int, default=10_000)
    parser.add_argument("--lookups", type=int, default=200_000)
    parser.add_argument("--exponent", type=float, default=1.1)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--micro-ops", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cache.json")
    args = parser.parse_args()
    if args.redis_url:
        report = asyncio.run(run(args.redis_url, args))
    else:
        with throwaway_redis() as url:
            report = asyncio.run(run(url, args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
