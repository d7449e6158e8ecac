"""Escalations grouped, not flooded; identities that mean something (issue 16, points 2, 3).

Real servers and PostgreSQL: 1,000 cross-tenant requests from one caller are one
escalation with count 1,000 (every decision still audited, each carrying its id), and
a second server's decisions of the same group join it; an agent writing an admin's
token id as principal.id blocks nobody, while an admin whose identity is the principal
may not resolve.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from acgs.domain import tokens as tk
from acgs.entrypoints import cli
from acgs.v1 import escalations_pb2 as epb
from acgs.v1 import escalations_pb2_grpc as epb_grpc
from acgs.v1 import governance_pb2 as pb
from acgs.v1 import governance_pb2_grpc as pb_grpc

from tests.client import allow_input, authorized, decide_request
from tests.plugins.servers import REPO, ServerFactory

pytestmark = pytest.mark.postgres

CROSS_TENANT = allow_input(tenant_id="t2")  # principal and resource in t1: a critical DENY
APPROVALS = Path(__file__).parent / "policies" / "approvals"
TRANSFER = allow_input(action={"type": "fund_transfer", "attributes": {}})


def eventually(fn: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except (AssertionError, grpc.RpcError) as err:
            # NOT_FOUND: not shipped yet; UNAUTHENTICATED: a token created a moment ago
            # that this server's copy of the table does not hold yet.
            if isinstance(err, grpc.RpcError) and err.code() not in (  # type: ignore[attr-defined]
                    grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAUTHENTICATED):
                raise
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def rows(url: str, query: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchall()


def test_a_thousand_cross_tenant_requests_are_one_escalation(
        servers: ServerFactory, server_database: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    a, b = servers.start(name="a"), servers.start(name="b")
    with a.channel("agent") as ch:
        stub = pb_grpc.GovernanceStub(ch)
        answers = [stub.Decide(decide_request(CROSS_TENANT, request_id=f"x-{i}"), timeout=10)
                   for i in range(1000)]
    assert {d.effect for d in answers} == {pb.DENY}
    ids = {d.escalation_id for d in answers}
    assert len(ids) == 1 and "" not in ids
    eid = ids.pop()

    def grouped(count: int) -> None:
        assert rows(server_database, "SELECT id::text, count FROM escalations") == [(eid, count)]

    eventually(lambda: grouped(1000))
    assert rows(server_database, "SELECT count(*), count(DISTINCT decision_id) FROM "
                "audit_decisions WHERE kind = 'decision' AND escalation_id = %s", eid
                ) == [(1000, 1000)]
    # Approvers see one item with its count, through the API and the command line.
    with b.channel("admin") as ch:
        admin = epb_grpc.EscalationsStub(ch)
        listed = admin.ListEscalations(epb.ListEscalationsRequest(), timeout=10).escalations
        assert [(e.escalation_id, e.count) for e in listed] == [(eid, 1000)]
        assert listed[0].last_seen_at.ToNanoseconds() >= listed[0].created_at.ToNanoseconds()
    capsys.readouterr()
    assert cli.main(["escalations", "list", "--addr", b.address,
                     "--token", b.tokens.token(tk.ADMIN)]) == 0
    assert "count=1000" in capsys.readouterr().out

    # The same group on another server: PostgreSQL merges it into the pending one.
    with b.channel("agent") as ch:
        other = pb_grpc.GovernanceStub(ch).Decide(decide_request(CROSS_TENANT), timeout=10)
    assert other.escalation_id and other.escalation_id != eid
    eventually(lambda: grouped(1001))
    with b.channel("admin") as ch:
        admin = epb_grpc.EscalationsStub(ch)
        merged = admin.GetEscalation(epb.GetEscalationRequest(
            escalation_id=other.escalation_id), timeout=10)
    assert (merged.escalation_id, merged.count) == (eid, 1001)


def acgs(*args: str, database: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "service"), "ACGS_DATABASE_URL": database}
    return subprocess.run([sys.executable, "-m", "acgs.entrypoints.cli", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60, check=False)


def test_identities_decide_self_resolution(servers: ServerFactory,
                                           server_database: str) -> None:
    server = servers.start({"ACGS_POLICY_DIR": str(APPROVALS),
                            "ACGS_ESCALATION_SWEEP_S": "60"})
    created = acgs("token", "create", "--role", "admin", "--name", "alice",
                   "--identity", "alice@corp", database=server_database)
    assert created.returncode == 0 and "identity alice@corp" in created.stderr, created.stderr
    alice_token = created.stdout.strip()
    alice_id = tk.parse(alice_token)
    assert alice_id
    listed = acgs("token", "list", database=server_database).stdout
    assert any(alice_id in line and "alice@corp" in line for line in listed.splitlines())
    admin_id = server.tokens.id(tk.ADMIN)  # the session's admin token names no identity
    with server.channel("agent") as ch:
        stub = pb_grpc.GovernanceStub(ch)

        def escalate(principal: str) -> str:
            doc = dict(TRANSFER, principal={**TRANSFER["principal"], "id": principal})
            return str(stub.Decide(decide_request(doc), timeout=10).escalation_id)

        # The old trick: an agent writes an admin's token id as principal.id.
        tricked = [escalate(admin_id), escalate(alice_id)]
        alices_own = escalate("alice@corp")
    with server.channel("admin") as plain, \
            authorized(grpc.insecure_channel(server.address), alice_token) as alice_ch:
        admin, by_alice = epb_grpc.EscalationsStub(plain), epb_grpc.EscalationsStub(alice_ch)
        for stub_, eid in ((admin, tricked[0]), (by_alice, tricked[1])):
            done = eventually(lambda s=stub_, e=eid: _deny(s, e))
            assert done.state == epb.DENIED
        with pytest.raises(grpc.RpcError) as refused:
            eventually(lambda: _deny(by_alice, alices_own))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        assert _deny(admin, alices_own).state == epb.DENIED  # anyone else may


def _deny(stub: epb_grpc.EscalationsStub, eid: str) -> epb.Escalation:
    return stub.ResolveEscalation(epb.ResolveEscalationRequest(
        escalation_id=eid, verdict=epb.VERDICT_DENY, comment="no"), timeout=10)
