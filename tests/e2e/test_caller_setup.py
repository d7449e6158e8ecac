"""How a server gets its callers: development tokens on first start (reused later), rate
limits per role, and a production configuration that refuses to run insecure."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from acgs.adapters import dev_tokens
from acgs.domain import tokens as tk
from acgs.v1 import governance_pb2 as pb
from acgs.v1 import governance_pb2_grpc as pb_grpc

from tests.client import allow_input, authorized, decide_request
from tests.plugins.servers import REPO, ServerFactory, revoke_token, store_tokens

pytestmark = pytest.mark.postgres


def decide(address: str, token: str) -> pb.Decision:
    with authorized(grpc.insecure_channel(address), token) as ch:
        return pb_grpc.GovernanceStub(ch).Decide(decide_request(allow_input()), timeout=5)


def test_development_tokens_are_made_once_and_reused(
    servers: ServerFactory, server_database: str
) -> None:
    server = servers.start({"ACGS_ENV": "development"})
    path = Path(server.env["ACGS_DATA_DIR"]) / "dev-tokens"
    assert path.stat().st_mode & 0o777 == 0o600
    first = dev_tokens.read(path)
    assert sorted(first) == sorted(tk.ROLES)
    assert decide(server.address, first[tk.AGENT]).effect == pb.ALLOW
    usage = 'grpcurl -plaintext -H "authorization: Bearer $ACGS_AGENT_TOKEN"'
    deadline = time.monotonic() + 10  # printed just after health turns SERVING
    while usage not in server.log():
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)

    revoke_token(server_database, tk.parse(first[tk.AGENT]) or "")
    server.stop()
    server.start()
    second = dev_tokens.read(path)
    assert {r: second[r] == first[r] for r in tk.ROLES} == {
        tk.AGENT: False, tk.ADMIN: True, tk.AUDITOR: True}  # only the revoked one is replaced
    assert decide(server.address, second[tk.AGENT]).effect == pb.ALLOW


def test_rate_limit_per_caller_is_resource_exhausted_with_a_retry_hint(
    servers: ServerFactory, server_database: str
) -> None:
    server = servers.start({"ACGS_RATE_LIMIT_AGENT": "0.2:3"})  # 3 at once, then 1 per 5 s
    with server.channel() as ch:
        stub = pb_grpc.GovernanceStub(ch)
        for _ in range(3):
            stub.Decide(decide_request(allow_input()), timeout=5)
        with pytest.raises(grpc.RpcError) as info:
            stub.Decide(decide_request(allow_input()), timeout=5)
    err = info.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert "rate limit" in err.details()  # type: ignore[attr-defined]
    trailers = dict(err.trailing_metadata())  # type: ignore[attr-defined]
    assert 0 < int(trailers["retry-after-ms"]) <= 5000
    other = tk.issue(role=tk.AGENT, name="another agent", created_by="tests")
    store_tokens(server_database, [other.record])
    for _ in range(60):  # a new token is refused until the server's copy of the table has it
        try:
            assert decide(server.address, other.token).effect == pb.ALLOW  # per-caller buckets
            break
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err  # type: ignore[attr-defined]
            time.sleep(0.05)
    else:
        raise AssertionError("the new token was not accepted within 3 s")


@pytest.mark.parametrize(("env", "named"), [
    ({}, "without TLS"),
    ({"ACGS_AUTH": "none", "ACGS_TLS_CERT": "c.pem", "ACGS_TLS_KEY": "k.pem"},
     "without token authentication"),
])
def test_production_refuses_to_start_insecure(tmp_path: Path, env: dict[str, str],
                                              named: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "acgs.entrypoints.cli", "serve"], cwd=REPO, timeout=60,
        capture_output=True, text=True, check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO / "service"),
             "ACGS_ENV": "production", "ACGS_DATA_DIR": str(tmp_path), **env},
    )
    assert proc.returncode == 2, proc.stderr
    assert named in proc.stderr and "ACGS_ALLOW_INSECURE=true" in proc.stderr
