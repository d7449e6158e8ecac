"""SIGTERM under direct load (no HAProxy): the server lets the calls in flight finish,
answers the calls that arrive while it stops with a retryable status, and every decision
it answered is in the audit trail.

grpc's ``Server.stop`` cancels (CANCELLED) every call that reached the server but that the
application had not picked up yet; under load that was about 12 of 16 callers' calls
(acgs.entrypoints.grpc_server.GrpcServer.stop now empties the server first). The callers
use acgs_client.AsyncClient, as an application would, with its retry rule.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter

import psycopg
import pytest
from acgs_client import AcgsError, AsyncClient

from tests.plugins.servers import ServerFactory, ServerProcess

pytestmark = pytest.mark.postgres

CALLERS = 16
REQUEST = {"tenant_id": "t1",
           "principal": {"id": "agent-7", "roles": ["operator"], "tenant_id": "t1"},
           "action": "read", "resource": {"type": "document", "id": "d1", "tenant_id": "t1"}}


async def _load(server: ServerProcess, *, before_s: float) -> tuple[list[str], Counter[str]]:
    """CALLERS closed-loop Decide callers; SIGTERM after ``before_s``; each caller stops
    once the server process is gone. Returns the decision ids answered and the failures
    (by status and message)."""
    answered: list[str] = []
    failures: Counter[str] = Counter()
    assert server.proc is not None
    proc = server.proc

    async def caller(n: int) -> None:
        async with AsyncClient(server.address, token=server.tokens.agent) as client:
            while proc.poll() is None:
                try:
                    decision = await client.decide(**{**REQUEST, "principal": {
                        **REQUEST["principal"], "id": f"agent-{n}"}})
                except AcgsError as err:
                    failures[f"{err.code.name}: {err.details}"] += 1
                    continue
                assert decision.allowed, decision
                answered.append(decision.decision_id)

    callers = [asyncio.create_task(caller(n)) for n in range(CALLERS)]
    await asyncio.sleep(before_s)
    server.signal(signal.SIGTERM)
    await asyncio.wait_for(asyncio.gather(*callers), timeout=15)
    return answered, failures


@pytest.mark.parametrize("drain_delay_s", ["0", "0.5"])
def test_sigterm_under_load_fails_no_call_but_retryably(
        servers: ServerFactory, server_database: str, drain_delay_s: str) -> None:
    server = servers.start({"ACGS_DRAIN_DELAY_S": drain_delay_s})
    start = time.monotonic()
    answered, failures = asyncio.run(_load(server, before_s=1.0))
    assert server.stop() == 0
    assert len(answered) > 100, (len(answered), failures)
    # Once the process is gone a caller's last call fails UNAVAILABLE (after its retries):
    # the only failure a client may see. CANCELLED is what grpc's stop gave calls in flight.
    assert all(f.startswith("UNAVAILABLE") for f in failures), failures
    with psycopg.connect(server_database) as conn:
        stored = {str(r[0]) for r in conn.execute(
            "SELECT decision_id FROM audit_decisions WHERE decision_id = ANY(%s::uuid[])",
            (answered,))}
    assert stored == set(answered), f"{len(set(answered) - stored)} answered, not audited"
    assert "stop: " in server.log()
    assert time.monotonic() - start < 15
