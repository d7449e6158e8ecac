"""request_id as an idempotency key (issue 16, point 1), over real channels and PostgreSQL.

On the server that decided it: the same request_id three times is one decision, one
audit record, one escalation; another body under it is FAILED_PRECONDITION. Across the
fleet: a server killed with SIGKILL after journaling (before shipping), the client's
retry answered by another server through HAProxy: two audit records, linked as a retry,
and one escalation whichever id the client holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from acgs.v1 import escalations_pb2 as epb
from acgs.v1 import escalations_pb2_grpc as epb_grpc
from acgs.v1 import governance_pb2 as pb
from acgs.v1 import governance_pb2_grpc as pb_grpc

from tests.client import HASH, allow_input, decide_request
from tests.plugins.haproxy import EdgeFactory, metric_total, upstream
from tests.plugins.servers import ServerFactory, ServerProcess

pytestmark = pytest.mark.postgres

POLICY = Path(__file__).parent / "policies" / "approvals"
ENV = {"ACGS_POLICY_DIR": str(POLICY), "ACGS_ESCALATION_SWEEP_S": "60"}
TRANSFER = allow_input(action={"type": "fund_transfer", "attributes": {}})


def eventually(fn: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def rows(url: str, query: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchall()


def code_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()  # type: ignore[attr-defined]


def test_same_request_id_three_times_is_one_decision(servers: ServerFactory,
                                                     server_database: str) -> None:
    server = servers.start(ENV)
    with server.channel("agent") as ch:
        stub = pb_grpc.GovernanceStub(ch)
        request = decide_request(TRANSFER, request_id="pay-42")
        answers = [stub.Decide(request, timeout=10) for _ in range(3)]
        assert {a.decision_id for a in answers} == {answers[0].decision_id}
        assert [a.replayed for a in answers] == [False, True, True]
        assert answers[0].effect == pb.ESCALATE and answers[0].escalation_id
        assert {a.escalation_id for a in answers} == {answers[0].escalation_id}

        other = decide_request(dict(TRANSFER, context={"amount": 2}), request_id="pay-42")
        code, details = code_of(lambda: stub.Decide(other, timeout=10))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "request_id" in details

        # DecideBatch items are keys too: a replay, a repeat within the batch, a conflict.
        fresh = decide_request(allow_input(), request_id="read-1")
        batch = stub.DecideBatch(pb.DecideBatchRequest(requests=[request, fresh, fresh]),
                                 timeout=10)
        assert [d.replayed for d in batch.decisions] == [True, False, True]
        assert batch.decisions[0].decision_id == answers[0].decision_id
        assert batch.decisions[1].decision_id == batch.decisions[2].decision_id
        code, details = code_of(lambda: stub.DecideBatch(
            pb.DecideBatchRequest(requests=[fresh, other]), timeout=10))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "requests[1].request_id" in details
        # No request_id: never deduplicated.
        plain = decide_request(allow_input(), request_id="")
        assert len({stub.Decide(plain, timeout=10).decision_id for _ in range(2)}) == 2

    def shipped() -> None:
        decided = rows(server_database, "SELECT decision_id FROM audit_decisions "
                       "WHERE kind = 'decision' AND request_id = 'pay-42'")
        assert [str(d[0]) for d in decided] == [answers[0].decision_id]
        assert len(rows(server_database, "SELECT 1 FROM audit_decisions WHERE kind = 'decision' "
                        "AND request_id = 'read-1'")) == 1
        assert rows(server_database, "SELECT id::text, count FROM escalations "
                    "WHERE request_id = 'pay-42'") == [(answers[0].escalation_id, 1)]

    eventually(shipped)


@pytest.mark.haproxy
@pytest.mark.slow
def test_retry_through_haproxy_after_kill_9_is_linked_with_one_escalation(
        servers: ServerFactory, server_database: str, edges: EdgeFactory) -> None:
    """The first server journals the decision and answers, then dies (SIGKILL) before its
    shipper commits (a table lock holds the commit back). The client retries through
    HAProxy; the second server decides again. PostgreSQL records both, links them, and
    keeps one escalation, whichever server's journal arrives first."""
    fleet = [servers.start(ENV, name="a"), servers.start(ENV, name="b")]
    edge = edges.start(fleet)
    md = (("x-constitutional-hash", HASH),)
    request = decide_request(TRANSFER, request_id="wire-retry-1")
    with psycopg.connect(server_database) as lock:
        lock.execute("LOCK TABLE audit_decisions IN EXCLUSIVE MODE")  # no shipper commits
        with edge.secure_channel() as ch:
            stub = pb_grpc.GovernanceStub(ch)
            first = stub.Decide(request, metadata=md, timeout=10)
            dead = next(s for s in fleet if _decisions(s) > 0)
            survivor = next(s for s in fleet if s is not dead)
            dead.kill()
            edge.wait_state(upstream(dead).name, "DOWN")
            second = stub.Decide(request, metadata=md, timeout=10)
        lock.rollback()  # release: the survivor ships its record first
    assert first.decision_id != second.decision_id and not second.replayed
    assert first.escalation_id and second.escalation_id
    eventually(lambda: _assert_rows(server_database, "wire-retry-1", 1))
    dead.stop()
    dead.start()  # the next server on the host ships the dead one's journal

    def linked() -> None:
        _assert_rows(server_database, "wire-retry-1", 2)
        links = rows(server_database, "SELECT decision_id::text, retry_of::text "
                     "FROM decision_retries")
        assert links == [(first.decision_id, second.decision_id)]
        assert rows(server_database, "SELECT count(*), sum(count) FROM escalations "
                    "WHERE request_id = 'wire-retry-1'") == [(1, 1)]

    eventually(linked)
    with survivor.channel("admin") as ch:
        admin = epb_grpc.EscalationsStub(ch)
        seen = {admin.GetEscalation(epb.GetEscalationRequest(escalation_id=e), timeout=10
                                    ).escalation_id
                for e in (first.escalation_id, second.escalation_id)}
    assert seen == {second.escalation_id}


def _decisions(server: ServerProcess) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics") as resp:
        return metric_total(resp.read().decode(), "acgs_decisions_total")


def _assert_rows(url: str, request_id: str, n: int) -> None:
    found = rows(url, "SELECT 1 FROM audit_decisions WHERE kind = 'decision' AND request_id = %s",
                 request_id)
    assert len(found) == n
