"""Through a running server: a number the engine would change is refused, never decided.

Issue 18: rego-cpp keeps an input float as printf("%f") text, so an analyst (ceiling 3)
asking at priority 3.0000004 was decided at 3 and ALLOWed; OPA denies it. Also
``acgs policy test --against-opa`` on a version stored in that server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import grpc
import pytest
from acgs.domain import tokens as tk
from acgs.v1 import governance_pb2 as pb
from acgs.v1 import governance_pb2_grpc as pb_grpc

from tests.client import HASH, decide_request
from tests.constitution_cases import request
from tests.e2e.test_policy_lifecycle import first_revision
from tests.plugins.servers import REPO, ServerProcess

pytestmark = pytest.mark.postgres


def decide(server: ServerProcess, priority: float) -> pb.Decision:
    doc = request("analyst", "read", action_attributes={"priority": priority})
    with server.channel(tk.AGENT) as ch:
        return pb_grpc.GovernanceStub(ch).Decide(decide_request(doc), timeout=10)


def test_a_priority_just_over_the_ceiling_is_never_allowed(shared_server: ServerProcess) -> None:
    assert decide(shared_server, 3.0).effect == pb.ALLOW
    assert decide(shared_server, 3.000001).effect == pb.DENY
    with pytest.raises(grpc.RpcError) as info:
        decide(shared_server, 3.0000004)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "action.attributes.priority: 3.0000004" in (info.value.details() or "")
    over = request("analyst", "read", action_attributes={"priority": 3.0000004})
    batch = pb.DecideBatchRequest(requests=[decide_request(request("analyst", "read")),
                                            decide_request(over)])
    with shared_server.channel(tk.AGENT) as ch, pytest.raises(grpc.RpcError) as info:
        pb_grpc.GovernanceStub(ch).DecideBatch(batch, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_evaluate_refuses_numbers_the_engine_would_change(shared_server: ServerProcess) -> None:
    doc = request("analyst", "read", action_attributes={"priority": 3.0000004})
    with shared_server.channel(tk.AGENT) as ch:
        stub = pb_grpc.GovernanceStub(ch)
        for text, field in ((json.dumps(doc), "input_json.action.attributes.priority"),
                            ('{"n": 18446744073709551616}', "input_json.n")):
            call = pb.EvaluateRequest(constitutional_hash=HASH, input_json=text,
                                      path="acgs/constitution/decision")
            with pytest.raises(grpc.RpcError) as info:
                stub.Evaluate(call, timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field in (info.value.details() or "")


def test_against_opa_checks_a_stored_revision(shared_server: ServerProcess) -> None:
    try:
        import opa_bindings  # noqa: F401
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("opa_bindings is not installed (.ci/run installs it)")
        pytest.skip("opa_bindings is not installed")
    revision = first_revision(shared_server)

    def against_opa(target: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "acgs.entrypoints.cli", "policy", "test", "--against-opa",
             target, "--samples", "300", "--addr", shared_server.address,
             "--token", shared_server.tokens.admin],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "service")},
            capture_output=True, text=True, timeout=300, check=False)

    done = against_opa(revision)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{revision} (acgs-constitution ")
    assert "300 inputs: agree " in done.stdout and "MORE PERMISSIVE 0" in done.stdout
    missing = against_opa("0123456789abcdef")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
