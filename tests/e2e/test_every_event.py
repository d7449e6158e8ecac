"""Every kind of event, end to end: in a server's journal (or PostgreSQL's admin chain), its
projection in PostgreSQL, in ListEvents with the actor who did it, and verified by
VerifyChain (issue 15's "done when").

One real server on the approvals policy (a fund transfer is ESCALATED and needs two
approvals); admin actions through the real API and the real command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import psycopg
import pytest
from acgs.adapters.journal_lines import parse_line
from acgs.domain import events
from acgs.domain import tokens as tk
from acgs.domain.audit import AuditRecord
from acgs.v1 import audit_pb2, audit_pb2_grpc
from acgs.v1 import escalations_pb2 as epb
from acgs.v1 import escalations_pb2_grpc as epb_grpc
from acgs.v1 import governance_pb2 as gpb
from acgs.v1 import governance_pb2_grpc as gpb_grpc
from acgs.v1 import policy_admin_pb2 as ppb
from acgs.v1 import policy_admin_pb2_grpc as ppb_grpc

from tests.client import HASH, allow_input, authorized, decide_request
from tests.e2e.policy_support import parts
from tests.plugins.servers import REPO, ServerFactory, ServerProcess, store_tokens

pytestmark = pytest.mark.postgres

APPROVALS = Path(__file__).parent / "policies" / "approvals"
TRANSFER = allow_input(action={"type": "fund_transfer", "attributes": {}})
T = TypeVar("T")


def eventually(fn: Callable[[], T], what: str, timeout_s: float = 20.0) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except (AssertionError, grpc.RpcError) as err:
            not_yet = isinstance(err, AssertionError) or \
                err.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
            if not not_yet:
                raise
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}") from None
        time.sleep(0.1)


def journal(server: ServerProcess) -> list[AuditRecord]:
    """Every record of the server's own journal, read from its segment files."""
    directory = Path(server.env["ACGS_DATA_DIR"]) / "journal" / server.env["ACGS_INSTANCE_ID"]
    return [parse_line(line) for segment in sorted(directory.glob("*.jsonl"))
            for line in segment.read_bytes().split(b"\n") if line]


def rows(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


def listed(server: ServerProcess, kind: str) -> list[audit_pb2.AuditRecord]:
    """Every ListEvents record of ``kind`` (auditor's token), all pages."""
    found: list[audit_pb2.AuditRecord] = []
    token = ""
    with server.channel("auditor") as ch:
        stub = audit_pb2_grpc.AuditStub(ch)
        while True:
            page = stub.ListEvents(audit_pb2.ListEventsRequest(
                filter=audit_pb2.EventFilter(kinds=[kind]), page_size=100, page_token=token),
                timeout=10)
            found.extend(page.events)
            token = page.next_page_token
            if not token:
                return found


def acgs(*args: str, database: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "service"), "ACGS_DATABASE_URL": database}
    return subprocess.run([sys.executable, "-m", "acgs.entrypoints.cli", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60, check=False)


def test_every_event_kind_is_journaled_projected_listed_and_verified(
        servers: ServerFactory, server_database: str) -> None:
    second = tk.issue(role=tk.ADMIN, name="second admin", created_by="tests",
                      identity="bob@corp")
    store_tokens(server_database, [second.record])  # before the server reads its tokens
    server = servers.start({"ACGS_POLICY_DIR": str(APPROVALS), "ACGS_AUDIT_CHECKPOINT_S": "1",
                            "ACGS_ESCALATION_SWEEP_S": "60"})
    instance = server.env["ACGS_INSTANCE_ID"]
    admin_id = server.tokens.id(tk.ADMIN)
    with server.channel("agent") as agent_ch, server.channel("admin") as admin_ch, \
            authorized(grpc.insecure_channel(server.address), second.token) as second_ch:
        governance = gpb_grpc.GovernanceStub(agent_ch)
        # decision, evaluation
        allowed = governance.Decide(decide_request(allow_input()), timeout=10)
        evaluated = governance.Evaluate(gpb.EvaluateRequest(
            constitutional_hash=HASH, path="acgs/constitution/decision", input_json="{}"),
            timeout=10)
        # escalation.opened, then escalation.changed (acknowledged, approval, approved) and
        # the approval's ALLOW decision
        escalated = governance.Decide(decide_request(TRANSFER), timeout=10)
        eid = escalated.escalation_id
        assert escalated.effect == gpb.ESCALATE and eid
        admins = [epb_grpc.EscalationsStub(admin_ch), epb_grpc.EscalationsStub(second_ch)]
        eventually(lambda: admins[0].GetEscalation(epb.GetEscalationRequest(escalation_id=eid),
                                                   timeout=5), "the escalation's row")
        admins[0].AcknowledgeEscalation(epb.AcknowledgeEscalationRequest(escalation_id=eid),
                                        timeout=10)
        for stub in admins:
            approved = stub.ResolveEscalation(epb.ResolveEscalationRequest(
                escalation_id=eid, verdict=epb.VERDICT_APPROVE, comment="ok"), timeout=10)
        assert approved.state == epb.APPROVED
        # incident.opened: a request naming another constitution
        with pytest.raises(grpc.RpcError) as refused:
            governance.Decide(decide_request(allow_input(), constitutional_hash="0" * 16),
                              timeout=10)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # policy.version_created, policy.version_signed (the same content again, signed),
        # policy.activated, policy.rolled_back, policy.shadow_started, policy.shadow_stopped
        policies = ppb_grpc.PolicyAdminStub(admin_ch)
        candidate = parts(APPROVALS, version="2")
        candidate.message = "every event"
        revision = policies.CreatePolicyVersion(candidate, timeout=60).revision
        candidate.signature = "c2lnbmVkIGFmdGVyIHRoZSBwdXNo"  # no trusted keys: kept as is
        signed = policies.CreatePolicyVersion(candidate, timeout=60)
        assert signed.signature_attached and signed.signed and signed.revision == revision
        policies.StartShadow(ppb.StartShadowRequest(revision=revision, sample=0.5), timeout=10)
        policies.StopShadow(ppb.StopShadowRequest(), timeout=10)
        policies.ActivatePolicyVersion(ppb.ActivatePolicyVersionRequest(
            revision=revision, timeout_ms=10_000, message="try it"), timeout=30)
        policies.RollbackPolicy(ppb.RollbackPolicyRequest(timeout_ms=10_000, message="undo"),
                                timeout=30)
    # token.created, token.revoked: the command line, straight in the database
    created = acgs("token", "create", "--role", "agent", "--name", "every event",
                   database=server_database)
    token_id = tk.parse(created.stdout.strip())
    assert created.returncode == 0 and token_id, created.stderr
    assert acgs("token", "revoke", token_id, database=server_database).returncode == 0

    # -- in the journal (the server's events) ---------------------------------------------
    def journaled() -> dict[str, list[AuditRecord]]:
        by_kind: dict[str, list[AuditRecord]] = {}
        for r in journal(server):
            by_kind.setdefault(r.kind, []).append(r)
        assert {events.DECISION, events.EVALUATION, events.ESCALATION_OPENED,
                events.ESCALATION_CHANGED, events.INCIDENT_OPENED,
                events.CHECKPOINT} <= set(by_kind), sorted(by_kind)
        return by_kind

    local = eventually(journaled, "every server event in the journal")
    ids = {r.decision_id for r in local[events.DECISION]}
    assert {allowed.decision_id, escalated.decision_id} <= ids
    assert [r.decision_id for r in local[events.EVALUATION]] == [evaluated.decision_id]
    assert all(r.schema == events.SCHEMA for rs in local.values() for r in rs)
    [opened] = [r for r in local[events.ESCALATION_OPENED] if r.escalation_id == eid]
    assert opened.caller_id == server.tokens.id(tk.AGENT)
    changes = [(r.caller_id, events.decode(r.kind, r.data)) for r in
               local[events.ESCALATION_CHANGED]]
    assert [(who, e.change) for who, e in changes  # type: ignore[attr-defined]
            if e.escalation_id == eid] == [  # type: ignore[attr-defined]
        (admin_id, "acknowledged"), (admin_id, "approval"), (second.record.id,
                                                              "approved")]
    [approval] = [r for r in local[events.DECISION] if r.data]
    assert events.decode(approval.kind, approval.data) == events.ApprovalOf(
        eid, escalated.decision_id, (admin_id, second.record.id))
    assert approval.caller_id == second.record.id and approval.effect.value == "ALLOW"

    # -- projected in PostgreSQL ----------------------------------------------------------
    def projected() -> None:
        assert rows(server_database, "SELECT state, count, approval_decision_id::text FROM "
                    "escalations WHERE id = %s", eid) == [("approved", 1, approval.decision_id)]
        assert [k for (k,) in rows(server_database, "SELECT kind FROM escalation_events "
                                   "WHERE escalation_id = %s ORDER BY seq", eid)] == [
            "opened", "acknowledged", "approval", "approved"]
        assert rows(server_database, "SELECT count(*) FROM escalations WHERE reason = "
                    "'constitution_mismatch' AND decision_id IS NULL") == [(1,)]
        assert rows(server_database, "SELECT count(*) FROM audit_checkpoints WHERE "
                    "instance_id = %s", instance)[0][0] >= 1

    eventually(projected, "the projections")
    history = rows(server_database, "SELECT action, revision, actor_id FROM policy_history "
                   "ORDER BY seq")
    assert [(a, r, who) for a, r, who in history][-2:] == [
        ("activated", revision, admin_id), ("rolled_back", history[-3][1], admin_id)]
    assert rows(server_database, "SELECT message, created_by FROM policy_versions WHERE "
                "revision = %s", revision)[0][0] == "every event"
    assert rows(server_database, "SELECT revoked_at IS NOT NULL FROM auth_tokens WHERE "
                "id = %s", token_id) == [(True,)]

    # -- in ListEvents, with who did it ---------------------------------------------------
    def actors(kind: str) -> list[tuple[str, str]]:
        return [(r.caller_id, r.caller_role) for r in listed(server, kind)]

    def every_kind_listed() -> None:
        for kind in events.KINDS:
            assert listed(server, kind), f"no {kind} in ListEvents"

    eventually(every_kind_listed, "every kind in ListEvents")
    assert (admin_id, "admin") in actors(events.POLICY_ACTIVATED)
    assert actors(events.POLICY_VERSION_SIGNED) == [(admin_id, "admin")]
    assert (admin_id, "admin") in actors(events.POLICY_ROLLED_BACK)
    assert (second.record.id, "admin") in actors(events.ESCALATION_CHANGED)
    [revoked] = [r for r in listed(server, events.TOKEN_REVOKED)
                 if events.decode(r.kind, r.data) == events.TokenRevoked(token_id, "every event")]
    assert revoked.instance_id == "admin" and revoked.caller_role == "admin"
    assert "@" in revoked.caller_id  # the OS account that ran `acgs token revoke`

    # -- VerifyChain covers every kind ----------------------------------------------------
    with server.channel("auditor") as ch:
        audit = audit_pb2_grpc.AuditStub(ch)
        for chain in (instance, "admin"):
            report = eventually(lambda c=chain: _verified(audit, c), f"{chain} verified")
            assert report.ok and report.checkpoint_seq > 0, report
    kinds = {k for (k,) in rows(server_database, "SELECT DISTINCT kind FROM audit_decisions "
                                "WHERE instance_id IN (%s, 'admin')", instance)}
    assert kinds == set(events.KINDS)  # every kind was in the chains just verified


def _verified(audit: audit_pb2_grpc.AuditStub, chain: str) -> audit_pb2.VerifyChainResponse:
    report = audit.VerifyChain(audit_pb2.VerifyChainRequest(instance_id=chain), timeout=30)
    assert report.ok and report.checkpoint_seq > 0, report
    return report

