"""acgs.v1.Escalations over gRPC against real server processes and PostgreSQL.

The servers run tests/e2e/policies/approvals: a fund transfer is ESCALATED
and needs two distinct approvals (the policy's required_approvals).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from acgs.domain import tokens as tk
from acgs.entrypoints import cli
from acgs.v1 import audit_pb2, audit_pb2_grpc
from acgs.v1 import escalations_pb2 as pb
from acgs.v1 import escalations_pb2_grpc as pb_grpc
from acgs.v1 import governance_pb2 as gpb
from acgs.v1 import governance_pb2_grpc as gpb_grpc

from tests.client import allow_input, authorized, decide_request
from tests.plugins.servers import ServerFactory, ServerProcess, store_tokens

pytestmark = pytest.mark.postgres

POLICY = Path(__file__).parent / "policies" / "approvals"
TRANSFER = allow_input(action={"type": "fund_transfer", "attributes": {}})


ENV = {"ACGS_POLICY_DIR": str(POLICY), "ACGS_ESCALATION_SWEEP_S": "60"}
ALICE = "alice@corp"


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()  # type: ignore[attr-defined,no-any-return]


def wait_for(fn: Callable[[], Any], timeout_s: float = 15.0) -> Any:
    """``fn()`` once it neither fails an assertion nor answers NOT_FOUND (the shipper has not
    copied the record yet)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except (AssertionError, grpc.RpcError) as err:
            not_yet = isinstance(err, AssertionError) or err.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
            if not not_yet or time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def resolve(stub: pb_grpc.EscalationsStub, escalation_id: str, verdict: int) -> pb.Escalation:
    return stub.ResolveEscalation(pb.ResolveEscalationRequest(
        escalation_id=escalation_id, verdict=verdict, comment="checked"), timeout=10)


class Watcher:
    """Collects WatchEscalations events in a thread until ``until(event)`` or cancel."""

    def __init__(self, stub: pb_grpc.EscalationsStub, after_seq: int,
                 until: Callable[[pb.EscalationEvent], bool]) -> None:
        self.events: list[pb.EscalationEvent] = []
        self.call = stub.WatchEscalations(pb.WatchEscalationsRequest(after_seq=after_seq),
                                          timeout=60)
        self._until = until
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for event in self.call:
                self.events.append(event)
                if self._until(event):
                    self.call.cancel()
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:  # type: ignore[attr-defined]
                raise

    def wait(self, n: int) -> None:
        deadline = time.monotonic() + 15
        while len(self.events) < n:
            assert time.monotonic() < deadline, [e.kind for e in self.events]
            time.sleep(0.02)


def db_events(url: str) -> list[tuple[int, str]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT seq, kind FROM escalation_events ORDER BY seq").fetchall()


def shipped_changes(url: str, n: int) -> list[tuple[str, str, str, str]]:
    """(event id, actor id, actor role, change) of the escalation.changed events shipped
    to PostgreSQL, once there are ``n`` of them, with the escalation event each projected
    (exactly one per event id)."""
    def ready() -> list[tuple[str, str, str, str]]:
        with psycopg.connect(url) as conn:
            rows = conn.execute(
                "SELECT a.decision_id::text, a.caller_id, a.caller_role, v.kind "
                "FROM audit_decisions a JOIN escalation_events v ON v.event_id = a.decision_id "
                "WHERE a.kind = 'escalation.changed' ORDER BY v.seq").fetchall()
        assert len(rows) == n, rows
        return rows

    return list(wait_for(ready))


@pytest.fixture
def fleet(servers: ServerFactory, server_database: str
          ) -> Iterator[tuple[ServerProcess, ServerProcess, str]]:
    """Two servers on one database, and the token of a second admin."""
    second = tk.issue(role=tk.ADMIN, name="second admin", created_by="tests")
    store_tokens(server_database, [second.record])
    yield servers.start(ENV, name="a"), servers.start(ENV, name="b"), second.token


@pytest.fixture
def alice_token(server_database: str) -> str:
    """The token of an admin whose identity is ALICE."""
    alice = tk.issue(role=tk.ADMIN, name="alice's admin token", created_by="tests",
                     identity=ALICE)
    store_tokens(server_database, [alice.record])
    return alice.token


def test_lifecycle_across_two_servers(fleet: tuple[ServerProcess, ServerProcess, str],
                                      server_database: str) -> None:
    a, b, admin2_token = fleet
    with ExitStack() as stack:
        ch = {role: stack.enter_context(b.channel(role)) for role in tk.ROLES}
        admin2 = pb_grpc.EscalationsStub(stack.enter_context(
            authorized(grpc.insecure_channel(b.address), admin2_token)))
        admin = pb_grpc.EscalationsStub(ch["admin"])
        governance = gpb_grpc.GovernanceStub(stack.enter_context(a.channel("agent")))

        decision = governance.Decide(decide_request(TRANSFER, request_id="wire-1"), timeout=10)
        assert decision.effect == gpb.ESCALATE and decision.escalation_id
        eid = decision.escalation_id
        # A watcher on the other server sees it arrive, then disconnects.
        first = Watcher(admin, 0, until=lambda e: True)
        first.thread.join(15)
        opened = first.events[0]
        assert (opened.kind, opened.escalation.escalation_id) == ("opened", eid)
        e = opened.escalation
        assert (e.state, e.decision_id, e.required_approvals) == (pb.OPEN, decision.decision_id, 2)
        assert e.requester_id == a.tokens.id(tk.AGENT) and e.principal_id == "agent-7"

        for role in (tk.AUDITOR, tk.AGENT):  # only admins resolve
            stub = pb_grpc.EscalationsStub(ch[role])
            assert code_of(lambda s=stub: resolve(s, eid, pb.VERDICT_APPROVE)
                           ) == grpc.StatusCode.PERMISSION_DENIED
        admin.AcknowledgeEscalation(pb.AcknowledgeEscalationRequest(escalation_id=eid),
                                    timeout=10)
        once = resolve(admin, eid, pb.VERDICT_APPROVE)
        twice = resolve(admin, eid, pb.VERDICT_APPROVE)  # the same approver counts once
        assert once.state == twice.state == pb.ACKNOWLEDGED and len(twice.approvals) == 1

        # Resume from the cursor while the last approval happens.
        resumed = Watcher(admin, opened.seq, until=lambda e: e.kind == "approved")
        resumed.wait(2)
        done = resolve(admin2, eid, pb.VERDICT_APPROVE)
        resumed.thread.join(15)
        assert done.state == pb.APPROVED and done.approval.effect == gpb.ALLOW
        assert [e.kind for e in resumed.events] == ["acknowledged", "approval", "approved"]
        seen = [(ev.seq, ev.kind) for ev in first.events + resumed.events]
        assert seen == db_events(server_database)  # nothing missed, nothing twice
        assert code_of(lambda: resolve(admin2, eid, pb.VERDICT_DENY)
                       ) == grpc.StatusCode.FAILED_PRECONDITION

        # The requester learns the outcome, and the ALLOW is in the audit trail.
        mine = pb_grpc.EscalationsStub(ch["agent"]).GetEscalation(
            pb.GetEscalationRequest(escalation_id=eid), timeout=10)
        assert mine.state == pb.APPROVED and mine.approval.decision_id == done.approval_decision_id
        audit = audit_pb2_grpc.AuditStub(ch["auditor"])
        allow = wait_for(lambda: audit.GetDecision(audit_pb2.GetDecisionRequest(
            decision_id=done.approval_decision_id), timeout=10))
        assert (allow.effect, allow.kind, allow.escalation_id) == (gpb.ALLOW, "decision", eid)
        assert allow.principal_id == "agent-7" and allow.request_id == "wire-1"
        # Each change is an event of the audit trail, by the admin who made it.
        changes = shipped_changes(server_database, 3)
        assert [(actor, role, kind) for _, actor, role, kind in changes] == [
            (b.tokens.id(tk.ADMIN), "admin", "acknowledged"),
            (b.tokens.id(tk.ADMIN), "admin", "approval"),
            (changes[2][1], "admin", "approved")]
        assert changes[2][1] not in (b.tokens.id(tk.ADMIN), a.tokens.id(tk.ADMIN))


def test_refusals_and_incidents(alice_token: str,
                                fleet: tuple[ServerProcess, ServerProcess, str],
                                capsys: pytest.CaptureFixture[str]) -> None:
    # alice_token comes first: stored before the servers start, they know it from their
    # first table read (a token created later is refused until their next reload).
    a, b, admin2_token = fleet
    with a.channel("agent") as agent, authorized(grpc.insecure_channel(b.address),
                                                 alice_token) as admin_ch:
        governance = gpb_grpc.GovernanceStub(agent)
        admin = pb_grpc.EscalationsStub(admin_ch)
        # Alice is the principal of this request: her admin token may not resolve it.
        own = dict(TRANSFER, principal={**TRANSFER["principal"], "id": ALICE})
        eid = governance.Decide(decide_request(own), timeout=10).escalation_id
        wait_for(lambda: admin.GetEscalation(pb.GetEscalationRequest(escalation_id=eid)))
        for verdict in (pb.VERDICT_APPROVE, pb.VERDICT_DENY):
            assert code_of(lambda v=verdict: resolve(admin, eid, v)
                           ) == grpc.StatusCode.PERMISSION_DENIED
        # Another admin denies it, with the command line.
        capsys.readouterr()
        connect = ["--addr", b.address, "--token", admin2_token, "--json"]
        assert cli.main(["escalations", "deny", eid, "-m", "not for itself", *connect]) == 0
        denied = json.loads(capsys.readouterr().out)
        assert (denied["state"], denied["resolutionComment"]) == ("DENIED", "not for itself")
        assert cli.main(["escalations", "list", "--state", "denied", *connect]) == 0
        assert [json.loads(line)["escalationId"]
                for line in capsys.readouterr().out.splitlines()] == [eid]
        # A request naming another constitution is refused, and escalated once per caller.
        for _ in range(3):
            bad = decide_request(allow_input(), constitutional_hash="0" * 16)
            assert code_of(lambda r=bad: governance.Decide(r, timeout=10)
                           ) == grpc.StatusCode.FAILED_PRECONDITION
        incidents = wait_for(lambda: _listed(admin, "constitution_mismatch"))
        assert [(i.requester_id, i.decision_id) for i in incidents] == [
            (a.tokens.id(tk.AGENT), "")]


def _listed(admin: pb_grpc.EscalationsStub, reason: str) -> list[pb.Escalation]:
    found = admin.ListEscalations(pb.ListEscalationsRequest(reason=reason), timeout=10)
    assert found.escalations
    return list(found.escalations)


def test_expiry_while_every_server_is_stopped(servers: ServerFactory,
                                              server_database: str) -> None:
    env = {**ENV, "ACGS_ESCALATION_TTL_S": "6"}
    first = servers.start(env, name="a")
    with first.channel("agent") as agent, first.channel("admin") as admin_ch:
        eid = gpb_grpc.GovernanceStub(agent).Decide(decide_request(TRANSFER), timeout=10
                                                    ).escalation_id
        wait_for(lambda: pb_grpc.EscalationsStub(admin_ch).GetEscalation(
            pb.GetEscalationRequest(escalation_id=eid), timeout=10))
    first.stop()
    with psycopg.connect(server_database, autocommit=True) as conn:
        assert conn.execute("SELECT state FROM escalations").fetchone() == ("open",)
        while conn.execute("SELECT now() < expires_at FROM escalations").fetchone() == (True,):
            time.sleep(0.2)  # the database's clock decides
    second = servers.start(env, name="b")
    with psycopg.connect(server_database) as conn:  # expired at start, before SERVING
        state, by = conn.execute("SELECT state, resolved_by FROM escalations").fetchone()
        assert (state, by) == ("expired", f"acgs-server:{second.env['ACGS_INSTANCE_ID']}")
    with second.channel("admin") as admin_ch:
        admin = pb_grpc.EscalationsStub(admin_ch)
        assert admin.GetEscalation(pb.GetEscalationRequest(escalation_id=eid),
                                   timeout=10).state == pb.EXPIRED
        assert code_of(lambda: resolve(admin, eid, pb.VERDICT_APPROVE)
                       ) == grpc.StatusCode.FAILED_PRECONDITION
    assert [k for _, k in db_events(server_database)] == ["opened", "expired"]
    expired = shipped_changes(server_database, 1)  # by the server that expired it
    assert [(c[1], c[2], c[3]) for c in expired] == [
        (f"acgs-server:{second.env['ACGS_INSTANCE_ID']}", "system", "expired")]
