"""The shared Redis tier, through real servers: sharing, and Redis trouble is not an outage."""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
from acgs.v1 import governance_pb2 as pb
from acgs.v1 import governance_pb2_grpc as pb_grpc
from acgs_client import Decision

from tests.client import allow_input, decide_request
from tests.plugins.redis import ThrowawayRedis
from tests.plugins.servers import ServerFactory, ServerProcess


def _decide(server: ServerProcess, doc: dict[str, Any]) -> Decision:
    with server.client(timeout_s=10) as acgs:
        return acgs.decide(**{k: doc[k] for k in ("tenant_id", "principal", "action",
                                                  "resource", "context")})


def test_a_second_server_sees_the_first_servers_entry(
    servers: ServerFactory, redis_server: ThrowawayRedis
) -> None:
    env = {"ACGS_REDIS_URL": redis_server.url}
    first, second = servers.start(env), servers.start(env)
    doc = allow_input()
    doc["principal"]["id"] = "agent-shared"
    assert not _decide(first, doc).cached  # evaluated, written to both tiers
    deadline = time.monotonic() + 5  # Redis writes are behind the answer (write-behind)
    while True:
        decision = _decide(second, doc)
        if decision.cached or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert decision.cached and decision.allowed


def test_redis_stopped_and_stalled_under_load_fails_no_decision(
    servers: ServerFactory, redis_server: ThrowawayRedis
) -> None:
    server = servers.start({"ACGS_REDIS_URL": redis_server.url, "ACGS_CACHE_LOCAL_SIZE": "0"})
    failures: list[str] = []
    answered = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal answered
        with server.channel("agent") as channel:
            stub = pb_grpc.GovernanceStub(channel)
            i = 0
            while not stop.is_set():
                doc = allow_input()
                doc["principal"]["id"] = f"agent-{i % 50}"  # repeats: Redis hits when it is up
                i += 1
                try:
                    decision = stub.Decide(decide_request(doc), timeout=5)
                    assert decision.effect == pb.ALLOW
                    answered += 1
                except grpc.RpcError as err:
                    failures.append(f"{err.code().name}: {err.details()}")  # type: ignore[attr-defined]

    workers = [threading.Thread(target=load, daemon=True) for _ in range(3)]
    for w in workers:
        w.start()
    time.sleep(1.5)
    redis_server.stall(2.0)  # DEBUG SLEEP: every Redis call times out meanwhile
    time.sleep(3)
    redis_server.stop()
    time.sleep(3)
    redis_server.start()
    time.sleep(3)  # the breaker's probe finds Redis again
    before = answered
    time.sleep(1.5)
    stop.set()
    for w in workers:
        w.join(timeout=30)
    assert failures == [], failures[:5]
    assert answered - before > 0
    doc = allow_input()
    doc["principal"]["id"] = "agent-1"
    # The restarted Redis is empty: the first decision refills it (write-behind), a later
    # one reads it back. Within seconds, not necessarily at the first try.
    deadline = time.monotonic() + 10
    while not (cached := _decide(server, doc).cached) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cached, "the Redis tier did not come back"
