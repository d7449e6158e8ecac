"""A server process under test: start it on free ports, read its CPU, RSS and metrics.

The server is ``python -m acgs.entrypoints.cli serve`` with ``ACGS_ENV=development``
(so that, with token authentication on, it writes a token per role the bench can use),
its own data directory, the repository's policy, optional CPU pinning, and any
``ACGS_*`` variables of the caller's environment (e.g. ``ACGS_DATABASE_URL``,
``ACGS_REDIS_URL``) under the scenario's own overrides. HAProxy in front of a server
(``--targets haproxy``) is :mod:`bench.edge`; it stops with the server.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

if TYPE_CHECKING:
    from bench.edge import Edge

REPO = Path(__file__).resolve().parents[1]
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Metrics = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (every thread) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def terminate(proc: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    """SIGTERM ``proc`` if it runs; SIGKILL it after ``timeout_s``."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def parse_metrics(text: str) -> Metrics:
    """Prometheus text exposition → {(name, labels): value}."""
    out: Metrics = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            labels = frozenset(_LABEL.findall(m.group(2) or ""))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def total(metrics: Metrics, name: str, **match: str) -> float:
    """Sum of every series of ``name`` whose labels include ``match``."""
    want = set(match.items())
    return sum(v for (n, labels), v in metrics.items() if n == name and want <= labels)


def series(metrics: Metrics, name: str) -> list[frozenset[tuple[str, str]]]:
    return [labels for (n, labels) in metrics if n == name]


class Server:
    """One server process. ``start`` waits until Health says SERVING.

    ``module``: the Python module run with ``-m`` and the gRPC port as its last argument
    (default: ``acgs serve``, configured through ``env``)."""

    def __init__(self, name: str, env: Mapping[str, str], *, cpus: set[int] | None,
                 module: str | None = None) -> None:
        self.name = name
        self._module = module
        self.port, self.metrics_port = free_port(), free_port()
        self._dir = Path(tempfile.mkdtemp(prefix=f"acgs-bench-{name}-"))
        self.log_path = self._dir / "server.log"
        inherited = {k: v for k, v in os.environ.items() if k.startswith("ACGS_")}
        self.env = {
            **os.environ,
            # the bench measures capacity, not the per-caller limit (2,000/s for agents)
            "ACGS_RATE_LIMIT_AGENT": "off", **inherited,
            "PYTHONPATH": os.pathsep.join([str(REPO / "service"), str(REPO)]),
            "ACGS_GRPC_ADDR": f"127.0.0.1:{self.port}",
            "ACGS_METRICS_ADDR": f"127.0.0.1:{self.metrics_port}",
            "ACGS_INSTANCE_ID": f"bench-{name}",
            "ACGS_DATA_DIR": str(self._dir / "data"),
            "ACGS_POLICY_DIR": str(REPO / "policy"),
            # development: like test, plus a token per role in <data>/dev-tokens (see token())
            "ACGS_ENV": "development", **env,
        }
        self.overrides = dict(env)
        self._cpus = cpus
        self.proc: subprocess.Popen[bytes] | None = None
        self.edge: Edge | None = None  # HAProxy in front, once bench.edge.endpoint started it

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = 120.0) -> Server:
        cpus = self._cpus
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            ([sys.executable, "-m", self._module, str(self.port)] if self._module else
             [sys.executable, "-m", "acgs.entrypoints.cli", "serve"]), cwd=REPO, env=self.env,
            stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server {self.name} exited:\n{self.log_tail()}")
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return self
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"server {self.name} not SERVING after {timeout_s}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop HAProxy in front (if any), then the server; remove the data directory."""
        if self.edge is not None:
            self.edge.stop()
            self.edge = None
        terminate(self.proc, 30)
        shutil.rmtree(self._dir, ignore_errors=True)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def cpu_s(self) -> float:
        """User + system CPU seconds of the whole process (every thread) so far."""
        return proc_cpu_s(self.pid)

    def helper_pids(self) -> set[int]:
        """The server's helper processes: an embedded PostgreSQL under its data directory
        (the postmaster names the directory; its backends descend from it)."""
        parents: dict[int, int] = {}
        roots: set[int] = set()
        marker = str(self._dir).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == self.pid:
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if marker in (entry / "cmdline").read_bytes():
                    roots.add(int(entry.name))
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
        members, grew = set(roots), True
        while grew:
            new = {p for p, ppid in parents.items() if ppid in members} - members
            members |= new
            grew = bool(new)
        return members

    def helper_cpu_s(self) -> float:
        """CPU seconds of the server's helper processes (see :meth:`helper_pids`)."""
        total_s = 0.0
        for pid in self.helper_pids():
            try:
                total_s += proc_cpu_s(pid)
            except OSError:
                continue  # a backend that just ended
        return total_s

    def pin_helpers(self, cpus: set[int] | None) -> None:
        """Move the helper processes (the embedded PostgreSQL, which inherited the server's
        CPU) to ``cpus`` at a lower priority (nice 10): in production the database is another
        machine, so its work (shipping is asynchronous to decisions) must take neither the
        server's core nor the load generator's turn on its own. New backends inherit the
        postmaster's affinity and niceness."""
        if not cpus:
            return
        for pid in self.helper_pids():
            try:
                os.sched_setaffinity(pid, cpus)
                os.setpriority(os.PRIO_PROCESS, pid, 10)
            except OSError:
                continue

    def thread_cpu_s(self) -> dict[int, float]:
        """CPU seconds of each thread of the server, by OS thread id."""
        return {tid: user + kernel for tid, (_, user, kernel) in self.threads().items()}

    def threads(self) -> dict[int, tuple[str, float, float]]:
        """Each thread of the server by OS thread id: its OS name (``comm``; our threads set
        theirs, see acgs.os_threads), user and kernel CPU seconds so far."""
        out: dict[int, tuple[str, float, float]] = {}
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                name, rest = (task / "stat").read_text().split(" (", 1)[1].rsplit(")", 1)
            except (OSError, ValueError):
                continue  # the thread ended
            fields = rest.split()
            out[int(task.name)] = (name, int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK)
        return out

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def metrics(self) -> Metrics:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return parse_metrics(resp.read().decode())

    def headers(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` plus ``authorization: Bearer <agent token>`` when the server wrote dev tokens
        (token authentication on, ACGS_ENV=development); the bench calls as an agent."""
        path = self._dir / "data" / "dev-tokens"
        text = path.read_text() if path.exists() else ""
        m = re.search(r"ACGS_AGENT_TOKEN=['\"]?([A-Za-z0-9_.-]+)", text)
        return {**base, "authorization": f"Bearer {m.group(1)}"} if m else dict(base)

    def data_files(self) -> int:
        """Files under the data directory (an audit journal shows up here)."""
        root = self._dir / "data"
        return sum(len(files) for _, _, files in os.walk(root)) if root.exists() else 0


def features(server: Server) -> dict[str, bool]:
    """What this build wires, judged from the outside (metrics series, files)."""
    m = server.metrics()
    return {
        "cache": bool(series(m, "acgs_cache_hits_total")),
        "audit": bool(series(m, "acgs_audit_journal_backlog_records")) or server.data_files() > 0,
    }

