"""Fixtures: a real HAProxy, configured from haproxy/haproxy.cfg.tmpl, in front of test servers.

``edge_tls`` (session) is a private CA and a server certificate for 127.0.0.1 and
localhost (acgs.edge.make_tls). ``edges`` starts HAProxy processes
(``edges.start(servers, **EdgeConfig overrides)``) on free ports and stops them after
the test; :class:`EdgeFactory` does the same for module-scoped fixtures. Needs the
``haproxy`` binary (Debian package ``haproxy``): skipped without it, except under
``CI=true`` where the test fails.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from acgs.edge import EdgeConfig, TlsFiles, Upstream, default_template, make_tls, render
from prometheus_client.parser import text_string_to_metric_families

from tests.client import authorized
from tests.plugins.servers import ServerProcess, free_port, session_tokens


def haproxy_binary() -> str:
    """The haproxy path; skip the test without one, or fail it under CI=true."""
    path = shutil.which("haproxy")
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true and haproxy is not installed (apt-get install haproxy)",
                        pytrace=False)
        pytest.skip("haproxy not installed (apt-get install haproxy)")
    return path


def upstream(server: ServerProcess) -> Upstream:
    return Upstream(server.env["ACGS_INSTANCE_ID"], server.address, server.metrics_port)


@dataclass
class Edge:
    """One running HAProxy: TLS and h2c listeners, stats (CSV, /metrics) on ``stats_port``."""

    proc: subprocess.Popen[bytes]
    config: EdgeConfig
    config_path: Path
    log_path: Path
    ca: bytes

    @property
    def tls_address(self) -> str:
        return self.config.tls_addr

    @property
    def h2c_address(self) -> str:
        assert self.config.h2c_addr is not None
        return self.config.h2c_addr

    def secure_channel(self) -> grpc.Channel:
        """A channel through the TLS listener that trusts only the test CA and sends the
        session's agent token (valid on every test server)."""
        creds = grpc.ssl_channel_credentials(root_certificates=self.ca)
        return authorized(grpc.secure_channel(self.tls_address, creds), session_tokens().agent)

    def fetch(self, path: str) -> str:
        with urllib.request.urlopen(f"http://{self.config.stats_addr}{path}", timeout=5) as resp:
            return str(resp.read().decode())

    def stats(self, backend: str = "acgs_unary") -> dict[str, dict[str, str]]:
        """Per server of ``backend``: the stats CSV row (status, check_status, check_code…)."""
        text = self.fetch("/stats;csv").removeprefix("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {r["svname"]: r for r in rows
                if r["pxname"] == backend and r["svname"] not in ("FRONTEND", "BACKEND")}

    def states(self) -> dict[str, str]:
        """Server name → UP, DOWN, "UP 1/2", … in the unary backend."""
        return {name: row["status"] for name, row in self.stats().items()}

    def wait_state(self, name: str, state: str, *, timeout: float = 10.0) -> float:
        """Wait until server ``name`` is ``state``; return the seconds it took."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.states().get(name) == state:
                return time.monotonic() - start
            time.sleep(0.05)
        raise TimeoutError(f"{name} not {state} after {timeout}s: {self.states()}\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class EdgeFactory:
    """Renders haproxy.cfg.tmpl for some servers and starts ``haproxy`` on free ports."""

    def __init__(self, tmp: Path, tls: TlsFiles) -> None:
        self._tmp = tmp
        self._tls = tls
        self.edges: list[Edge] = []

    def start(self, servers: Sequence[ServerProcess], **overrides: Any) -> Edge:
        binary = haproxy_binary()
        config = EdgeConfig(
            upstreams=[upstream(s) for s in servers],
            certificate=self._tls.server_pem,
            tls_addr=f"127.0.0.1:{free_port()}",
            h2c_addr=f"127.0.0.1:{free_port()}",
            stats_addr=f"127.0.0.1:{free_port()}",
        )
        config = replace(config, **overrides)
        n = len(self.edges)
        path, log = self._tmp / f"haproxy{n}.cfg", self._tmp / f"haproxy{n}.log"
        path.write_text(render(config, default_template()))
        with log.open("ab") as out:
            proc = subprocess.Popen([binary, "-db", "-f", str(path)], stdout=out,
                                    stderr=subprocess.STDOUT)
        edge = Edge(proc=proc, config=config, config_path=path, log_path=log,
                    ca=self._tls.ca.read_bytes())
        self.edges.append(edge)
        self._wait_up(edge, [upstream(s).name for s in servers])
        return edge

    def _wait_up(self, edge: Edge, names: list[str], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if edge.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited with {edge.proc.returncode}:\n{edge.log()}")
            try:
                if all(edge.states().get(n) == "UP" for n in names):
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"servers not UP behind haproxy after {timeout}s:\n{edge.log()}")

    def close(self) -> None:
        for edge in self.edges:
            edge.stop()


@pytest.fixture(scope="session")
def edge_tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("edge_tls"))


@pytest.fixture
def edges(tmp_path: Path, edge_tls: TlsFiles) -> Iterator[EdgeFactory]:
    factory = EdgeFactory(tmp_path, edge_tls)
    yield factory
    factory.close()


def metric_total(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """Sum of the samples of ``name`` (Prometheus text) whose labels include ``labels``."""
    want = set((labels or {}).items())
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and want <= set(sample.labels.items())
    )
