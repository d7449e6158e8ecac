"""No request, damaged journal line or refused record stops the audit trail (real servers).

Before: one Decide with an 8 KB principal.id was answered ALLOW, then its audit row
failed on every attempt (index row size exceeds the btree maximum) and nothing after it
reached PostgreSQL; one damaged byte in an unshipped journal line killed the shipper
thread, and the next start cut every intact line after it and reused their seqs.
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
from acgs.v1 import audit_pb2, audit_pb2_grpc, escalations_pb2, escalations_pb2_grpc
from acgs.v1 import governance_pb2 as pb
from acgs.v1 import governance_pb2_grpc as pb_grpc

from tests.client import HASH, allow_input, decide_request
from tests.plugins.postgres import TcpProxy
from tests.plugins.servers import ServerFactory, ServerProcess

pytestmark = pytest.mark.postgres

ID_BOUND, TEXT_BOUND = 256, 65536  # the defaults (ACGS_MAX_ID_CHARS, ACGS_MAX_TEXT_CHARS)
WIDE = "\U0001d11e"  # 4 bytes in UTF-8: the worst case for an index entry


def _principal(**kw: object) -> dict[str, object]:
    return {"id": "agent-1", "roles": ["operator"], "tenant_id": "t1", "attributes": {}, **kw}


def _resource(**kw: object) -> dict[str, object]:
    return {"type": "document", "id": "d1", "tenant_id": "t1", "attributes": {}, **kw}


def _decide(field: str, value: str) -> pb.DecideRequest:
    return {
        "tenant_id": lambda: decide_request(allow_input(tenant_id=value)),
        "principal.id": lambda: decide_request(allow_input(principal=_principal(id=value))),
        "principal.roles": lambda: decide_request(allow_input(principal=_principal(roles=[value]))),
        "principal.tenant_id": lambda: decide_request(
            allow_input(principal=_principal(tenant_id=value))),
        "action.type": lambda: decide_request(allow_input(action={"type": value})),
        "resource.type": lambda: decide_request(allow_input(resource=_resource(type=value))),
        "resource.id": lambda: decide_request(allow_input(resource=_resource(id=value))),
        "resource.tenant_id": lambda: decide_request(
            allow_input(resource=_resource(tenant_id=value))),
        "request_id": lambda: decide_request(allow_input(), request_id=value),
        "context: a Struct key": lambda: decide_request(allow_input(context={value: 1})),
        "context.n: a Struct string": lambda: decide_request(allow_input(context={"n": value})),
    }[field]()


BOUNDS = {"context.n: a Struct string": TEXT_BOUND}


def _refused(call: Callable[[], object]) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
    return info.value.details() or ""


def _shipped(server: ServerProcess, decision_id: str,
             timeout_s: float = 10) -> audit_pb2.AuditRecord:
    with server.channel(tk.AUDITOR) as ch:
        audit = audit_pb2_grpc.AuditStub(ch)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return audit.GetDecision(
                    audit_pb2.GetDecisionRequest(decision_id=decision_id), timeout=5)
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.NOT_FOUND, err
                assert time.monotonic() < deadline, f"{decision_id} was never shipped"
                time.sleep(0.1)


def test_an_8_kb_principal_id_is_refused_and_the_trail_ships_on(
        shared_server: ServerProcess) -> None:
    with shared_server.channel(tk.AGENT) as ch:
        stub = pb_grpc.GovernanceStub(ch)
        big = _decide("principal.id", "p" * 8192)
        assert "principal.id is 8192 characters" in _refused(lambda: stub.Decide(big, timeout=5))
        batch = pb.DecideBatchRequest(requests=[decide_request(allow_input()), big])
        assert "principal.id" in _refused(lambda: stub.DecideBatch(batch, timeout=5))
        decision = stub.Decide(decide_request(allow_input()), timeout=5)
    assert _shipped(shared_server, decision.decision_id).decision_id == decision.decision_id


@pytest.mark.parametrize("field", ["tenant_id", "principal.id", "principal.roles",
                                   "principal.tenant_id", "action.type", "resource.type",
                                   "resource.id", "resource.tenant_id", "request_id",
                                   "context: a Struct key", "context.n: a Struct string"])
def test_each_decide_string_one_past_its_bound_is_refused(
        shared_server: ServerProcess, field: str) -> None:
    bound = BOUNDS.get(field, ID_BOUND)
    with shared_server.channel(tk.AGENT) as ch:
        stub = pb_grpc.GovernanceStub(ch)
        details = _refused(lambda: stub.Decide(_decide(field, "x" * (bound + 1)), timeout=5))
        assert details.startswith(field) and f"over the limit of {bound}" in details
        decision = stub.Decide(_decide(field, WIDE * bound), timeout=5)  # at the bound
    _shipped(shared_server, decision.decision_id)


def test_every_id_at_its_bound_at_once_is_answered_and_shipped(
        shared_server: ServerProcess) -> None:
    tenant, pid = WIDE * ID_BOUND, "p" + WIDE * (ID_BOUND - 1)
    doc = allow_input(tenant_id=tenant, principal=_principal(id=pid, tenant_id=tenant,
                                                             roles=[WIDE * ID_BOUND]),
                      resource=_resource(id=WIDE * ID_BOUND, tenant_id=tenant))
    with shared_server.channel(tk.AGENT) as ch:
        decision = pb_grpc.GovernanceStub(ch).Decide(
            # request_id is an idempotency key: this test's own, at the bound too
            decide_request(doc, request_id="u" + WIDE * (ID_BOUND - 1)), timeout=5)
    record = _shipped(shared_server, decision.decision_id)
    assert (record.principal_id, record.tenant_id) == (pid, tenant)


def test_other_methods_strings_past_their_bound_are_refused(shared_server: ServerProcess) -> None:
    long_id = "x" * (ID_BOUND + 1)
    with shared_server.channel(tk.AGENT) as ch:
        stub = pb_grpc.GovernanceStub(ch)
        path = pb.EvaluateRequest(constitutional_hash=HASH, path=long_id)
        assert _refused(lambda: stub.Evaluate(path, timeout=5)).startswith("path is 257")
        evaluate = pb.EvaluateRequest(constitutional_hash=HASH, path="acgs/constitution/decision",
                                      input_json=json.dumps({"principal": {"id": long_id}}))
        assert "input_json: principal.id is 257" in _refused(
            lambda: stub.Evaluate(evaluate, timeout=5))
    with shared_server.channel(tk.ADMIN) as ch:
        esc = escalations_pb2_grpc.EscalationsStub(ch)
        ack = escalations_pb2.AcknowledgeEscalationRequest(
            escalation_id="00000000-0000-7000-8000-000000000000", comment="c" * (TEXT_BOUND + 1))
        assert _refused(lambda: esc.AcknowledgeEscalation(ack, timeout=5)).startswith(
            f"comment is {TEXT_BOUND + 1}")
    with shared_server.channel(tk.AUDITOR) as ch:
        audit = audit_pb2_grpc.AuditStub(ch)
        listing = audit_pb2.ListDecisionsRequest(filter=audit_pb2.DecisionFilter(tenant_id=long_id))
        assert _refused(lambda: audit.ListDecisions(listing, timeout=5)).startswith(
            "filter.tenant_id is 257")


# -- records the database refuses, damaged journal lines: quarantined, shipping goes on --------


def _metric(server: ServerProcess, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                timeout=5) as resp:
        text = resp.read().decode()
    match = re.search(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.M)
    assert match, f"no {name}"
    return float(match.group(1))


def _ready(server: ServerProcess) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/ready",
                                    timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read().decode()


def _wait(what: str, check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _rows(url: str, instance: str, table: str = "audit_decisions") -> list[int]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute(
            f"SELECT seq FROM {table} WHERE instance_id = %s ORDER BY seq", (instance,))]


def _verify(server: ServerProcess) -> audit_pb2.VerifyChainResponse:
    with server.channel(tk.AUDITOR) as ch:
        return audit_pb2_grpc.AuditStub(ch).VerifyChain(
            audit_pb2.VerifyChainRequest(instance_id=server.env["ACGS_INSTANCE_ID"]), timeout=10)


def _decide_n(server: ServerProcess, n: int, principal: str = "agent-1") -> list[str]:
    with server.channel(tk.AGENT) as ch:
        stub = pb_grpc.GovernanceStub(ch)
        return [stub.Decide(decide_request(allow_input(principal=_principal(id=principal))),
                            timeout=5).decision_id for _ in range(n)]


def test_a_record_the_database_refuses_is_quarantined_and_the_rest_ship(
        servers: ServerFactory, server_database: str) -> None:
    server = servers.start()
    with psycopg.connect(server_database, autocommit=True) as conn:  # a refusal to force
        conn.execute("ALTER TABLE audit_decisions ADD CONSTRAINT refuse_marked "
                     "CHECK (principal_id <> 'refuse-me')")
    instance = server.env["ACGS_INSTANCE_ID"]
    before = _decide_n(server, 2)
    [refused] = _decide_n(server, 1, principal="refuse-me")  # answered, journaled
    after = _decide_n(server, 3)
    started = time.monotonic()
    _wait("the records after it to ship", lambda: len(_rows(server_database, instance)) == 5)
    shipped_in = time.monotonic() - started
    for decision_id in before + after:
        _shipped(server, decision_id, timeout_s=1)
    with psycopg.connect(server_database) as conn:
        [(seq, line, reason)] = conn.execute(
            "SELECT seq, line, reason FROM audit_quarantine WHERE instance_id = %s",
            (instance,)).fetchall()
    assert seq == 3 and refused.encode() in bytes(line)
    assert "23514" in reason and "refuse_marked" in reason
    assert _metric(server, "acgs_audit_quarantined_records_total") == 1
    report = _verify(server)
    assert report.ok and [q.seq for q in report.quarantined] == [3], report
    assert shipped_in < 10


def test_a_damaged_middle_line_loses_no_intact_decision_and_reuses_no_seq(
        servers: ServerFactory, server_database: str) -> None:
    proxy = TcpProxy(server_database)
    proxy.restore()
    try:
        server = servers.start({"ACGS_DATABASE_URL": proxy.url, "ACGS_AUDIT_SHIP_STALL_S": "1"})
        instance = server.env["ACGS_INSTANCE_ID"]
        _decide_n(server, 1)
        _wait("the first record to ship", lambda: _rows(server_database, instance) == [1])
        proxy.cut()  # PostgreSQL away: what follows stays in the journal
        answered = _decide_n(server, 6)
        _wait("/ready to tell the shipper is stuck",
              lambda: "audit shipper: no progress" in _ready(server)[1])
        assert _ready(server)[0] == 200  # decisions go on
        assert _metric(server, "acgs_audit_shipper_stalled") == 1
        journal = Path(server.env["ACGS_DATA_DIR"]) / "journal" / instance
        [segment] = sorted(journal.glob("*.jsonl"))
        data = bytearray(segment.read_bytes())
        lines = bytes(data).split(b"\n")
        start = sum(len(x) + 1 for x in lines[:3])  # seq 4: a middle line, unshipped
        data[start + 50] ^= 0x20
        segment.write_bytes(bytes(data))
        server.kill()  # and a restart on the damaged journal
        proxy.restore()
        server.start()
        more = _decide_n(server, 2)

        def every_seq_but_4() -> bool:  # 8 on: the checkpoint attesting seq 4, then 2 more
            rows = _rows(server_database, instance)
            return len(rows) >= 9 and rows == [s for s in range(1, rows[-1] + 1) if s != 4]

        _wait("every intact line, the attestation and the new ones to ship", every_seq_but_4)
    finally:
        proxy.cut()
    proxy.restore()
    try:
        assert every_seq_but_4()  # each seq once, none reused, only the damaged one aside
        assert _rows(server_database, instance, "audit_quarantine") == [4]
        damaged = answered[2]  # seq 4's decision: in quarantine, not among the rows
        for decision_id in answered[:2] + answered[3:] + more:
            _shipped(server, decision_id, timeout_s=1)
        with server.channel(tk.AUDITOR) as ch, pytest.raises(grpc.RpcError):
            audit_pb2_grpc.AuditStub(ch).GetDecision(
                audit_pb2.GetDecisionRequest(decision_id=damaged), timeout=5)
        report = _verify(server)
        assert report.ok and [q.seq for q in report.quarantined] == [4], report
        assert "checksum" in report.quarantined[0].reason
        assert report.quarantined[0].source == f"{segment.name}@{start}"
    finally:
        proxy.cut()
