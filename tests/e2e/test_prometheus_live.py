"""Live observability: real servers behind a real HAProxy, scraped by a real Prometheus.

Two servers and HAProxy (HTTP/2 to them, its Prometheus exporter on) take gRPC
load while a Prometheus started from observability/prometheus/prometheus.yml
(templated: 1 s scrapes and rule evaluation, free ports, storage in tmp) scrapes
them. Then every Grafana panel query (Grafana variables substituted) and every
recording rule must return data over the HTTP API.

Needs `prometheus` and `haproxy` (Debian packages of the same names): skipped
without them, except under CI=true. Panels of prometheus-postgres-exporter and
prometheus-redis-exporter are skipped when those exporters are not running, and
panels of metrics the servers do not export yet (a component not wired in
acgs.bootstrap) are skipped naming the metric.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from acgs.v1 import governance_pb2_grpc as pb_grpc

from tests.client import decide_request
from tests.constitution_cases import CASES
from tests.plugins.servers import ServerFactory, ServerProcess, free_port

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "observability" / "prometheus"
DASHBOARDS = REPO / "observability" / "grafana" / "dashboards"
GRAFANA_VARS = {"$__rate_interval": "10s", "$instance": ".*"}
EXPORTER_JOBS = {"pg_": "postgres", "redis_": "redis"}
TARGET_PANELS = ("P99 latency", "P99 latency, cached", "Throughput", "Cache hit rate", "Compliance")

pytestmark = [pytest.mark.prometheus, pytest.mark.haproxy, pytest.mark.slow]


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{binary} is required in CI (apt-get install {binary})")
        pytest.skip(f"{binary} not installed (apt-get install {binary})")
    return path


def panel_queries() -> list[tuple[str, str]]:
    """(dashboard/panel title, expr) of every panel target, Grafana variables substituted."""
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for var, value in GRAFANA_VARS.items():
                    expr = expr.replace(var, value)
                assert "$" not in expr, f"unsubstituted variable in {expr}"
                out.append((f"{path.stem}/{panel['title']}/{target['refId']}", expr))
    return out


def recording_rules() -> list[str]:
    doc = yaml.safe_load((PROM / "rules" / "recording.yml").read_text())
    return [r["record"] for g in doc["groups"] for r in g["rules"] if "record" in r]


def acgs_metrics(expr: str) -> set[str]:
    return set(re.findall(r"(?<![:\w])acgs_\w+(?![:\w])", expr))


def complete(doc: dict[str, Any]) -> bool:
    """Has every field the server requires (cases without one test INVALID_ARGUMENT)."""
    principal, resource = doc.get("principal", {}), doc.get("resource", {})
    return all(
        (
            doc.get("tenant_id"),
            principal.get("id"),
            principal.get("tenant_id"),
            doc.get("action", {}).get("type"),
            resource.get("type"),
        )
    )


@dataclass
class Load:
    """Decide requests in a loop over a few channels until stopped: repeats (cache hits),
    unique resources (engine evaluations), and the constitution's DENY/ESCALATE cases."""

    addresses: list[str]
    ok: int = 0
    failed: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        channels = [grpc.insecure_channel(a) for a in self.addresses]
        stubs = [pb_grpc.GovernanceStub(ch) for ch in channels]
        inputs = [c.policy_input for c in CASES if complete(c.policy_input)][:20]
        n = 0
        while not self._stop.is_set():
            doc = inputs[n % len(inputs)]
            if n % 10 == 0:  # a resource never seen: the engine evaluates it
                doc = {**doc, "resource": {**doc["resource"], "id": uuid.uuid4().hex}}
            try:
                stubs[n % len(stubs)].Decide(decide_request(doc, request_id=f"r{n}"), timeout=5)
                self.ok += 1
            except grpc.RpcError:
                self.failed += 1
            n += 1
        for ch in channels:
            ch.close()


@dataclass
class Stack:
    url: str
    servers: list[ServerProcess]
    exported: set[str]
    load: Load

    def query(self, expr: str) -> list[dict[str, Any]]:
        qs = urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{qs}", timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def job_up(self, job: str) -> bool:
        return any(r["value"][1] == "1" for r in self.query(f'up{{job="{job}"}}'))


def haproxy_config(
    tmp: Path, *, port: int, metrics_port: int, servers: list[ServerProcess]
) -> Path:
    """A minimal HAProxy (HTTP/2 in and out, its exporter on); haproxy/haproxy.cfg is tested
    on its own."""
    lines = [
        "defaults",
        "  mode http",
        "  timeout connect 2s",
        "  timeout client 30s",
        "  timeout server 30s",
        "frontend prometheus",
        f"  bind 127.0.0.1:{metrics_port}",
        "  http-request use-service prometheus-exporter if { path /metrics }",
        "frontend grpc_in",
        f"  bind 127.0.0.1:{port} proto h2",
        "  default_backend acgs_grpc",
        "backend acgs_grpc",
        "  balance roundrobin",
        *(f"  server s{i} {s.address} proto h2 check inter 1s" for i, s in enumerate(servers)),
    ]
    path = tmp / "haproxy.cfg"
    path.write_text("\n".join(lines) + "\n")
    return path


def prometheus_config(tmp: Path, *, servers: list[ServerProcess], haproxy_metrics: int) -> Path:
    """observability/prometheus/prometheus.yml with test targets and 1 s intervals."""
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROM / f) for f in config["rule_files"]]
    targets = tmp / "acgs_targets.yml"
    targets.write_text(
        yaml.safe_dump([{"targets": [f"127.0.0.1:{s.metrics_port}" for s in servers]}])
    )
    for job in config["scrape_configs"]:
        if job["job_name"] == "acgs":
            job["file_sd_configs"] = [{"files": [str(targets)], "refresh_interval": "1s"}]
        else:  # exporters that are not running get a closed port: up == 0
            port = haproxy_metrics if job["job_name"] == "haproxy" else free_port()
            job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


def wait_for(
    what: str, check: Callable[[], bool], *, timeout: float, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise TimeoutError(f"{what} not ready after {timeout}s\n{tail}")


def scrape_names(server: ServerProcess) -> set[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics") as resp:
        text = resp.read().decode()
    return {
        line.split("{")[0].split(" ")[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_bin, haproxy_bin = need("prometheus"), need("haproxy")
    tmp = tmp_path_factory.mktemp("prometheus_live")
    factory = ServerFactory(tmp, {})
    procs: list[subprocess.Popen[bytes]] = []
    load = Load(addresses=[])
    try:
        servers = [factory.start(name=f"s{i}") for i in range(2)]
        port, hmetrics, pport = free_port(), free_port(), free_port()
        cfg = haproxy_config(tmp, port=port, metrics_port=hmetrics, servers=servers)
        procs.append(spawn([haproxy_bin, "-db", "-f", str(cfg)], tmp / "haproxy.log"))
        config = prometheus_config(tmp, servers=servers, haproxy_metrics=hmetrics)
        procs.append(
            spawn(
                [
                    prometheus_bin,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{pport}",
                ],
                tmp / "prometheus.log",
            )
        )
        live = Stack(
            url=f"http://127.0.0.1:{pport}",
            servers=servers,
            exported=scrape_names(servers[0]),
            load=load,
        )
        wait_for(
            "prometheus",
            lambda: urllib.request.urlopen(f"{live.url}/-/ready").status == 200,
            timeout=30,
            log=tmp / "prometheus.log",
        )
        load.addresses = [f"127.0.0.1:{port}", *(s.address for s in servers)]
        load.start()
        wait_for(
            "every recording rule",
            lambda: all(live.query(r) for r in recording_rules()),
            timeout=90,
            log=tmp / "prometheus.log",
        )
        time.sleep(3)  # a few more scrapes, so 10s windows hold several samples
        yield live
    finally:
        load.stop()
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=20)
        factory.close()


@pytest.mark.parametrize(("panel", "expr"), panel_queries(), ids=[p for p, _ in panel_queries()])
def test_dashboard_query_returns_data(stack: Stack, panel: str, expr: str) -> None:
    for prefix, job in EXPORTER_JOBS.items():
        if re.search(rf"\b{prefix}", expr) and not stack.job_up(job):
            pytest.skip(f"the {job} exporter is not running in this test")
    missing = {m for m in acgs_metrics(expr) if m not in stack.exported}
    if missing and not stack.query(" or ".join(sorted(missing))):
        pytest.skip(f"the servers do not export {sorted(missing)} (not wired in acgs.bootstrap)")
    assert stack.query(expr), f"{panel}: no data for {expr}"


@pytest.mark.parametrize("rule", recording_rules())
def test_recording_rule_has_a_value(stack: Stack, rule: str) -> None:
    assert stack.query(rule), rule


def test_target_panels_show_numbers(stack: Stack) -> None:
    overview = json.loads((DASHBOARDS / "acgs-overview.json").read_text())
    stats = {p["title"]: p["targets"][0]["expr"] for p in overview["panels"] if p["type"] == "stat"}
    assert tuple(stats)[: len(TARGET_PANELS)] == TARGET_PANELS
    for title in TARGET_PANELS:
        (sample,) = stack.query(stats[title])
        assert math.isfinite(float(sample["value"][1])), title
    assert stack.load.ok > 0
    assert stack.load.failed <= stack.load.ok // 100, f"{stack.load.failed} decisions failed"
    assert stack.job_up("haproxy") and stack.job_up("acgs")
