"""Nothing lost: kill -9 under load, and PostgreSQL unreachable under load.

Every decision a client received a response for must end up in PostgreSQL
exactly once, and each instance's hash chain must verify.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from dataclasses import dataclass, field

import grpc
import psycopg
from acgs.v1 import audit_pb2, audit_pb2_grpc
from acgs.v1 import governance_pb2 as pb
from acgs.v1 import governance_pb2_grpc as pb_grpc

from tests.client import allow_input, decide_request
from tests.plugins.postgres import TcpProxy
from tests.plugins.servers import ServerFactory, ServerProcess


@dataclass
class Load:
    """Closed-loop Decide calls from a few threads until stopped; records what came back."""

    server: ServerProcess
    threads: int = 4
    ids: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for n in range(self.threads):
            worker = threading.Thread(target=self._run, args=(n,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def _run(self, n: int) -> None:
        with self.server.channel("agent") as channel:
            stub = pb_grpc.GovernanceStub(channel)
            i = 0
            while not self._stop.is_set():
                doc = allow_input()
                doc["principal"]["id"] = f"agent-{n}-{i}"
                i += 1
                try:
                    decision = stub.Decide(decide_request(doc), timeout=5)
                except grpc.RpcError as err:
                    self.failures.append(f"{err.code().name}: {err.details()}")  # type: ignore[attr-defined]
                    if self.server.proc is not None and self.server.proc.poll() is not None:
                        return  # the server is gone: nothing more to send
                    continue
                assert decision.effect == pb.ALLOW, decision
                self.ids.append(decision.decision_id)

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)


def _backlog(server: ServerProcess) -> float:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    match = re.search(r"^acgs_audit_journal_backlog_records(?:\{[^}]*\})? (\S+)$", text, re.M)
    assert match, "no backlog metric"
    return float(match.group(1))


def _wait(what: str, check: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _counts(conninfo: str, ids: list[str]) -> dict[str, int]:
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            "SELECT decision_id::text, count(*) FROM audit_decisions "
            "WHERE decision_id::text = ANY(%s) GROUP BY decision_id", (ids,)
        ).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def _verify_all_chains(server: ServerProcess) -> list[str]:
    with server.channel("auditor") as channel:
        stub = audit_pb2_grpc.AuditStub(channel)
        chains = stub.ListChains(audit_pb2.ListChainsRequest(), timeout=10).chains
        for chain in chains:
            report = stub.VerifyChain(audit_pb2.VerifyChainRequest(instance_id=chain.instance_id),
                                      timeout=30)
            assert report.ok, (chain.instance_id, report)
        return [c.instance_id for c in chains]


def test_kill_9_under_load_loses_nothing(servers: ServerFactory, server_database: str) -> None:
    server = servers.start()
    load = Load(server).start()
    time.sleep(3)
    server.kill()  # SIGKILL: no flush, no final ship
    load.stop()
    answered = list(load.ids)
    assert len(answered) > 50, f"only {len(answered)} decisions before the kill"
    server.start()  # same instance id and journal directory: replays what was not shipped
    _wait("every answered decision in PostgreSQL",
          lambda: len(_counts(server_database, answered)) == len(answered))
    counts = _counts(server_database, answered)
    assert set(counts.values()) == {1}, "a decision was recorded more than once"
    assert server.env["ACGS_INSTANCE_ID"] in _verify_all_chains(server)


def test_postgres_unreachable_under_load_loses_nothing(
    servers: ServerFactory, server_database: str
) -> None:
    proxy = TcpProxy(server_database)
    proxy.restore()
    try:
        server = servers.start({"ACGS_DATABASE_URL": proxy.url})
        load = Load(server).start()
        time.sleep(1)
        proxy.cut()
        time.sleep(10)  # PostgreSQL unreachable for 10 s under load
        grown = _backlog(server)
        proxy.restore()
        # Under continuing load the backlog never sits at exactly 0: it drains to a
        # handful of records in flight; then, with the load stopped, to 0.
        _wait("the backlog to drain", lambda: _backlog(server) < max(50, grown / 20), timeout=60)
        load.stop()
        _wait("the last decisions to ship", lambda: _backlog(server) == 0, timeout=30)
    finally:
        proxy.cut()
    assert load.failures == [], load.failures[:5]
    assert grown > 100, f"backlog during the outage was only {grown}"
    answered = list(load.ids)
    counts = _counts(server_database, answered)
    assert len(counts) == len(answered), f"{len(answered) - len(counts)} decisions missing"
    assert set(counts.values()) == {1}
    proxy.restore()
    try:
        _verify_all_chains(server)
    finally:
        proxy.cut()
