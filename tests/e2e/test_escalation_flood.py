"""Escalations grouped, not flooded, even by a caller that varies the resource.

A real server and PostgreSQL: an agent sends cross-tenant requests naming a new
resource.id each time (each its own group, so grouping alone cannot help). Past
ACGS_ESCALATION_CALLER_LIMIT the answers are DENY escalation_limit with no escalation,
every decision is audited, approvers see the capped escalations plus one incident for
the flood, and the metric counts the capped DENYs.
"""

from __future__ import annotations

import urllib.request
from typing import Any

import pytest
from acgs.v1 import escalations_pb2 as epb
from acgs.v1 import escalations_pb2_grpc as epb_grpc
from acgs.v1 import governance_pb2 as pb
from acgs.v1 import governance_pb2_grpc as pb_grpc

from tests.client import allow_input, decide_request
from tests.e2e.test_idempotency import eventually, rows
from tests.plugins.servers import ServerFactory

pytestmark = pytest.mark.postgres

LIMIT = 5


def cross_tenant(resource_id: str) -> dict[str, Any]:
    """A critical DENY (principal and resource in t1, request in t2) on ``resource_id``."""
    doc = allow_input(tenant_id="t2")
    return dict(doc, resource={**doc["resource"], "id": resource_id})


def test_a_caller_varying_the_resource_opens_at_most_its_cap(
        servers: ServerFactory, server_database: str) -> None:
    server = servers.start({"ACGS_ESCALATION_CALLER_LIMIT": str(LIMIT),
                            "ACGS_ESCALATION_CALLER_WINDOW_S": "300"})
    agent_id = server.tokens.id("agent")
    with server.channel("agent") as ch:
        stub = pb_grpc.GovernanceStub(ch)
        answers = [stub.Decide(decide_request(cross_tenant(f"x{i}")), timeout=10)
                   for i in range(12)]
        batch = stub.DecideBatch(pb.DecideBatchRequest(requests=[
            decide_request(cross_tenant(f"y{i}")) for i in range(3)]), timeout=10).decisions
    answers = [*answers, *batch]
    assert {d.effect for d in answers} == {pb.DENY}  # never ALLOW
    opened, capped = answers[:LIMIT], answers[LIMIT:]
    assert len({d.escalation_id for d in opened}) == LIMIT and all(
        d.escalation_id for d in opened)
    for d in capped:
        assert d.escalation_id == ""
        principles = [v.principle for v in d.violations]
        assert principles[-1] == "escalation_limit" and "tenant_isolation" in principles
        assert agent_id in d.violations[-1].message

    def shipped() -> None:
        assert rows(server_database, "SELECT count(*) FROM audit_decisions "
                    "WHERE kind = 'decision'") == [(len(answers),)]
        assert rows(server_database, "SELECT reason, requester_id, count(*) FROM escalations "
                    "GROUP BY 1, 2 ORDER BY 1") == [
            ("critical_violation", agent_id, LIMIT), ("escalation_limit", agent_id, 1)]

    eventually(shipped, timeout_s=30.0)
    with server.channel("admin") as ch:
        listed = epb_grpc.EscalationsStub(ch).ListEscalations(
            epb.ListEscalationsRequest(), timeout=10).escalations
    assert len(listed) == LIMIT + 1
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                timeout=10) as response:
        text = response.read().decode()
    assert f"acgs_escalations_limited_total {float(len(capped))}" in text
