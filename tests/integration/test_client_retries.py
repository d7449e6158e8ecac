"""acgs_client's retry rule against scripted servers: what is retried, how, and with
which request_id. No ACGS server needed: the point is the client's behaviour on the wire."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time

import grpc
import pytest
from acgs_client import (
    AcgsError,
    AsyncClient,
    Client,
    ConstitutionMismatch,
    InvalidRequest,
    RateLimited,
    RetryPolicy,
    Unavailable,
)
from acgs_client.retry import retry_after_s, server_cancelled

from tests.fake_governance import Fail, FakeGovernance, Hold
from tests.plugins.servers import REPO, free_port

REQUEST = {"tenant_id": "t1", "principal": {"id": "agent-7", "roles": ["operator"],
                                            "tenant_id": "t1"},
           "action": "read", "resource": {"type": "document", "id": "d1", "tenant_id": "t1"}}
FAST = RetryPolicy(max_attempts=5, initial_backoff_s=0.01, max_backoff_s=0.05)


def serve(script: list[Fail | Hold | None]) -> tuple[FakeGovernance, grpc.Server, str]:
    fake = FakeGovernance(script)
    server, port = fake.serve()
    return fake, server, f"127.0.0.1:{port}"


def test_unavailable_is_retried_with_the_same_request_id() -> None:
    fake, server, addr = serve([Fail(grpc.StatusCode.UNAVAILABLE)] * 2 + [None])
    try:
        with Client(addr, token="acgs_x.y", retry=FAST) as client:
            decision = client.decide(**REQUEST)
        assert decision.allowed
        assert len(fake.received) == 3
        ids = {r.request_id for r in fake.received}
        assert len(ids) == 1 and decision.request_id in ids and len(ids.pop()) == 32
        # Every attempt carries the hash (field and metadata, for HAProxy) and the token.
        assert all(r.constitutional_hash == "cdd01ef066bc6cf2" for r in fake.received)
        assert all(m["x-constitutional-hash"] == "cdd01ef066bc6cf2" and
                   m["authorization"] == "Bearer acgs_x.y" for m in fake.metadata)
    finally:
        server.stop(None)


@pytest.mark.parametrize(("code", "error"), [
    (grpc.StatusCode.INVALID_ARGUMENT, InvalidRequest),
    (grpc.StatusCode.FAILED_PRECONDITION, ConstitutionMismatch),
])
def test_client_mistakes_are_never_retried(code: grpc.StatusCode, error: type) -> None:
    fake, server, addr = serve([Fail(code), None])
    try:
        with Client(addr, retry=FAST) as client, pytest.raises(error) as info:
            client.decide(**REQUEST)
        assert len(fake.received) == 1
        assert info.value.code == code
    finally:
        server.stop(None)


def test_resource_exhausted_waits_retry_after_ms() -> None:
    fake, server, addr = serve([Fail(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                     (("retry-after-ms", "300"),)), None])
    try:
        with Client(addr, retry=FAST, timeout_s=5) as client:
            start = time.monotonic()
            assert client.decide(**REQUEST).allowed
            waited = time.monotonic() - start
        assert len(fake.received) == 2
        assert waited >= 0.3
    finally:
        server.stop(None)


def test_resource_exhausted_without_retry_after_is_not_retried() -> None:
    """An oversized message or batch: the same call would fail again."""
    fake, server, addr = serve([Fail(grpc.StatusCode.RESOURCE_EXHAUSTED), None])
    try:
        with Client(addr, retry=FAST) as client, pytest.raises(RateLimited):
            client.decide(**REQUEST)
        assert len(fake.received) == 1
    finally:
        server.stop(None)


def test_retry_after_beyond_the_deadline_raises_at_once() -> None:
    fake, server, addr = serve([Fail(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                     (("retry-after-ms", "5000"),)), None])
    try:
        with Client(addr, retry=FAST, timeout_s=1) as client:
            start = time.monotonic()
            with pytest.raises(RateLimited) as info:
                client.decide(**REQUEST)
            assert time.monotonic() - start < 0.9
        assert info.value.retry_after_s == pytest.approx(5.0)
        assert len(fake.received) == 1
    finally:
        server.stop(None)


def test_retries_are_bounded() -> None:
    fake, server, addr = serve([Fail(grpc.StatusCode.UNAVAILABLE)])
    try:
        with Client(addr, retry=FAST, timeout_s=5) as client, pytest.raises(Unavailable):
            client.decide(**REQUEST)
        assert len(fake.received) == FAST.max_attempts
    finally:
        server.stop(None)


def test_async_client_retries_alike() -> None:
    fake, server, addr = serve([Fail(grpc.StatusCode.UNAVAILABLE), None])

    async def main() -> str:
        async with AsyncClient(addr, retry=FAST) as client:
            return (await client.decide(**REQUEST)).request_id

    try:
        request_id = asyncio.run(main())
        assert [r.request_id for r in fake.received] == [request_id, request_id]
    finally:
        server.stop(None)


def test_a_server_killed_mid_call_is_retried_with_the_same_request_id() -> None:
    """The first server receives the Decide and dies (SIGKILL) before answering; the
    client retries, reaches the replacement on the same address, and sends the same
    request_id, so the server side can recognise the retry."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'clients/python/src'}{os.pathsep}{REPO}"}
    dying = subprocess.Popen([sys.executable, "-m", "tests.fake_governance", str(port)],
                             cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    assert dying.stdout is not None and dying.stdout.readline().strip() == "ready"
    result: dict[str, object] = {}

    def call() -> None:
        patient = RetryPolicy(max_attempts=30, initial_backoff_s=0.05, max_backoff_s=0.2)
        with Client(f"127.0.0.1:{port}", retry=patient, timeout_s=20) as client:
            result["decision"] = client.decide(**REQUEST)

    caller = threading.Thread(target=call)
    caller.start()
    seen_by_first = dying.stdout.readline().strip()
    assert dying.wait(timeout=10) == -9
    fake = FakeGovernance([None])
    server, _ = fake.serve(port)
    try:
        caller.join(timeout=20)
        decision = result["decision"]
        assert [r.request_id for r in fake.received] == [seen_by_first]
        assert decision.request_id == seen_by_first  # type: ignore[attr-defined]
    finally:
        server.stop(None)
        dying.stdout.close()


def test_retry_after_trailer_parsing() -> None:
    assert retry_after_s([("retry-after-ms", "250")]) == 0.25
    assert retry_after_s([("retry-after-ms", "0")]) == 0.001  # never zero
    assert retry_after_s([("retry-after-ms", "soon")]) is None
    assert retry_after_s([("other", "1")]) is None
    assert retry_after_s(None) is None


def test_backoff_is_jittered_and_bounded() -> None:
    policy = RetryPolicy(max_attempts=10, initial_backoff_s=0.1, max_backoff_s=0.4)
    delays = [policy.delay_s(a, grpc.StatusCode.UNAVAILABLE, None) for a in range(1, 10)]
    assert all(d is not None for d in delays)
    assert 0.05 <= delays[0] <= 0.1  # type: ignore[operator]
    assert all(0.2 <= d <= 0.4 for d in delays[3:])  # type: ignore[operator]
    assert policy.delay_s(10, grpc.StatusCode.UNAVAILABLE, None) is None
    assert policy.delay_s(1, grpc.StatusCode.INVALID_ARGUMENT, None) is None
    assert policy.delay_s(1, grpc.StatusCode.DEADLINE_EXCEEDED, None) is None


def test_a_server_cancelled_decide_is_retried_with_the_same_request_id() -> None:
    """A stopping server may cancel a call that reached it as its stop began (README,
    status codes): Decide is idempotent by request_id, so the client retries it."""
    fake, server, addr = serve([Fail(grpc.StatusCode.CANCELLED), None])

    async def main() -> str:
        async with AsyncClient(addr, retry=FAST) as client:
            return (await client.decide(**REQUEST)).request_id

    try:
        with Client(addr, retry=FAST) as client:
            assert client.decide(**REQUEST).allowed
        assert len({r.request_id for r in fake.received}) == 1 and len(fake.received) == 2
        fake.received.clear()
        request_id = asyncio.run(main())  # the script starts over: CANCELLED, then a decision
        assert [r.request_id for r in fake.received] == [request_id, request_id]
    finally:
        server.stop(None)


def test_a_caller_cancelling_its_decide_is_not_retried() -> None:
    """Cancelling the caller's task cancels the call, once: nothing is sent again."""
    fake, server, addr = serve([Hold(0.5), None])

    async def main() -> None:
        async with AsyncClient(addr, retry=FAST, timeout_s=5) as client:
            task = asyncio.create_task(client.decide(**REQUEST))
            while not fake.received:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.2)

    try:
        asyncio.run(main())
        assert len(fake.received) == 1
    finally:
        server.stop(None)


def test_a_channel_closed_mid_call_is_not_retried() -> None:
    """The synchronous client closed by another thread while a call waits: CANCELLED,
    raised at once, not retried."""
    fake, server, addr = serve([Hold(0.5), None])
    try:
        client = Client(addr, retry=FAST, timeout_s=5)
        closer = threading.Timer(0.2, client.close)
        closer.start()
        with pytest.raises(AcgsError) as info:
            client.decide(**REQUEST)
        closer.join()
        assert info.value.code == grpc.StatusCode.CANCELLED
        assert len(fake.received) == 1
    finally:
        server.stop(None)


def test_cancelled_is_retried_only_when_the_server_cancelled_an_idempotent_call() -> None:
    policy = RetryPolicy()
    assert policy.delay_s(1, grpc.StatusCode.CANCELLED, None) is None
    assert policy.delay_s(1, grpc.StatusCode.CANCELLED, None, cancelled_by_server=True)
    assert policy.delay_s(policy.max_attempts, grpc.StatusCode.CANCELLED, None,
                          cancelled_by_server=True) is None
    assert server_cancelled(grpc.StatusCode.CANCELLED, "CANCELLED")
    assert not server_cancelled(grpc.StatusCode.CANCELLED, "Locally cancelled by application!")
    assert not server_cancelled(grpc.StatusCode.CANCELLED, "Channel closed!")
    assert not server_cancelled(grpc.StatusCode.UNAVAILABLE, "")
