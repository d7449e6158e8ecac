"""Live observability: real servers behind a real HAProxy, scraped by a real Prometheus.

Two servers and HAProxy (the real haproxy/haproxy.cfg.tmpl, rendered by
tests.plugins.haproxy) take gRPC load while a Prometheus started from
observability/prometheus/prometheus.yml (templated: 1 s scrapes and rule
evaluation, free ports, storage in tmp) scrapes them. Then every Grafana panel
query (Grafana variables substituted) and every recording rule must return data
over the HTTP API.

The PostgreSQL and Redis panels read the real prometheus-postgres-exporter and
prometheus-redis-exporter, started here on the test's database (``postgres_url``)
and Redis (``redis_url``). The load makes every ACGS panel show data: repeats and
new resources (cache hits and engine evaluations), the constitution's DENY cases
(critical ones open escalations), high-impact actions that ESCALATE (an admin
approves or denies some, the rest expire after ACGS_ESCALATION_TTL_S), and a few
calls naming another constitutional hash.

Needs `prometheus`, `haproxy`, `prometheus-postgres-exporter` and
`prometheus-redis-exporter` (Debian packages of the same names): skipped without
them, except under CI=true where a missing one fails. A panel without data fails,
naming the acgs_* metrics the servers did not export.
"""

from __future__ import annotations

import contextlib
import functools
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
from acgs.edge import TlsFiles
from acgs.v1 import escalations_pb2 as epb
from acgs.v1 import escalations_pb2_grpc as epb_grpc
from acgs.v1 import governance_pb2 as pb
from acgs.v1 import governance_pb2_grpc as pb_grpc
from psycopg.conninfo import conninfo_to_dict

from tests.client import HASH, authorized, decide_request
from tests.constitution_cases import CASES
from tests.plugins.haproxy import EdgeFactory
from tests.plugins.servers import (
    ServerFactory,
    ServerProcess,
    agent_channel,
    free_port,
    session_tokens,
)

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "observability" / "prometheus"
DASHBOARDS = REPO / "observability" / "grafana" / "dashboards"
GRAFANA_VARS = {"$__rate_interval": "10s", "$instance": ".*"}
EXPORTER_JOBS = {"pg_": "postgres", "redis_": "redis"}
OTHER_HASH = "0000000000000000"
# Escalations the load opens expire this soon unless an admin resolves them first, so the
# resolution panels fill within the test and no open escalation outlives it for long.
SERVER_ENV = {"ACGS_ESCALATION_TTL_S": "4", "ACGS_ESCALATION_SWEEP_S": "1"}
TARGET_PANELS = ("P99 latency", "P99 latency, cached", "Throughput", "Cache hit rate", "Compliance")

pytestmark = [pytest.mark.prometheus, pytest.mark.haproxy, pytest.mark.postgres,
              pytest.mark.redis, pytest.mark.slow]


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
    unique resources (engine evaluations), the constitution's DENY cases (critical ones open
    escalations) and ESCALATE cases; an admin approves or denies two escalations in three
    (the third expires); now and then a call names another constitutional hash.

    ``addresses[0]`` may be HAProxy (which refuses a wrong hash itself); the wrong-hash calls
    go to ``addresses[1:]``, the servers, which count them."""

    addresses: list[str]
    ok: int = 0
    failed: int = 0
    escalated: int = 0
    resolved: int = 0
    hash_refused: int = 0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def summary(self) -> str:
        return (f"{self.ok} decided, {self.failed} failed, {self.escalated} escalated, "
                f"{self.resolved} resolved, {self.hash_refused} wrong-hash refused; "
                f"errors: {self.errors[:5]}")

    def _error(self, what: str, err: grpc.RpcError) -> None:
        if len(self.errors) < 20:
            self.errors.append(f"{what}: {err.code()} {err.details()}")  # type: ignore[attr-defined]

    def _run(self) -> None:
        channels = [agent_channel(a) for a in self.addresses]
        admin_token = session_tokens().admin
        admin_channels = [authorized(grpc.insecure_channel(a), admin_token)
                          for a in self.addresses]
        stubs = [pb_grpc.GovernanceStub(ch) for ch in channels]
        admins = [epb_grpc.EscalationsStub(ch) for ch in admin_channels]
        servers = stubs[1:] or stubs
        inputs = [c.policy_input for c in CASES if complete(c.policy_input)][:20]
        escalate = [c.policy_input for c in CASES if c.effect == "ESCALATE"
                    and complete(c.policy_input)]
        assert escalate, "no ESCALATE case in tests.constitution_cases"
        pending: list[tuple[float, str]] = []  # (opened at, escalation id) to resolve
        n = 0
        while not self._stop.is_set():
            doc = inputs[n % len(inputs)]
            if n % 10 == 0:  # a resource never seen: the engine evaluates it
                doc = {**doc, "resource": {**doc["resource"], "id": uuid.uuid4().hex}}
            if n % 10 == 5:  # a high-impact action: ESCALATE, an escalation opens
                doc = escalate[(n // 10) % len(escalate)]
            try:
                reply = stubs[n % len(stubs)].Decide(
                    decide_request(doc, request_id=f"r{n}"), timeout=5,
                    metadata=(("x-constitutional-hash", HASH),))
                self.ok += 1
                if reply.effect == pb.ESCALATE and reply.escalation_id:
                    self.escalated += 1
                    if self.escalated % 3:
                        pending.append((time.monotonic(), reply.escalation_id))
            except grpc.RpcError as err:
                self.failed += 1
                self._error("Decide", err)
            if n % 200 == 199:  # a caller on another constitution: refused and counted
                self._wrong_hash(servers[(n // 200) % len(servers)], n)
            # Resolve after 1 s: the escalation reaches PostgreSQL through the audit shipper.
            while pending and time.monotonic() - pending[0][0] > 1.0:
                _, escalation_id = pending.pop(0)
                self._resolve(admins[n % len(admins)], escalation_id, n)
            n += 1
        for ch in [*channels, *admin_channels]:
            ch.close()

    def _wrong_hash(self, stub: pb_grpc.GovernanceStub, n: int) -> None:
        try:
            stub.Decide(decide_request(CASES[0].policy_input, request_id=f"h{n}",
                                       constitutional_hash=OTHER_HASH),
                        timeout=5, metadata=(("x-constitutional-hash", OTHER_HASH),))
            self.errors.append("a call naming another constitutional hash was answered")
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.FAILED_PRECONDITION:  # type: ignore[attr-defined]
                self.hash_refused += 1
            else:
                self._error("Decide with another hash", err)

    def _resolve(self, stub: epb_grpc.EscalationsStub, escalation_id: str, n: int) -> None:
        verdict = epb.VERDICT_APPROVE if n % 2 else epb.VERDICT_DENY
        try:
            stub.ResolveEscalation(epb.ResolveEscalationRequest(
                escalation_id=escalation_id, verdict=verdict, comment="live test"), timeout=5,
                metadata=(("x-constitutional-hash", HASH),))  # HAProxy refuses a call without
            self.resolved += 1
        except grpc.RpcError as err:
            self._error("ResolveEscalation", err)


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


def prometheus_config(tmp: Path, *, servers: list[ServerProcess],
                      exporters: dict[str, int]) -> Path:
    """observability/prometheus/prometheus.yml with test targets and 1 s intervals;
    ``exporters`` maps every other job (haproxy, postgres, redis) to its local port."""
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROM / f) for f in config["rule_files"]]
    targets = tmp / "acgs_targets.yml"
    targets.write_text(
        yaml.safe_dump([{"targets": [f"127.0.0.1:{s.metrics_port}" for s in servers]}])
    )
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"acgs", *exporters}, f"scrape jobs {sorted(jobs)}"
    jobs["acgs"]["file_sd_configs"] = [{"files": [str(targets)], "refresh_interval": "1s"}]
    for name, port in exporters.items():
        jobs[name]["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def postgres_exporter_dsn(conninfo: str) -> str:
    """``conninfo`` as the postgresql:// URL prometheus-postgres-exporter (lib/pq) takes."""
    params = conninfo_to_dict(conninfo)
    quote = functools.partial(urllib.parse.quote, safe="")
    user = quote(str(params.get("user") or "postgres"))
    if params.get("password"):
        user += ":" + quote(str(params["password"]))
    host, query = str(params.get("host") or "127.0.0.1"), {"sslmode": "disable"}
    if host.startswith("/"):  # a Unix socket directory
        query["host"], host = host, ""
    port = f":{params['port']}" if params.get("port") else ""
    dbname = quote(str(params.get("dbname") or "postgres"))
    return f"postgresql://{user}@{host}{port}/{dbname}?{urllib.parse.urlencode(query)}"


def redis_exporter_args(redis_url: str) -> list[str]:
    """prometheus-redis-exporter's flags to scrape the Redis at ``redis_url``."""
    url = urllib.parse.urlsplit(redis_url)
    args = [f"--redis.addr=redis://{url.hostname or '127.0.0.1'}:{url.port or 6379}"]
    if url.password:
        args.append(f"--redis.password={urllib.parse.unquote(url.password)}")
    if url.username:
        args.append(f"--redis.user={urllib.parse.unquote(url.username)}")
    return args


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None
          ) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                env=None if env is None else {**os.environ, **env})


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


def serves(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return bool(resp.status == 200)


def has_data(live: Stack, exprs: list[str]) -> bool:
    return all(live.query(e) for e in exprs)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, edge_tls: TlsFiles,
          postgres_url: str, redis_url: str) -> Iterator[Stack]:
    prometheus_bin = need("prometheus")
    need("haproxy")
    pg_exporter_bin = need("prometheus-postgres-exporter")
    redis_exporter_bin = need("prometheus-redis-exporter")
    tmp = tmp_path_factory.mktemp("prometheus_live")
    # The shared test database: an embedded PostgreSQL under pytest's tmp (mode 0700) is out
    # of reach of the unprivileged user pgserver runs it as when the tests run as root.
    factory = ServerFactory(tmp, {"ACGS_DATABASE_URL": postgres_url, **SERVER_ENV})
    edges = EdgeFactory(tmp, edge_tls)
    procs: list[subprocess.Popen[bytes]] = []
    load = Load(addresses=[])
    try:
        servers = [factory.start(name=f"s{i}") for i in range(2)]
        edge = edges.start(servers)
        ports = {"haproxy": int(edge.config.stats_addr.rsplit(":", 1)[1]),
                 "postgres": free_port(), "redis": free_port()}
        procs.append(spawn(
            [pg_exporter_bin, f"--web.listen-address=127.0.0.1:{ports['postgres']}"],
            tmp / "postgres_exporter.log",
            env={"DATA_SOURCE_NAME": postgres_exporter_dsn(postgres_url)}))
        procs.append(spawn(
            [redis_exporter_bin, *redis_exporter_args(redis_url),
             f"--web.listen-address=127.0.0.1:{ports['redis']}"],
            tmp / "redis_exporter.log"))
        pport = free_port()
        config = prometheus_config(tmp, servers=servers, exporters=ports)
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
        for name in ("postgres", "redis"):
            wait_for(f"the {name} exporter",
                     lambda name=name: serves(f"http://127.0.0.1:{ports[name]}/metrics"),
                     timeout=30, log=tmp / f"{name}_exporter.log")
        live = Stack(url=f"http://127.0.0.1:{pport}", servers=servers, exported=set(), load=load)
        wait_for(
            "prometheus",
            lambda: serves(f"{live.url}/-/ready"),
            timeout=30,
            log=tmp / "prometheus.log",
        )
        load.addresses = [edge.h2c_address, *(s.address for s in servers)]
        load.start()
        wait_for(
            "every recording rule",
            lambda: has_data(live, recording_rules()),
            timeout=90,
            log=tmp / "prometheus.log",
        )
        # Escalations resolve or expire seconds after they open: wait (a while) for every
        # panel; one still without data fails its own test below, naming its metrics.
        exprs = [e for _, e in panel_queries()]
        with contextlib.suppress(TimeoutError):
            wait_for("every panel", lambda: has_data(live, exprs), timeout=60)
        time.sleep(3)  # a few more scrapes, so 10s windows hold several samples
        live.exported = set().union(*(scrape_names(s) for s in servers))
        yield live
    finally:
        load.stop()
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=20)
        edges.close()
        factory.close()


@pytest.mark.parametrize(("panel", "expr"), panel_queries(), ids=[p for p, _ in panel_queries()])
def test_dashboard_query_returns_data(stack: Stack, panel: str, expr: str) -> None:
    for prefix, job in EXPORTER_JOBS.items():
        if re.search(rf"\b{prefix}", expr):
            assert stack.job_up(job), f"{panel}: the {job} exporter is not scraped (up != 1)"
    missing = sorted(m for m in acgs_metrics(expr) if m not in stack.exported)
    assert not missing or stack.query(" or ".join(missing)), (
        f"{panel}: the servers export no {missing} under this test's load "
        f"(load: {stack.load.summary()})")
    assert stack.query(expr), f"{panel}: no data for {expr} (load: {stack.load.summary()})"


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
    load = stack.load
    assert load.ok > 0
    assert load.failed <= load.ok // 100, load.summary()
    assert stack.job_up("haproxy") and stack.job_up("acgs")


def test_load_exercises_escalations_and_exporters(stack: Stack) -> None:
    load = stack.load
    assert load.escalated > 0 and load.resolved > 0 and load.hash_refused > 0, load.summary()
    assert stack.job_up("postgres") and stack.job_up("redis")
    assert stack.query('max(pg_up) == 1') and stack.query('max(redis_up) == 1')
