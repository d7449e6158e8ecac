"""Decisions/s and latency through HAProxy against the same servers called directly, one run.

    python3 -m bench.edge_bench [--seconds 5] [--connections 4] [--depth 4] [--stack DIR]

A closed loop: ``connections`` clients keep ``depth`` Decide calls in flight each (a
new call leaves when one is answered), so the numbers are the throughput at that
concurrency and the latency it costs. Targets, each measured ``--rounds`` times in
turn after a warm-up: the three servers directly (each client holds a connection to
every server and sends its calls round-robin, as HAProxy does), HAProxy's h2c
listener, HAProxy's TLS listener (verified against the stack's CA); through HAProxy
each client is one connection. Requests follow a Zipf mix over 10,000 decision inputs
(bench.workloads.zipf; caches warm up during the warm-up). HAProxy's CPU seconds per
1,000 calls are read from /proc.

The stack is the one ``make stack`` runs (``--stack .acgs/stack`` uses a running one);
without ``--stack`` a temporary one is started (agent rate limit off) and stopped. Calls
carry the constitutional hash and, when the stack issued development tokens, the
agent's. Everything shares this machine's cores, the client included: compare targets
with each other, not with numbers from other machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acgs import CONSTITUTIONAL_HASH
from acgs.adapters import dev_tokens

from bench import h2grpc
from bench.loadgen import STATUS_NAMES, TIMEOUT, percentile
from bench.workloads import Body, zipf

PATH = "/acgs.v1.Governance/Decide"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    target: str
    seconds: float
    latency_s: list[float] = field(default_factory=list)
    errors: Counter[int] = field(default_factory=Counter)  # grpc-status (or h2grpc's) -> n
    haproxy_cpu_s: float = 0.0

    def row(self) -> dict[str, Any]:
        n = len(self.latency_s)
        return {"target": self.target, "ok": n, "errors": sum(self.errors.values()),
                "error_statuses": {STATUS_NAMES.get(k, str(k)): v for k, v in self.errors.items()},
                "decisions_per_s": round(n / self.seconds, 1),
                "p50_ms": round(percentile(self.latency_s, 50) * 1e3, 3),
                "p99_ms": round(percentile(self.latency_s, 99) * 1e3, 3),
                "haproxy_cpu_s_per_1k": round(self.haproxy_cpu_s / max(n, 1) * 1e3, 3)}


class ClosedLoop:
    """Keeps ``depth`` calls in flight per client until ``running`` is cleared; a client's
    calls rotate over its connections."""

    def __init__(self, body: Body, start: int) -> None:
        self._body = body
        self._next = start
        self._sent: dict[int, float] = {}
        self._conns: dict[int, list[tuple[h2grpc.GrpcConnection, bytes]]] = {}
        self._turn = 0
        self._owner: dict[int, int] = {}
        self.result: Result | None = None
        self.running = False

    def on_done(self, token: int, status: int, _: bytes | None) -> None:
        sent = self._sent.pop(token, None)
        if sent is None or self.result is None:
            return
        if status == 0:
            self.result.latency_s.append(time.perf_counter() - sent)
        else:
            self.result.errors[status] += 1
        conn_id = self._owner.pop(token)
        if self.running:
            self.submit(conn_id)

    def add(self, client: int, conn: h2grpc.GrpcConnection, block: bytes) -> None:
        self._conns.setdefault(client, []).append((conn, block))

    def submit(self, conn_id: int) -> None:
        conns = self._conns[conn_id]
        self._turn += 1
        conn, block = conns[self._turn % len(conns)]
        token, self._next = self._next, self._next + 1
        self._owner[token] = conn_id
        self._sent[token] = time.perf_counter()
        conn.submit(block, self._body(token), token)

    @property
    def in_flight(self) -> int:
        return len(self._sent)

    @property
    def issued(self) -> int:
        return self._next


async def measure(target: str, addresses: list[tuple[str, int]], *, body: Body, start: int,
                  seconds: float, connections: int, depth: int, tls: ssl.SSLContext | None,
                  headers: dict[str, str], haproxy_pid: int | None) -> tuple[Result, int]:
    loop = asyncio.get_running_loop()
    driver = ClosedLoop(body, start)
    conns = []
    for i in range(connections):
        for host, port in addresses:
            _, conn = await loop.create_connection(
                lambda: h2grpc.GrpcConnection(driver.on_done), host, port, ssl=tls,
                server_hostname="localhost" if tls else None)
            await asyncio.wait_for(conn.ready, 10)
            block = h2grpc.header_block(PATH, f"localhost:{port}", headers)
            if tls is not None:  # :scheme https (static index 7) instead of http (6)
                block = block.replace(b"\x83\x86", b"\x83\x87", 1)
            driver.add(i, conn, block)
            conns.append(conn)
    driver.result = Result(target, seconds)
    cpu0 = _cpu_s(haproxy_pid)
    driver.running = True
    for i in range(connections):
        for _ in range(depth):
            driver.submit(i)
    await asyncio.sleep(seconds)
    driver.running = False
    deadline = time.monotonic() + 5
    while driver.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    driver.result.haproxy_cpu_s = _cpu_s(haproxy_pid) - cpu0
    driver.result.errors[TIMEOUT] += driver.in_flight
    for conn in conns:
        conn.close()
    return driver.result, driver.issued


def _cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


async def run(endpoints: dict[str, Any], haproxy_pid: int | None,
              args: argparse.Namespace) -> list[dict[str, Any]]:
    def addr(text: str) -> tuple[str, int]:
        host, _, port = text.rpartition(":")
        return host, int(port)

    tls = ssl.create_default_context(cafile=endpoints["ca"])
    tls.set_alpn_protocols(["h2"])
    targets = [("direct", [addr(s["grpc"]) for s in endpoints["servers"]], None),
               ("haproxy-h2c", [addr(endpoints["h2c"])], None),
               ("haproxy-tls", [addr(endpoints["tls"])], tls)]
    headers = {"x-constitutional-hash": CONSTITUTIONAL_HASH}
    if endpoints.get("tokens"):  # development servers: the agent's token
        headers["authorization"] = f"Bearer {dev_tokens.read(Path(endpoints['tokens']))['agent']}"
    body = zipf("e")
    start = 0
    kw = {"body": body, "connections": args.connections, "depth": args.depth,
          "headers": headers, "haproxy_pid": haproxy_pid}
    for name, addresses, context in targets:  # warm-up: caches, connections, JIT-less paths
        _, start = await measure(name, addresses, start=start, seconds=args.warmup, tls=context,
                                 **kw)
    totals: dict[str, Result] = {}
    for _ in range(args.rounds):
        for name, addresses, context in targets:
            result, start = await measure(name, addresses, start=start, seconds=args.seconds,
                                          tls=context, **kw)
            total = totals.setdefault(name, Result(name, 0.0))
            total.seconds += result.seconds
            total.latency_s += result.latency_s
            total.errors.update(result.errors)
            total.haproxy_cpu_s += result.haproxy_cpu_s
    return [r.row() for r in totals.values()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--stack", type=Path, help="a running stack's directory (.acgs/stack)")
    parser.add_argument("--seconds", type=float, default=5.0, help="per target and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    from acgs.entrypoints import stack  # the same code `make stack` runs
    from acgs.entrypoints.stack_procs import Processes

    with tempfile.TemporaryDirectory(prefix="acgs-edge-bench-") as tmp:
        directory = args.stack or Path(tmp) / "stack"
        if args.stack is None:
            # no per-caller rate limit: the point is what the edge costs, not the limiter
            env = {**os.environ, "ACGS_RATE_LIMIT_AGENT": "off"}
            endpoints = stack.up(directory, servers=3, env=env)
        else:
            endpoints = json.loads((directory / "endpoints.json").read_text())
        procs = Processes(directory / "pids", directory / "logs")
        haproxy = next((pid for role, pid in procs.alive() if role == "haproxy"), None)
        try:
            rows = asyncio.run(run(endpoints, haproxy, args))
        finally:
            if args.stack is None:
                procs.stop_recorded()
    print(f"closed loop: {args.connections} connections x {args.depth} calls in flight, "
          f"{args.rounds} x {args.seconds:.0f} s per target, {os.cpu_count()} CPUs shared")
    print(f"{'target':<12} {'ok':>8} {'errors':>6} {'dec/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'haproxy cpu s/1k':>16}")
    for r in rows:
        print(f"{r['target']:<12} {r['ok']:>8} {r['errors']:>6} {r['decisions_per_s']:>9} "
              f"{r['p50_ms']:>8} {r['p99_ms']:>8} {r['haproxy_cpu_s_per_1k']:>16}"
              + (f"  {r['error_statuses']}" if r["errors"] else ""))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
