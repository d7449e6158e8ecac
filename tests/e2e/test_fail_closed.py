"""Fail closed: engine errors, undefined decisions, time-outs, bad policies, SIGTERM."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from acgs.v1 import governance_pb2 as pb
from acgs.v1 import governance_pb2_grpc as pb_grpc

from tests.client import allow_input, decide_request
from tests.plugins.servers import REPO, ServerFactory, agent_channel

FAULTY = Path(__file__).parent / "policies" / "faulty"


def _decide(address: str, context: dict[str, object], timeout: float = 10.0) -> pb.Decision:
    with agent_channel(address) as ch:
        return pb_grpc.GovernanceStub(ch).Decide(
            decide_request(allow_input(context=context)), timeout=timeout
        )


@pytest.fixture
def faulty(servers: ServerFactory):  # type: ignore[no-untyped-def]
    return servers.start(
        {
            "ACGS_POLICY_DIR": str(FAULTY),
            "ACGS_EVAL_TIMEOUT_MS": "10000",
            "ACGS_ENGINE_WORKERS": "2",
        }
    )


@pytest.mark.parametrize(
    "context",
    [
        {"mode": "error", "value": "abc"},  # a built-in error under strict_built_in_errors
        {"mode": "undefined"},  # the decision rule has no value
        {"mode": "bad_shape"},  # the decision is not of the contract's shape
    ],
)
def test_engine_trouble_is_a_fail_safe_deny(faulty, context) -> None:  # type: ignore[no-untyped-def]
    decision = _decide(faulty.address, context)
    assert decision.effect == pb.DENY
    assert [v.principle for v in decision.violations] == ["fail_safe"]
    assert decision.violations[0].severity == pb.CRITICAL
    assert _decide(faulty.address, {"mode": "allow"}).effect == pb.ALLOW


def test_evaluation_timeout_is_a_fail_safe_deny(servers: ServerFactory) -> None:
    server = servers.start({"ACGS_POLICY_DIR": str(FAULTY), "ACGS_EVAL_TIMEOUT_MS": "50"})
    decision = _decide(server.address, {"mode": "slow", "size": 600_000})
    assert decision.effect == pb.DENY
    assert decision.violations[0].principle == "fail_safe"
    assert "timed out" in decision.violations[0].message


def test_deadline_shorter_than_evaluation_is_deadline_exceeded(faulty) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        _decide(faulty.address, {"mode": "slow", "size": 600_000}, timeout=0.1)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _decide(faulty.address, {"mode": "allow"}).effect == pb.ALLOW


def test_sigterm_drains_in_flight_calls(faulty) -> None:  # type: ignore[no-untyped-def]
    slow = {"mode": "slow", "size": 300_000}
    with ThreadPoolExecutor(2) as pool:  # as many calls as the server has engine workers
        futures = [pool.submit(_decide, faulty.address, slow) for _ in range(2)]
        time.sleep(0.3)  # the calls are in flight
        faulty.signal(signal.SIGTERM)
        decisions = [f.result(timeout=30) for f in futures]
    assert [d.effect for d in decisions] == [pb.ALLOW] * 2
    assert faulty.proc.wait(timeout=30) == 0
    with pytest.raises(grpc.RpcError):
        _decide(faulty.address, {"mode": "allow"}, timeout=1)


@pytest.mark.parametrize(
    ("call", "named"),
    [
        ('http.send({"method": "get", "url": "http://x"})', "http.send"),
        ("opa.runtime()", "opa.runtime"),
        ('net.cidr_contains("10.0.0.0/8", "10.0.0.1")', "net.cidr_contains"),
    ],
)
def test_policy_with_unsupported_builtin_is_refused_at_start(
    tmp_path: Path, call: str, named: str
) -> None:
    policy = tmp_path / "policy"
    shutil.copytree(REPO / "policy", policy)
    (policy / "extra.rego").write_text(
        f"package acgs.extra\n\nimport rego.v1\n\nleak := x if {{\n\tx := {call}\n}}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "acgs.entrypoints.cli", "serve"],
        cwd=REPO,
        timeout=60,
        capture_output=True,
        text=True,
        env={
            "PYTHONPATH": f"{REPO / 'service'}",
            "ACGS_POLICY_DIR": str(policy),
            "ACGS_GRPC_ADDR": "127.0.0.1:0",
            "ACGS_METRICS_ADDR": "127.0.0.1:0",
            "ACGS_DATA_DIR": str(tmp_path / "data"),
            "ACGS_ENV": "test",
            "PATH": "/usr/bin:/bin",
        },
    )
    assert proc.returncode == 2, proc.stderr
    assert named in proc.stderr and "extra.rego:6" in proc.stderr
