"""Starting without the database (issue 14, point 4).

A server that restarts while PostgreSQL is unreachable must serve from its
journal and its local snapshot (policy version, token table), and once the
database returns migrate it, ship every answered decision exactly once and
resume policy sync and token refresh. A server with nothing local refuses to
start and says why. Before this, the restart exited on the migration's
connection error.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import psycopg
import pytest
from acgs.domain import tokens as tk
from acgs.v1 import audit_pb2, audit_pb2_grpc, policy_admin_pb2, policy_admin_pb2_grpc
from acgs.v1 import governance_pb2 as pb
from acgs.v1 import governance_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2

from tests.client import allow_input, authorized, decide_request
from tests.plugins.postgres import TcpProxy
from tests.plugins.servers import ServerFactory, ServerProcess, store_tokens

pytestmark = pytest.mark.postgres


def _wait(what: str, check: Callable[[], object], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _decide(channel: grpc.Channel, n: int, tag: str) -> list[pb.Decision]:
    stub = pb_grpc.GovernanceStub(channel)
    out = []
    for i in range(n):
        doc = allow_input()
        doc["principal"]["id"] = f"{tag}-{i}"
        decision = stub.Decide(decide_request(doc, request_id=f"{tag}-{i}"), timeout=10)
        assert decision.effect == pb.ALLOW, decision
        out.append(decision)
    return out


def _ready(server: ServerProcess) -> tuple[int, str]:
    url = f"http://127.0.0.1:{server.metrics_port}/ready"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _metric(server: ServerProcess, name: str) -> float:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    match = re.search(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.M)
    assert match, f"no metric {name}"
    return float(match.group(1))


def _counts(conninfo: str, ids: list[str]) -> dict[str, int]:
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            "SELECT decision_id::text, count(*) FROM audit_decisions "
            "WHERE decision_id::text = ANY(%s) GROUP BY decision_id", (ids,)).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def _unavailable(call: Callable[[], object]) -> grpc.StatusCode:
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert time.monotonic() - started < 15, "an admin call hung on the unreachable database"
    return err.value.code()  # type: ignore[no-any-return, attr-defined]


def test_restart_during_an_outage_serves_then_catches_up(
    servers: ServerFactory, server_database: str
) -> None:
    proxy = TcpProxy(server_database)
    proxy.restore()
    try:
        server = servers.make({"ACGS_DATABASE_URL": proxy.url, "ACGS_DATABASE_RETRY_S": "0.5"})
        server.start()
        snapshot = Path(server.env["ACGS_DATA_DIR"]) / "snapshot"
        _wait("the snapshot", lambda: (snapshot / "policy.json").exists()
              and (snapshot / "tokens.json").exists(), timeout=30)
        with server.channel() as ch:
            before = _decide(ch, 10, "before")
        revision = before[0].policy_revision

        proxy.cut()
        with server.channel() as ch:
            before += _decide(ch, 10, "outage")  # journaled, not shipped
        server.kill()  # kill -9 during the outage
        server.start(provision=False)  # would exit on the migration's connection error before

        with server.channel() as ch:
            during = _decide(ch, 20, "restarted")
        assert {d.policy_revision for d in during} == {revision}
        status, body = _ready(server)
        assert status == 200 and body.startswith("SERVING") and "database unreachable" in body
        assert _metric(server, "acgs_database_reachable") == 0
        with server.channel("auditor") as ch:
            code = _unavailable(lambda: audit_pb2_grpc.AuditStub(ch).ListChains(
                audit_pb2.ListChainsRequest(), timeout=30))
        assert code == grpc.StatusCode.UNAVAILABLE
        with server.channel("admin") as ch:
            code = _unavailable(lambda: policy_admin_pb2_grpc.PolicyAdminStub(ch)
                                .ListPolicyVersions(policy_admin_pb2.ListPolicyVersionsRequest(),
                                                    timeout=30))
        assert code == grpc.StatusCode.UNAVAILABLE

        with psycopg.connect(server_database) as conn:
            back_at = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        proxy.restore()
        answered = [d.decision_id for d in before + during]
        _wait("every answered decision in PostgreSQL",
              lambda: len(_counts(server_database, answered)) == len(answered))
        assert set(_counts(server_database, answered).values()) == {1}
        _wait("/ready to stop reporting the outage",
              lambda: "database" not in _ready(server)[1], timeout=30)
        assert _metric(server, "acgs_database_reachable") == 1

        # Policy sync resumed: the heartbeat names this server and the revision it serves.
        def heartbeat() -> bool:
            with psycopg.connect(server_database) as conn:
                row = conn.execute("SELECT active_revision, last_heartbeat FROM policy_instances "
                                   "WHERE instance_id = %s", (server.env["ACGS_INSTANCE_ID"],)
                                   ).fetchone()
            return row is not None and row[0] == revision and row[1] > back_at

        _wait("a policy heartbeat after the outage", heartbeat, timeout=30)

        # Token refresh resumed: a token created now authenticates, and is kept locally.
        fresh = tk.issue(role=tk.AGENT, name="after the outage", created_by="tests")
        store_tokens(server_database, [fresh.record])

        def fresh_token_works() -> bool:
            with authorized(grpc.insecure_channel(server.address), fresh.token) as ch:
                try:
                    _decide(ch, 1, "fresh")
                except grpc.RpcError:
                    return False
            return True

        _wait("the new token to authenticate", fresh_token_works, timeout=30)
        _wait("the token snapshot to hold it",
              lambda: fresh.record.id in (snapshot / "tokens.json").read_text(), timeout=10)
        assert fresh.token not in (snapshot / "tokens.json").read_text()

        # A snapshot altered while the server is down is refused, with the reason.
        proxy.cut()
        assert server.stop() == 0
        tokens_file = snapshot / "tokens.json"
        doc = json.loads(tokens_file.read_text())
        doc["records"][0]["role"] = "admin"
        tokens_file.write_text(json.dumps(doc))
        server.start(provision=False, wait_serving=False)
        assert server.proc is not None and server.proc.wait(timeout=60) != 0
        assert "altered or damaged" in server.log()
    finally:
        proxy.cut()


def test_a_server_with_nothing_local_refuses_to_start_without_the_database(
    servers: ServerFactory, server_database: str
) -> None:
    proxy = TcpProxy(server_database)  # never restored: nothing listens on its port
    server = servers.make({"ACGS_DATABASE_URL": proxy.url})
    server.start(provision=False, wait_serving=False)
    assert server.proc is not None
    code = server.proc.wait(timeout=60)
    log = server.log()
    assert code != 0, log
    assert "nothing local to serve from" in log, log
    assert "policy snapshot" in log and "token snapshot" in log, log


def test_a_database_of_another_constitution_returning_is_never_used(
    servers: ServerFactory, server_database: str
) -> None:
    proxy = TcpProxy(server_database)
    proxy.restore()
    try:
        server = servers.make({"ACGS_DATABASE_URL": proxy.url, "ACGS_DATABASE_RETRY_S": "0.5"})
        server.start()
        snapshot = Path(server.env["ACGS_DATA_DIR"]) / "snapshot"
        _wait("the snapshot", lambda: (snapshot / "tokens.json").exists(), timeout=30)
        proxy.cut()
        server.kill()
        server.start(provision=False)
        with server.channel() as ch:
            journaled = [d.decision_id for d in _decide(ch, 5, "journaled")]
        with psycopg.connect(server_database, autocommit=True) as conn:  # the wrong backup
            conn.execute("UPDATE acgs_meta SET value = '0123456789abcdef' "
                         "WHERE key = 'constitutional_hash'")
        proxy.restore()
        _wait("the server to refuse that database", lambda: _ready(server)[0] == 503, timeout=30)
        body = _ready(server)[1]
        assert "database refused" in body and "0123456789abcdef" in body, body
        assert server.health() == health_pb2.HealthCheckResponse.NOT_SERVING
        with server.channel("auditor") as ch:  # its readers do not read that database either
            code = _unavailable(lambda: audit_pb2_grpc.AuditStub(ch).ListChains(
                audit_pb2.ListChainsRequest(), timeout=30))
        assert code == grpc.StatusCode.UNAVAILABLE
        time.sleep(2)
        assert _counts(server_database, journaled) == {}  # nothing shipped to it
    finally:
        proxy.cut()
