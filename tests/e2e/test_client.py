"""acgs_client against real servers: the typed client as internal services use it.

Decide (sync and asyncio), Evaluate, typed errors, and ``wait_for_escalation`` following
an escalation over WatchEscalations until an admin approves it. The last test installs
the client into a fresh virtual environment, with none of the server's dependencies, and
decides with a five-line script given only ACGS_ADDR and ACGS_TOKEN.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest
from acgs.v1 import escalations_pb2 as epb
from acgs.v1 import escalations_pb2_grpc as epb_grpc
from acgs_client import AsyncClient, Client, InvalidRequest, NotFound, Unauthenticated

from tests.plugins.servers import REPO, RoleTokens, ServerProcess

pytestmark = pytest.mark.postgres

SUBJECT = {"id": "agent-7", "roles": ["operator"], "tenant_id": "t1"}
DOCUMENT = {"type": "document", "id": "d1", "tenant_id": "t1"}


def client(server: ServerProcess, tokens: RoleTokens, role: str = "agent") -> Client:
    return Client(server.address, token=tokens.token(role), timeout_s=10)


def test_decide_allow_and_deny(shared_server: ServerProcess, tokens: RoleTokens) -> None:
    with client(shared_server, tokens) as acgs:
        allowed = acgs.decide(tenant_id="t1", principal=SUBJECT, action="read",
                              resource=DOCUMENT)
        denied = acgs.decide(tenant_id="t1", principal=SUBJECT, action="fund_transfer",
                             resource=DOCUMENT)
    assert allowed.allowed and allowed.effect == "ALLOW" and not allowed.fail_safe
    assert allowed.decision_id and allowed.policy_revision and len(allowed.request_id) == 32
    assert not denied.allowed and denied.effect == "DENY" and not denied.fail_safe
    assert {v.principle for v in denied.violations} == {"role_permission"}


def test_async_client_and_evaluate(shared_server: ServerProcess, tokens: RoleTokens) -> None:
    async def main() -> tuple[bool, object]:
        async with AsyncClient(shared_server.address, token=tokens.agent) as acgs:
            d = await acgs.decide(tenant_id="t1", principal=SUBJECT, action="read",
                                  resource=DOCUMENT)
            ev = await acgs.evaluate("acgs/constitution/decision", {
                "tenant_id": "t1", "principal": SUBJECT, "action": {"type": "read"},
                "resource": DOCUMENT})
            return d.allowed, ev.value

    allowed, value = asyncio.run(main())
    assert allowed
    assert isinstance(value, dict) and value["effect"] == "ALLOW"


def test_typed_errors(shared_server: ServerProcess, tokens: RoleTokens) -> None:
    with client(shared_server, tokens) as acgs, pytest.raises(InvalidRequest) as info:
        acgs.decide(tenant_id="t1", principal={"id": "", "tenant_id": "t1"}, action="read",
                    resource=DOCUMENT)
    assert "principal.id" in info.value.details
    with Client(shared_server.address, token="acgs_0000.nope") as anon, \
            pytest.raises(Unauthenticated):
        anon.decide(tenant_id="t1", principal=SUBJECT, action="read", resource=DOCUMENT)


def test_wait_for_escalation_returns_the_approval(shared_server: ServerProcess,
                                                  tokens: RoleTokens) -> None:
    with client(shared_server, tokens) as acgs:
        d = acgs.decide(tenant_id="t1", principal={**SUBJECT, "roles": ["admin"]},
                        action="fund_transfer", resource=DOCUMENT)
        assert d.effect == "ESCALATE" and d.escalation_id

        def approve() -> None:
            time.sleep(1.0)  # the agent is already waiting on the stream
            with shared_server.channel("admin") as ch:
                epb_grpc.EscalationsStub(ch).ResolveEscalation(epb.ResolveEscalationRequest(
                    escalation_id=d.escalation_id, verdict=epb.VERDICT_APPROVE,
                    comment="checked"), timeout=10)

        approver = threading.Thread(target=approve)
        approver.start()
        outcome = acgs.wait_for_escalation(d.escalation_id, timeout_s=30)
        approver.join()
    assert outcome.approved and outcome.final and outcome.resolution_comment == "checked"
    assert outcome.approval is not None and outcome.approval.allowed


def test_wait_for_escalation_times_out_and_stays_private(shared_server: ServerProcess,
                                                         tokens: RoleTokens) -> None:
    with client(shared_server, tokens) as acgs:
        d = acgs.decide(tenant_id="t1", principal={**SUBJECT, "roles": ["admin"]},
                        action="fund_transfer", resource=DOCUMENT)
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            acgs.wait_for_escalation(d.escalation_id, timeout_s=2)
        assert time.monotonic() - start < 10
        with pytest.raises(NotFound):
            acgs.wait_for_escalation(str(uuid.uuid4()), timeout_s=1)
    # Another agent's token: the escalation is not its own.
    with shared_server.channel("agent") as ch:
        stub = epb_grpc.EscalationsStub(ch)
        with pytest.raises(grpc.RpcError) as info:  # an agent must name the escalation
            list(stub.WatchEscalations(epb.WatchEscalationsRequest(), timeout=5))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


SCRIPT = """\
from acgs_client import Client
p = {"id": "a7", "roles": ["operator"], "tenant_id": "t1"}
r = {"type": "document", "id": "d1", "tenant_id": "t1"}
with Client() as acgs:
    print(acgs.decide(tenant_id="t1", principal=p, action="read", resource=r).effect)
"""

@pytest.mark.slow
def test_fresh_venv_install_and_five_line_script(shared_server: ServerProcess,
                                                 tokens: RoleTokens, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    # Nothing of this checkout may leak in: `make test` exports PYTHONPATH=service:...
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "ACGS_"))}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=clean)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                          "--disable-pip-version-check", str(REPO / "clients" / "python")],
                         capture_output=True, text=True, timeout=600, env=clean)
    assert pip.returncode == 0, pip.stderr[-3000:]
    # Only the client and its two dependencies: no server package came along.
    listed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list",
                             "--format=freeze"], capture_output=True, text=True, check=True,
                            env=clean)
    names = {line.split("==")[0].lower() for line in listed.stdout.split()}
    assert {"acgs-client", "grpcio", "protobuf"} <= names
    assert not names & {"acgs", "regopy", "psycopg", "redis", "opentelemetry-sdk"}
    env = {"PATH": os.environ["PATH"], "ACGS_ADDR": shared_server.address,
           "ACGS_TOKEN": tokens.agent}
    run = subprocess.run([str(venv / "bin" / "python"), "-c", SCRIPT], env=env,
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ALLOW"
