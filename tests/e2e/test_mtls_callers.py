"""Mutual TLS on a real server: client certificates named in ACGS_TLS_CLIENT_MAP are callers
without a token; a token, when sent, wins; an unmapped certificate needs a token (issue 16)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from acgs.edge import make_tls
from acgs.v1 import audit_pb2, audit_pb2_grpc
from acgs.v1 import governance_pb2 as pb
from acgs.v1 import governance_pb2_grpc as pb_grpc
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.client import allow_input, authorized, decide_request
from tests.plugins.servers import RoleTokens, ServerFactory, ServerProcess
from tests.tls_support import client_cert, split

pytestmark = pytest.mark.postgres

MAP = """# who may call without a token
CN=checkout                     agent:checkout@corp
URI=spiffe://corp/ns/audit      auditor
"""


@dataclass
class Mtls:
    server: ServerProcess
    ca: bytes
    certs: dict[str, tuple[bytes, bytes]]  # name -> (certificate, key)

    def channel(self, cert: str, token: str | None = None) -> grpc.Channel:
        pem, key = self.certs[cert]
        creds = grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=key,
                                             certificate_chain=pem)
        channel = grpc.secure_channel(self.server.address, creds)
        return authorized(channel, token) if token is not None else channel


@pytest.fixture
def mtls(servers: ServerFactory, tmp_path: Path) -> Iterator[Mtls]:
    files = make_tls(tmp_path / "tls", hosts=("localhost", "127.0.0.1"))
    cert, key = split(files, tmp_path)
    (tmp_path / "client-map").write_text(MAP)
    server = servers.make({"ACGS_TLS_CERT": str(cert), "ACGS_TLS_KEY": str(key),
                           "ACGS_TLS_CLIENT_CA": str(files.ca),
                           "ACGS_TLS_CLIENT_MAP": str(tmp_path / "client-map")})
    server.start(wait_serving=False)
    certs = {"checkout": client_cert(files, "checkout"),
             "audit": client_cert(files, "audit-box", [
                 x509.DNSName("audit.corp"), x509.UniformResourceIdentifier(
                     "spiffe://corp/ns/audit")]),
             "stranger": client_cert(files, "stranger")}
    setup = Mtls(server, files.ca.read_bytes(), certs)
    deadline = time.monotonic() + 30
    while True:
        assert server.proc is not None and server.proc.poll() is None, server.log()
        try:
            with setup.channel("stranger") as ch:  # health is open to any accepted client
                health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.2)
    yield setup


def code(fn: object) -> grpc.StatusCode:
    try:
        fn()  # type: ignore[operator]
    except grpc.RpcError as err:
        return err.code()  # type: ignore[attr-defined,no-any-return]
    return grpc.StatusCode.OK


def test_mapped_certificates_are_callers_and_tokens_win(mtls: Mtls, tokens: RoleTokens) -> None:
    request = decide_request(allow_input())
    with mtls.channel("checkout") as ch:  # CN=checkout: an agent, no token needed
        decision = pb_grpc.GovernanceStub(ch).Decide(request, timeout=10)
        assert decision.effect == pb.ALLOW
        assert code(lambda: audit_pb2_grpc.AuditStub(ch).ListChains(
            audit_pb2.ListChainsRequest(), timeout=10)) == grpc.StatusCode.PERMISSION_DENIED
    with mtls.channel("stranger") as ch:  # unmapped: a token, as without mutual TLS
        assert code(lambda: pb_grpc.GovernanceStub(ch).Decide(request, timeout=10)) == \
            grpc.StatusCode.UNAUTHENTICATED
    with mtls.channel("stranger", tokens.agent) as ch:
        assert pb_grpc.GovernanceStub(ch).Decide(request, timeout=10).effect == pb.ALLOW
    with mtls.channel("checkout", "acgs_0123456789abcdef." + "A" * 43) as ch:  # token wins
        assert code(lambda: pb_grpc.GovernanceStub(ch).Decide(request, timeout=10)) == \
            grpc.StatusCode.UNAUTHENTICATED
    with mtls.channel("checkout", tokens.auditor) as ch:  # ... also over the certificate's role
        assert code(lambda: pb_grpc.GovernanceStub(ch).Decide(request, timeout=10)) == \
            grpc.StatusCode.PERMISSION_DENIED
    with mtls.channel("audit") as ch:  # a SAN URI: an auditor, who finds the decision's caller
        stub = audit_pb2_grpc.AuditStub(ch)
        deadline = time.monotonic() + 15
        while True:
            try:
                record = stub.GetDecision(audit_pb2.GetDecisionRequest(
                    decision_id=decision.decision_id), timeout=10)
                break
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.NOT_FOUND, err  # type: ignore[attr-defined]
                assert time.monotonic() < deadline, "decision not shipped within 15 s"
                time.sleep(0.1)
    assert (record.caller_id, record.caller_role) == ("tls:CN=checkout", "agent")
