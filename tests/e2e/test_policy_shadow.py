"""Safe ways to change a policy (issue 18), on real servers sharing one PostgreSQL:
a version that cannot decide is refused at upload, naming the example; a bad activation
rolls itself back; the shadow report shows the exact transitions of a candidate."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from acgs.domain import events
from acgs.entrypoints.policy_cli import read_policy_dir
from acgs.v1 import governance_pb2_grpc as gpb_grpc
from acgs.v1 import policy_admin_pb2 as pb
from acgs.v1 import policy_admin_pb2_grpc as pb_grpc

from tests.client import allow_input, decide_request
from tests.e2e.policy_support import effect_name, parts
from tests.e2e.test_policy_cli import acgs
from tests.plugins.servers import ServerFactory, ServerProcess

pytestmark = pytest.mark.postgres

ENV = {"ACGS_ENGINE_WORKERS": "1", "ACGS_POLICY_SYNC_S": "0.5"}
HASH = json.loads(parts().manifest_json)["constitutional_hash"]


def admin(server: ServerProcess) -> pb_grpc.PolicyAdminStub:
    return pb_grpc.PolicyAdminStub(server.channel("admin"))


def eventually(check: Callable[[], Any], *, what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def scrape(server: ServerProcess) -> str:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def policy_dir(tmp: Path, rego: str, examples: dict[str, Any]) -> Path:
    """A one-module policy directory of this constitution, with examples/*.json."""
    (tmp / "examples").mkdir(parents=True)
    (tmp / "canary.rego").write_text(rego)
    (tmp / "manifest.json").write_text(json.dumps({
        "name": "canary", "version": "1", "constitutional_hash": HASH,
        "decision": "canary/decision"}))
    for name, example in examples.items():
        (tmp / "examples" / name).write_text(json.dumps(example))
    return tmp


ALLOW = '{"effect": "ALLOW", "violations": []}'


def test_a_version_that_cannot_decide_is_refused_at_upload_naming_the_example(
        servers: ServerFactory, tmp_path: Path) -> None:
    stub = admin(servers.start(ENV))
    cannot = policy_dir(tmp_path / "false", "package canary\n\ndecision := false\n",
                        {"reader.json": {"input": allow_input()}})
    differs = policy_dir(tmp_path / "differs", f"package canary\n\ndecision := {ALLOW}\n",
                         {"reader.json": {"input": allow_input(), "effect": "ALLOW"},
                          "writer.json": {"input": allow_input(), "effect": "DENY"}})
    for directory, named in ((cannot, "example examples/reader.json: not a well-formed "
                              "decision: decision is not an object"),
                             (differs, "example examples/writer.json: expected DENY, the "
                              "decision is ALLOW")):
        for method in (stub.ValidatePolicy, stub.CreatePolicyVersion):
            with pytest.raises(grpc.RpcError) as info:
                method(read_policy_dir(directory), timeout=60)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert named in info.value.details(), info.value.details()
    listing = stub.ListPolicyVersions(pb.ListPolicyVersionsRequest(), timeout=5)
    assert len(listing.versions) == 1  # only the seeded version: nothing was stored


ROLLBACK_ENV = {**ENV, "ACGS_POLICY_ROLLBACK_FAILSAFE_SHARE": "0.5",
                "ACGS_POLICY_ROLLBACK_WINDOW_S": "10",
                "ACGS_POLICY_ROLLBACK_MIN_DECISIONS": "5"}
# Decides every input the upload checks (no context.canary), fails on the live ones.
FAILS_LIVE = ('package canary\n\nimport rego.v1\n\n'
              'decision := {"effect": "ALLOW", "violations": [], '
              '"n": to_number(object.get(input, ["context", "canary"], "0"))}\n')


def test_an_activation_that_fails_safe_on_live_traffic_rolls_itself_back(
        servers: ServerFactory, server_database: str, tmp_path: Path) -> None:
    fleet = [servers.start(ROLLBACK_ENV, name=n) for n in ("a", "b")]
    stub = admin(fleet[0])
    seeded = stub.ListInstances(pb.ListInstancesRequest(), timeout=5).desired_revision
    directory = policy_dir(tmp_path / "canary", FAILS_LIVE,
                           {"plain.json": {"input": allow_input(), "effect": "ALLOW"}})
    bad = stub.CreatePolicyVersion(read_policy_dir(directory), timeout=60).revision
    result = stub.ActivatePolicyVersion(pb.ActivatePolicyVersionRequest(revision=bad),
                                        timeout=15)
    assert result.complete, result
    live = allow_input(context={"canary": "not a number"})
    effects = []
    with fleet[1].channel() as ch:
        decide = gpb_grpc.GovernanceStub(ch).Decide
        for n in range(8):
            d = decide(decide_request(live, request_id=f"live-{n}"), timeout=5)
            effects.append((d.policy_revision, effect_name(d.effect), d.escalation_id != ""))
    assert effects[0] == (bad, "DENY", True)  # fail-safe DENYs, escalated, as before

    def rolled_back() -> bool:
        state = stub.ListInstances(pb.ListInstancesRequest(), timeout=5)
        return state.desired_revision == seeded and all(
            i.active_revision == seeded for i in state.instances if i.live)

    eventually(rolled_back, what="the fleet did not roll back")
    with fleet[0].channel() as ch:  # any server: the rollback is the fleet's
        d = gpb_grpc.GovernanceStub(ch).Decide(decide_request(live), timeout=5)
    assert (d.policy_revision, effect_name(d.effect)) == (seeded, "ALLOW")

    with psycopg.connect(server_database, autocommit=True) as conn:
        rows = conn.execute("SELECT replaced_revision, revision, message, actor_id, "
                            "actor_role, event_id FROM policy_history "
                            "WHERE action = 'rolled_back'").fetchall()
        assert [(r[0], r[1]) for r in rows] == [(bad, seeded)]  # once, by one server
        assert "failed safe" in rows[0][2] and rows[0][4] == "system"
        assert rows[0][3] in {s.env["ACGS_INSTANCE_ID"] for s in fleet}
        event = conn.execute("SELECT kind, caller_id, caller_role, data FROM audit_decisions "
                             "WHERE instance_id = 'admin' AND decision_id::text = %s",
                             (rows[0][5],)).fetchall()
        assert [(k, c, r) for k, c, r, _ in event] == [("policy.rolled_back", rows[0][3],
                                                        "system")]
        assert events.decode(event[0][0], event[0][3]) == events.PolicyRolledBack(
            seeded, bad, 3, rows[0][2])
        incidents = eventually(lambda: conn.execute(
            "SELECT message FROM escalations WHERE reason = 'policy_rollback'").fetchall(),
            what="no policy_rollback incident")
    assert f"policy {bad} rolled back to {seeded}" in incidents[0][0]
    metrics = "".join(scrape(s) for s in fleet)
    assert "acgs_policy_auto_rollbacks_total 1.0" in metrics


def decide_all(server: ServerProcess, inputs: list[dict[str, Any]]) -> list[str]:
    # Fresh request ids every time: a repeated request_id is answered from the idempotency
    # map (replayed), and a replay is no new decision for the shadow to see.
    tag = uuid.uuid4().hex[:8]
    with server.channel() as ch:
        decide = gpb_grpc.GovernanceStub(ch).Decide
        return [effect_name(decide(decide_request(doc, request_id=f"r{tag}-{n}"),
                                   timeout=5).effect)
                for n, doc in enumerate(inputs)]


def test_the_shadow_report_shows_the_exact_transitions_of_a_candidate(
        servers: ServerFactory, server_database: str) -> None:
    env = {**ENV, "ACGS_AUDIT_MASK_FIELDS": "principal.id"}
    fleet = [servers.start(env, name=n) for n in ("a", "b")]
    stub = admin(fleet[0])
    # The candidate: operators may no longer read, viewers may write.
    candidate = parts(version="2.0.0")
    for name in [m for m in candidate.modules if m.startswith("tests/")]:
        del candidate.modules[name]  # the Rego tests pin today's rules
    data = json.loads(candidate.data_json)
    roles = data["acgs"]["constitution_data"]["roles"]
    roles["operator"]["actions"].remove("read")
    roles["viewer"]["actions"].append("write")
    candidate.data_json = json.dumps(data)
    revision = stub.CreatePolicyVersion(candidate, timeout=60).revision

    def doc(role: str, action: str, n: int) -> dict[str, Any]:
        return allow_input(principal={"id": f"agent-{n}", "roles": [role], "tenant_id": "t1",
                                      "attributes": {}},
                           action={"type": action, "attributes": {}})

    reads = [doc("operator", "read", n) for n in range(6)]  # ALLOW -> DENY
    writes = [doc("viewer", "write", n) for n in range(4)]  # DENY -> ALLOW
    lists = [doc("operator", "list", n) for n in range(5)]  # unchanged
    traffic = reads + writes + lists
    before = [decide_all(s, traffic) for s in fleet]

    state = stub.StartShadow(pb.StartShadowRequest(revision=revision, sample=1.0, examples=2),
                             timeout=5)
    assert (state.candidate_revision, state.sample) == (revision, 1.0)
    eventually(lambda: len(stub.GetShadowReport(pb.GetShadowReportRequest(), timeout=5).servers)
               == len(fleet), what="servers did not start shadowing")
    during = [decide_all(s, traffic) for s in fleet]
    assert during == before  # the shadow never changes an answer

    def complete() -> pb.ShadowReport | None:
        report = stub.GetShadowReport(pb.GetShadowReportRequest(), timeout=5)
        return report if report.evaluated == len(traffic) * len(fleet) else None

    report = eventually(complete, what="shadow decisions not reported")
    assert report.dropped == 0 and report.differences == 20
    assert [(t.transition, t.count, len(t.examples)) for t in report.transitions] == [
        ("ALLOW->DENY", 12, 2), ("DENY->ALLOW", 8, 2)]
    example = json.loads(report.transitions[0].examples[0].input_json)
    assert example["principal"]["id"] == "***" and example["action"]["type"] == "read"
    assert sorted((s.evaluated, s.differences) for s in report.servers) == [(15, 10)] * 2

    shown = acgs("policy", "shadow-report", server=fleet[1])
    assert shown.returncode == 0, shown.stderr
    assert "20 differ, 0 dropped" in shown.stdout and "  ALLOW->DENY: 12" in shown.stdout
    assert "  DENY->ALLOW: 8" in shown.stdout and '"id":"***"' in shown.stdout
    stopping = acgs("policy", "shadow", "--stop", server=fleet[1])
    assert stopping.returncode == 0, stopping.stderr
    stopped = stub.GetShadowReport(pb.GetShadowReportRequest(), timeout=5).state
    assert stopped.candidate_revision == "" and stopped.generation > state.generation
    with psycopg.connect(server_database, autocommit=True) as conn:  # both in the trail
        shadowing = conn.execute(
            "SELECT kind, caller_role, data FROM audit_decisions WHERE instance_id = 'admin' "
            "AND kind LIKE 'policy.shadow_%%' ORDER BY seq").fetchall()
    assert [(k, r, events.decode(k, d)) for k, r, d in shadowing] == [
        ("policy.shadow_started", "admin",
         events.PolicyShadowStarted(revision, 1.0, 2, state.generation)),
        ("policy.shadow_stopped", "admin", events.PolicyShadowStopped(stopped.generation))]
    assert decide_all(fleet[0], traffic) == before[0]
    final = stub.GetShadowReport(pb.GetShadowReportRequest(), timeout=5)
    assert final.state.candidate_revision == "" and final.evaluated == 0
    with pytest.raises(grpc.RpcError) as info:
        stub.StartShadow(pb.StartShadowRequest(revision=revision, sample=1.5), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        stub.StartShadow(pb.StartShadowRequest(revision="0123456789abcdef"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
