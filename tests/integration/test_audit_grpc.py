"""acgs.v1.Audit over a real gRPC server: conversions, streaming and status codes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from acgs.adapters.pg_audit_queries import AuditQueries
from acgs.entrypoints.audit_servicer import AuditServicer
from acgs.entrypoints.callers import AnonymousAuthenticator, CallerResolver
from acgs.entrypoints.grpc_server import GrpcServer
from acgs.v1 import audit_pb2 as pb
from acgs.v1 import audit_pb2_grpc
from acgs.v1 import governance_pb2 as gpb
from psycopg_pool import AsyncConnectionPool

from tests.audit_support import fill

pytestmark = pytest.mark.postgres


async def _scenario(url: str) -> None:
    async with AsyncConnectionPool(url, min_size=1, max_size=2, open=False) as pool:
        servicer = AuditServicer(reader=AuditQueries(pool=pool),
                                 callers=CallerResolver(authenticator=AnonymousAuthenticator(),
                                                        access=None))
        server = GrpcServer(address="127.0.0.1:0", max_message_bytes=1 << 20,
                            services=[(pb.DESCRIPTOR.services_by_name["Audit"], servicer)])
        port = await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await _calls(audit_pb2_grpc.AuditStub(channel))
        finally:
            await server.stop(1)


async def _calls(stub: audit_pb2_grpc.AuditStub) -> None:
    chains = await stub.ListChains(pb.ListChainsRequest())
    assert [c.instance_id for c in chains.chains] == ["inst-a", "inst-b"]
    page = await stub.ListDecisions(pb.ListDecisionsRequest(
        filter=pb.DecisionFilter(effect=gpb.DENY, instance_id="inst-a"), page_size=2))
    assert len(page.decisions) == 2 and page.next_page_token
    assert all(d.effect == gpb.DENY and d.violations[0].severity == gpb.CRITICAL
               for d in page.decisions)
    one = await stub.GetDecision(pb.GetDecisionRequest(decision_id=page.decisions[0].decision_id))
    assert one == page.decisions[0]
    exported = [r async for r in stub.ExportDecisions(pb.ExportDecisionsRequest())]
    assert len(exported) == 16
    verdict = await stub.VerifyChain(pb.VerifyChainRequest(instance_id="inst-b"))
    assert verdict.ok and verdict.last_seq == 8
    for call, code in (
        (stub.GetDecision(pb.GetDecisionRequest(decision_id="x")),
         grpc.StatusCode.INVALID_ARGUMENT),
        (stub.GetDecision(pb.GetDecisionRequest(decision_id="00000000-0000-7000-8000-0000000000ff")),
         grpc.StatusCode.NOT_FOUND),
        (stub.ListDecisions(pb.ListDecisionsRequest(page_token="%%")),
         grpc.StatusCode.INVALID_ARGUMENT),
        (stub.VerifyChain(pb.VerifyChainRequest()), grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == code


def test_audit_service_over_grpc(tmp_path: Path, pg_url: str) -> None:
    fill(tmp_path, pg_url, n=8)
    asyncio.run(_scenario(pg_url))
