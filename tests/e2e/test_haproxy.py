"""The edge: a real HAProxy, rendered from haproxy/haproxy.cfg.tmpl, in front of three servers.

Calls go through the TLS listener and are verified against the test CA. Servers are
told apart by their own ``acgs_decisions_total``. Under load from several client
threads a server is killed with SIGKILL (only calls in flight on it may fail, none
once HAProxy noticed; it rejoins after a restart) or sent SIGTERM (it drains: no call
fails). Calls without the constitutional hash never reach a server.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType

import grpc
import pytest
from acgs.edge import EdgeConfig, TlsFiles, Upstream, default_template, render
from acgs.v1 import governance_pb2 as pb
from acgs.v1 import governance_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.client import HASH, allow_input, decide_request
from tests.plugins.haproxy import Edge, EdgeFactory, haproxy_binary, metric_total, upstream
from tests.plugins.servers import ServerFactory, ServerProcess, agent_channel

pytestmark = [pytest.mark.haproxy, pytest.mark.postgres, pytest.mark.slow]

DRAIN_S = 1.5  # ACGS_DRAIN_DELAY_S: over 2 x the 0.5 s check interval (fall 2)
THREADS = 6
MD = (("x-constitutional-hash", HASH),)
RUN = uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str
) -> Iterator[list[ServerProcess]]:
    haproxy_binary()  # skip (or fail in CI) before starting anything
    # Callers send the session's agent token (tests.plugins.servers): HAProxy passes it on.
    env = {"ACGS_DATABASE_URL": postgres_url, "ACGS_DRAIN_DELAY_S": str(DRAIN_S),
           "ACGS_ENGINE_WORKERS": "1"}
    factory = ServerFactory(tmp_path_factory.mktemp("edge_fleet"), env)
    servers = [factory.make(name=f"edge{i}") for i in range(3)]
    try:
        for server in servers:
            server.start(wait_serving=False)
        for server in servers:
            server.wait_serving()
        yield servers
    finally:
        for server in servers:  # drain all three at once, not one after another
            if server.proc is not None and server.proc.poll() is None:
                server.signal(signal.SIGTERM)
        factory.close()


@pytest.fixture(scope="module")
def edge(
    tmp_path_factory: pytest.TempPathFactory, edge_tls: TlsFiles, fleet: list[ServerProcess]
) -> Iterator[Edge]:
    factory = EdgeFactory(tmp_path_factory.mktemp("edge"), edge_tls)
    try:
        yield factory.start(fleet)
    finally:
        factory.close()


@pytest.fixture
def up(edge: Edge, fleet: list[ServerProcess]) -> Edge:
    """The edge with all three servers running and UP (a test that stops one restarts it)."""
    for server in fleet:
        if server.proc is None or server.proc.poll() is not None:
            server.stop()  # closes the old log handle
            server.start()
    for server in fleet:
        edge.wait_state(name(server), "UP")
    return edge


def name(server: ServerProcess) -> str:
    return upstream(server).name


def scrape(server: ServerProcess, metric: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics") as resp:
        return metric_total(resp.read().decode(), metric)


def decisions(server: ServerProcess) -> float:
    return scrape(server, "acgs_decisions_total")


Metadata = tuple[tuple[str, str], ...]


def decide(channel: grpc.Channel, i: int, metadata: Metadata = MD) -> pb.Decision:
    stub = pb_grpc.GovernanceStub(channel)
    # Unique request_ids: one repeated (a later test's Load) would be replayed, not decided.
    return stub.Decide(decide_request(allow_input(), request_id=f"edge-{RUN}-{i}"),
                       metadata=metadata,
                       timeout=5)


@dataclass
class Load:
    """Decide calls in a loop from ``threads`` clients (one channel each) through the TLS
    listener, until the ``with`` block ends; failures keep their time and status."""

    edge: Edge
    threads: int = THREADS
    max_calls: int = 20_000  # per thread: bounded even if the block never ends
    ok_at: list[float] = field(default_factory=list)
    failures: list[tuple[float, grpc.StatusCode, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        self._workers = [threading.Thread(target=self._run, args=(t,)) for t in range(self.threads)]
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)

    def _run(self, thread: int) -> None:
        with self.edge.secure_channel() as channel:
            for i in range(self.max_calls):
                if self._stop.is_set():
                    return
                try:
                    decide(channel, thread * self.max_calls + i)
                    self.ok_at.append(time.monotonic())
                except grpc.RpcError as err:
                    self.failures.append((time.monotonic(), err.code(), err.details()))


def test_rendered_config_is_valid_without_warnings(edge_tls: TlsFiles) -> None:
    config = EdgeConfig(
        upstreams=[Upstream(f"s{i}", f"127.0.0.1:{50051 + i}", 9464 + i) for i in range(3)],
        certificate=edge_tls.server_pem, h2c_addr="127.0.0.1:8080",
    )
    path = edge_tls.ca.parent / "check.cfg"
    path.write_text(render(config, default_template()))
    check = subprocess.run([haproxy_binary(), "-c", "-f", str(path)], capture_output=True,
                           text=True, check=False)
    out = check.stdout + check.stderr
    assert check.returncode == 0, out
    assert "[WARNING]" not in out and "[ALERT]" not in out, out


def test_tls_calls_reach_every_server_in_turn(up: Edge, fleet: list[ServerProcess]) -> None:
    before = [decisions(s) for s in fleet]
    with up.secure_channel() as channel:
        for i in range(30):
            assert decide(channel, i).effect == pb.ALLOW
    deltas = [decisions(s) - b for s, b in zip(fleet, before, strict=True)]
    assert sum(deltas) == 30 and min(deltas) >= 8, deltas  # roundrobin: 10 each


def test_h2c_listener_and_haproxy_metrics(up: Edge) -> None:
    with agent_channel(up.h2c_address) as channel:
        assert decide(channel, 0).effect == pb.ALLOW
    exported = up.fetch("/metrics")
    assert metric_total(exported, "haproxy_backend_active_servers", {"proxy": "acgs_unary"}) == 3
    assert "acgs_unary" in up.fetch("/stats")


@pytest.mark.parametrize(
    "metadata",
    [(), (("x-constitutional-hash", "0" * 16),), (("x-constitutional-hash", HASH.upper()),),
     (("x-constitutional-hash", f"x, {HASH}"),), MD + MD],
    ids=["missing", "other", "upper-case", "list", "twice"],
)
def test_calls_without_the_hash_are_refused_at_the_edge(
    up: Edge, fleet: list[ServerProcess], metadata: Metadata
) -> None:
    counters = ("acgs_decisions_total", "acgs_constitutional_hash_mismatches_total")
    before = [[scrape(s, c) for c in counters] for s in fleet]
    refused = {"proxy": "constitution_refused"}
    refused_before = metric_total(up.fetch("/metrics"), "haproxy_backend_http_requests_total",
                                  refused)
    with up.secure_channel() as channel, pytest.raises(grpc.RpcError) as info:
        decide(channel, 0, metadata)  # the body carries the right hash: a server would ALLOW
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert HASH in info.value.details()
    assert [[scrape(s, c) for c in counters] for s in fleet] == before
    after = metric_total(up.fetch("/metrics"), "haproxy_backend_http_requests_total", refused)
    assert after == refused_before + 1


def test_health_and_reflection_need_no_hash(up: Edge) -> None:
    with up.secure_channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = reflection.ServerReflectionInfo(iter([request]), timeout=5)
    services = {s.name for s in answer.list_services_response.service}
    assert "acgs.v1.Governance" in services


def test_streams_outlive_the_unary_timeout(
    edges: EdgeFactory, fleet: list[ServerProcess]
) -> None:
    edge = edges.start(fleet, unary_timeout_s=0.5)
    with edge.secure_channel() as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(),
                                                          timeout=2.0)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            next(watch)  # no more updates: the stream stays open until the client's deadline
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_kill_9_fails_only_calls_in_flight_and_the_server_rejoins(
    up: Edge, fleet: list[ServerProcess]
) -> None:
    victim = fleet[1]
    with Load(up) as load:
        time.sleep(1.0)
        killed_at = time.monotonic()
        victim.kill()
        noticed_s = up.wait_state(name(victim), "DOWN", timeout=2.0)
        time.sleep(3.0)
    print(f"kill -9: DOWN after {noticed_s:.2f} s; {len(load.failures)} of "
          f"{len(load.ok_at) + len(load.failures)} calls failed: {load.failures}")
    late = [f for f in load.failures if f[0] > killed_at + 2.0]
    assert len(load.failures) <= load.threads, load.failures
    assert not late, late
    assert sum(t > killed_at + 2.0 for t in load.ok_at) > 50  # the other two kept answering

    victim.stop()
    victim.start()
    up.wait_state(name(victim), "UP", timeout=10)
    with up.secure_channel() as channel:
        for i in range(12):
            decide(channel, i)
    assert decisions(victim) >= 3  # a fresh process: every decision it counts came via HAProxy


def test_sigterm_drains_without_a_failed_call(up: Edge, fleet: list[ServerProcess]) -> None:
    victim = fleet[2]
    assert victim.proc is not None
    with Load(up) as load:
        time.sleep(1.0)
        victim.signal(signal.SIGTERM)
        # HAProxy takes it out while it still runs: /ready answered 503 (Layer 7 status).
        noticed_s = up.wait_state(name(victim), "DOWN", timeout=DRAIN_S)
        row = up.stats()[name(victim)]
        assert (row["check_status"], row["check_code"]) == ("L7STS", "503"), row
        assert victim.proc.poll() is None
        code = victim.proc.wait(timeout=DRAIN_S + 15)
        time.sleep(0.5)
    print(f"SIGTERM: DOWN after {noticed_s:.2f} s; {len(load.failures)} of "
          f"{len(load.ok_at) + len(load.failures)} calls failed")
    assert code == 0, victim.log()
    assert load.failures == []
    assert len(load.ok_at) > 100
