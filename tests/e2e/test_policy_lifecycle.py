"""Policy versions across a fleet of real servers on one PostgreSQL: upload checks,
activation and rollback under load (no failed call, every decision names the revision
that made it), and a server that was down during an activation catching up before it serves.
"""

from __future__ import annotations

import json
import time

import grpc
import pytest
from acgs.v1 import audit_pb2, audit_pb2_grpc
from acgs.v1 import governance_pb2_grpc as gpb_grpc
from acgs.v1 import policy_admin_pb2 as pb
from acgs.v1 import policy_admin_pb2_grpc as pb_grpc

from tests.client import allow_input, decide_request
from tests.e2e.policy_support import Load, parts
from tests.plugins.servers import ServerFactory, ServerProcess

pytestmark = pytest.mark.postgres

ENV = {"ACGS_ENGINE_WORKERS": "1", "ACGS_POLICY_SYNC_S": "1"}


def admin(server: ServerProcess) -> pb_grpc.PolicyAdminStub:
    return pb_grpc.PolicyAdminStub(server.channel("admin"))


def first_revision(server: ServerProcess) -> str:
    with server.channel() as ch:
        d = gpb_grpc.GovernanceStub(ch).Decide(decide_request(allow_input()), timeout=5)
    return str(d.policy_revision)


def activate_under_load(fleet: list[ServerProcess], call: object, revision: str) -> None:
    """Run ``call`` (an activation) while every server decides; check the contract."""
    with Load(fleet) as load:
        time.sleep(0.5)
        old = {r for _, r, _ in load.results}
        result = call()  # type: ignore[operator]
        acked = time.monotonic()
        time.sleep(0.5)
    assert result.complete, result
    assert result.revision == revision
    assert sorted(result.acknowledged) == sorted(s.env["ACGS_INSTANCE_ID"] for s in fleet)
    assert load.errors == []
    assert {r for _, r, _ in load.results} <= old | {revision}
    after = load.after(acked)
    assert after and {r for _, r, _ in after} == {revision}


def test_activate_rollback_and_catch_up(servers: ServerFactory) -> None:
    fleet = [servers.start(ENV, name=n) for n in ("a", "b", "c")]
    stub = admin(fleet[0])
    seeded = first_revision(fleet[0])
    listing = stub.ListPolicyVersions(pb.ListPolicyVersionsRequest(), timeout=5)
    assert [(v.revision, v.desired) for v in listing.versions] == [(seeded, True)]

    created = stub.CreatePolicyVersion(parts(version="1.0.1"), timeout=60)
    assert created.revision != seeded and created.tests_passed > 0
    activate_under_load(fleet, lambda: stub.ActivatePolicyVersion(
        pb.ActivatePolicyVersionRequest(revision=created.revision), timeout=15), created.revision)
    instances = stub.ListInstances(pb.ListInstancesRequest(), timeout=5)
    assert instances.desired_revision == created.revision
    assert {(i.active_revision, i.live, i.serving) for i in instances.instances} == {
        (created.revision, True, True)}

    activate_under_load(fleet, lambda: stub.RollbackPolicy(
        pb.RollbackPolicyRequest(), timeout=15), seeded)

    # A server down during an activation serves the new version from its first answer.
    fleet[2].stop()
    result = stub.ActivatePolicyVersion(
        pb.ActivatePolicyVersionRequest(revision=created.revision), timeout=15)
    assert result.complete and sorted(result.acknowledged) == sorted(
        s.env["ACGS_INSTANCE_ID"] for s in fleet[:2])
    restarted = servers.start(ENV, name="c")
    assert first_revision(restarted) == created.revision


REFUSALS = [
    ({"zz_broken.rego": "package acgs.broken\n\nimport rego.v1\n\nx := 1 +\n"},
     grpc.StatusCode.INVALID_ARGUMENT, "zz_broken.rego:5"),
    ({"tests/zz_extra_test.rego": "package acgs.extra_test\n\nimport rego.v1\n\n"
      "test_always_fails if {\n\t1 == 2\n}\n"},
     grpc.StatusCode.INVALID_ARGUMENT, "data.acgs.extra_test.test_always_fails"),
    ({"zz_extra.rego": "package acgs.extra\n\nimport rego.v1\n\n"
      "x := y if {\n\ty := net.cidr_contains(\"10.0.0.0/8\", \"10.0.0.1\")\n}\n"},
     grpc.StatusCode.INVALID_ARGUMENT, "zz_extra.rego:6"),
]


def test_uploads_are_checked_and_refused_with_a_clear_message(servers: ServerFactory) -> None:
    server = servers.start(ENV)
    stub = admin(server)
    for extra, code, named in REFUSALS:
        request = parts()
        request.modules.update(extra)
        for method in (stub.ValidatePolicy, stub.CreatePolicyVersion):
            with pytest.raises(grpc.RpcError) as info:
                method(request, timeout=60)
            assert info.value.code() == code, info.value
            assert named in info.value.details(), info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.CreatePolicyVersion(parts(constitutional_hash="0000000000000000"), timeout=60)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "0000000000000000" in info.value.details()
    valid = stub.ValidatePolicy(parts(version="9.9.9"), timeout=60)
    assert valid.tests_passed > 0
    listing = stub.ListPolicyVersions(pb.ListPolicyVersionsRequest(), timeout=5)
    assert valid.revision not in {v.revision for v in listing.versions}  # nothing stored
    with pytest.raises(grpc.RpcError) as info:
        stub.RollbackPolicy(pb.RollbackPolicyRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_replay_counts_exactly_the_decisions_a_candidate_changes(servers: ServerFactory) -> None:
    server = servers.start(ENV)
    reads, lists = 7, 5
    with server.channel() as ch:
        decide = gpb_grpc.GovernanceStub(ch).Decide
        for n in range(reads):  # distinct inputs: the cache does not matter, but be explicit
            decide(decide_request(allow_input(resource={
                "type": "document", "id": f"d{n}", "tenant_id": "t1", "attributes": {}})),
                timeout=5)
        for _ in range(lists):
            decide(decide_request(allow_input(action={"type": "list", "attributes": {}})),
                   timeout=5)
    with server.channel("auditor") as ch:
        audit = audit_pb2_grpc.AuditStub(ch)
        deadline = time.monotonic() + 15
        while len(audit.ListDecisions(audit_pb2.ListDecisionsRequest(page_size=100),
                                      timeout=5).decisions) < reads + lists:
            assert time.monotonic() < deadline, "decisions not shipped"
            time.sleep(0.1)
    # One rule of the data changes: operators may no longer read. The policy's own Rego
    # tests pin today's rules, so the candidate goes without them.
    candidate = parts()
    for name in [m for m in candidate.modules if m.startswith("tests/")]:
        del candidate.modules[name]
    data = json.loads(candidate.data_json)
    data["acgs"]["constitution_data"]["roles"]["operator"]["actions"].remove("read")
    candidate.data_json = json.dumps(data)
    stub = admin(server)
    revision = stub.CreatePolicyVersion(candidate, timeout=60).revision
    reports = list(stub.ReplayDecisions(pb.ReplayDecisionsRequest(revision=revision,
                                                                  examples=2), timeout=60))
    final = reports[-1]
    assert final.done and (final.replayed, final.changed, final.skipped) == (
        reads + lists, reads, 0)
    assert [(g.change, g.count, len(g.examples)) for g in final.groups] == [
        ("ALLOW->DENY", reads, 2)]
    assert first_revision(server) != revision  # a replay activates nothing
