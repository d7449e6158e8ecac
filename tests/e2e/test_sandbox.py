"""A policy that reaches opa.runtime finds no secret in a running server (issue 18).

The first wall refuses every spelling of a refused built-in (tests/unit/
test_rego_spellings.py). This tests the second: the server is started with that
refusal switched off (a ``sitecustomize`` on its PYTHONPATH, as an unknown
spelling would slip past it) and a policy reading ``opa.runtime().env``; what an
agent's Evaluate of any rule returns must contain no database URL, no Redis URL
and no ``ACGS_*`` setting.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from acgs.v1 import governance_pb2 as pb
from acgs.v1 import governance_pb2_grpc as pb_grpc

from tests.client import HASH, allow_input
from tests.plugins.servers import REPO, ServerFactory

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

LEAK = """package acgs.leak

import rego.v1

server_env := opa["runtime"]().env
runtime := opa .runtime()
names := [k | opa.runtime().env[k]]
"""
BYPASS = """import acgs.adapters.rego_source as _rs

_rs.refuse_calls = lambda *args, **kwargs: None  # the test plays a spelling nobody foresaw
"""
TOKEN = "tok-3f9a1c-not-for-policies"


@pytest.fixture
def leaky_server(servers: ServerFactory, tmp_path: Path, redis_url: str) -> ServerFactory:
    policy = tmp_path / "policy"
    shutil.copytree(REPO / "policy", policy)
    (policy / "leak.rego").write_text(LEAK, encoding="utf-8")
    bypass = tmp_path / "bypass"
    bypass.mkdir()
    (bypass / "sitecustomize.py").write_text(BYPASS, encoding="utf-8")
    server = servers.make({
        "ACGS_POLICY_DIR": str(policy), "ACGS_REDIS_URL": redis_url,
        "ACGS_SECRET_PROBE_TOKEN": TOKEN, "PGPASSWORD": TOKEN,
    })
    server.env["PYTHONPATH"] = f"{bypass}{os.pathsep}{server.env['PYTHONPATH']}"
    server.start()
    return servers


def test_evaluate_of_any_rule_returns_no_secret(leaky_server: ServerFactory) -> None:
    server = leaky_server.servers[-1]
    secrets = [v for k, v in server.env.items()
               if k.startswith("ACGS_") and k.endswith(("_URL", "_TOKEN")) and v]
    assert server.env["ACGS_DATABASE_URL"] in secrets and TOKEN in secrets
    with server.channel("agent") as channel:
        stub = pb_grpc.GovernanceStub(channel)
        env = json.loads(_evaluate(stub, "acgs/leak/server_env"))
        # The route works (the policy does read the process environment)...
        assert "PATH" in env, env
        # ...and finds nothing worth reading there.
        assert not [k for k in env if k.startswith(("ACGS_", "PG", "REDIS"))], sorted(env)
        rules = ["acgs/leak/server_env", "acgs/leak/runtime", "acgs/leak/names",
                 "acgs/constitution/decision"]
        for path in rules:
            text = _evaluate(stub, path)
            leaked = [s for s in [*secrets, TOKEN] if s in text]
            assert not leaked, f"{path} returned a secret"


def _evaluate(stub: pb_grpc.GovernanceStub, path: str) -> str:
    response = stub.Evaluate(pb.EvaluateRequest(
        constitutional_hash=HASH, path=path, input_json=json.dumps(allow_input())), timeout=10)
    return str(response.result_json)


STRICT = """package acgs.strict

import rego.v1

ts := time.parse_rfc3339_ns(input.ts)
"""


def test_a_deterministic_evaluation_failure_is_not_retryable(
    servers: ServerFactory, tmp_path: Path
) -> None:
    import grpc

    from tests.client import decide_request

    policy = tmp_path / "policy"
    shutil.copytree(REPO / "policy", policy)
    (policy / "strict.rego").write_text(STRICT, encoding="utf-8")
    server = servers.start({"ACGS_POLICY_DIR": str(policy)})
    with server.channel("agent") as channel:
        stub = pb_grpc.GovernanceStub(channel)
        request = pb.EvaluateRequest(constitutional_hash=HASH, path="acgs/strict/ts",
                                     input_json='{"ts": "2024-01-01T00:00:00Z"}')
        with pytest.raises(grpc.RpcError) as info:
            stub.Evaluate(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # not UNAVAILABLE
        assert "Unable to parse time" in info.value.details()
        fine = stub.Evaluate(pb.EvaluateRequest(
            constitutional_hash=HASH, path="acgs/strict/ts",
            input_json='{"ts": "2024-01-01T00:00:00+00:00"}'), timeout=10)
        assert fine.result_json == "1704067200000000000"
        assert stub.Decide(decide_request(allow_input()), timeout=10).effect == pb.ALLOW
