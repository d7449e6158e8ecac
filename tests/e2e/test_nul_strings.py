"""A NUL character in any request string is INVALID_ARGUMENT, and the audit trail keeps shipping.

PostgreSQL cannot store NUL in text: before this was refused, one Decide whose
principal id held a NUL was answered (and journaled), and the shipper then failed on
that record forever, so nothing after it reached the database.
"""

from __future__ import annotations

import time

import grpc
import pytest
from acgs.domain import tokens as tk
from acgs.v1 import audit_pb2, audit_pb2_grpc, escalations_pb2, escalations_pb2_grpc
from acgs.v1 import governance_pb2 as pb
from acgs.v1 import governance_pb2_grpc as pb_grpc

from tests.client import HASH, allow_input, decide_request
from tests.plugins.servers import ServerProcess

pytestmark = pytest.mark.postgres

NUL = "\x00"


def _principal(pid: str) -> dict[str, object]:
    return {"id": pid, "roles": ["operator"], "tenant_id": "t1", "attributes": {}}


DECIDE_INPUTS = {
    "principal.id": allow_input(principal=_principal(f"agent{NUL}evil")),
    "principal.roles": allow_input(principal={**_principal("a"), "roles": [f"operator{NUL}"]}),
    "resource.id": allow_input(resource={"type": "document", "id": f"d{NUL}", "tenant_id": "t1"}),
    "a Struct string": allow_input(context={"note": f"x{NUL}y"}),
    "a Struct key": allow_input(context={f"k{NUL}": 1}),
}


def _refused(call: object) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
    details = info.value.details() or ""
    assert "NUL" in details
    return details


@pytest.mark.parametrize("where", sorted(DECIDE_INPUTS))
def test_decide_refuses_nul_anywhere(shared_server: ServerProcess, where: str) -> None:
    with shared_server.channel(tk.AGENT) as ch:
        stub = pb_grpc.GovernanceStub(ch)
        request = decide_request(DECIDE_INPUTS[where])
        assert where in _refused(lambda: stub.Decide(request, timeout=5))
        batch = pb.DecideBatchRequest(requests=[decide_request(allow_input()), request])
        _refused(lambda: stub.DecideBatch(batch, timeout=5))


def test_request_id_evaluate_and_admin_calls_refuse_nul(shared_server: ServerProcess) -> None:
    with shared_server.channel(tk.AGENT) as ch:
        stub = pb_grpc.GovernanceStub(ch)
        request = decide_request(allow_input())
        request.request_id = f"r{NUL}"
        assert "request_id" in _refused(lambda: stub.Decide(request, timeout=5))
        evaluate = pb.EvaluateRequest(constitutional_hash=HASH, path="acgs/constitution/decision",
                                      input_json='{"tenant_id": "t\\u0000"}')
        assert "input_json" in _refused(lambda: stub.Evaluate(evaluate, timeout=5))
        bad_path = pb.EvaluateRequest(constitutional_hash=HASH, path=f"acgs{NUL}")
        assert "path" in _refused(lambda: stub.Evaluate(bad_path, timeout=5))
    with shared_server.channel(tk.ADMIN) as ch:
        esc = escalations_pb2_grpc.EscalationsStub(ch)
        ack = escalations_pb2.AcknowledgeEscalationRequest(
            escalation_id="00000000-0000-7000-8000-000000000000", comment=f"ok{NUL}")
        assert "comment" in _refused(lambda: esc.AcknowledgeEscalation(ack, timeout=5))
    with shared_server.channel(tk.AUDITOR) as ch:
        audit = audit_pb2_grpc.AuditStub(ch)
        listing = audit_pb2.ListDecisionsRequest(
            filter=audit_pb2.DecisionFilter(tenant_id=f"t{NUL}"))
        assert "filter.tenant_id" in _refused(lambda: audit.ListDecisions(listing, timeout=5))


def test_the_audit_trail_ships_after_a_nul_attempt(shared_server: ServerProcess) -> None:
    with shared_server.channel(tk.AGENT) as ch:
        stub = pb_grpc.GovernanceStub(ch)
        _refused(lambda: stub.Decide(decide_request(DECIDE_INPUTS["principal.id"]), timeout=5))
        decision = stub.Decide(decide_request(allow_input()), timeout=5)
    with shared_server.channel(tk.AUDITOR) as ch:
        audit = audit_pb2_grpc.AuditStub(ch)
        deadline = time.monotonic() + 10
        while True:
            try:
                record = audit.GetDecision(
                    audit_pb2.GetDecisionRequest(decision_id=decision.decision_id), timeout=5)
                break
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.NOT_FOUND, err
                assert time.monotonic() < deadline, "the decision was never shipped"
                time.sleep(0.1)
    assert record.decision_id == decision.decision_id
