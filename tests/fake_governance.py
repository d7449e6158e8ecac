"""A scripted stand-in for acgs.v1.Governance, to test what a client does on failures.

``FakeGovernance(script)`` answers Decide from ``script``: one entry per call, each a
gRPC status code (with optional trailers), a :class:`Hold` (answer after a while) or
``None`` for a normal decision; the last entry repeats. It records the DecideRequests
it received. Run as a script (``python -m tests.fake_governance PORT``) it is a server
that SIGKILLs itself on its first Decide, after printing the request_id: a server dying
mid-call.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from acgs_client.v1 import governance_pb2 as pb

DECIDE = "/acgs.v1.Governance/Decide"


@dataclass(frozen=True)
class Fail:
    code: grpc.StatusCode
    trailers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Hold:
    seconds: float


@dataclass
class FakeGovernance:
    script: Sequence[Fail | Hold | None]
    received: list[pb.DecideRequest] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def decide(self, request: pb.DecideRequest, context: grpc.ServicerContext) -> pb.Decision:
        with self._lock:
            self.received.append(request)
            self.metadata.append({k: str(v) for k, v in context.invocation_metadata()})
            step = self.script[min(len(self.received), len(self.script)) - 1]
        if isinstance(step, Hold):
            time.sleep(step.seconds)
        elif step is not None:
            context.set_trailing_metadata(step.trailers)
            context.abort(step.code, f"scripted {step.code.name}")
        return pb.Decision(decision_id=f"d-{request.request_id}", effect=pb.ALLOW,
                           request_id=request.request_id)

    def serve(self, port: int = 0) -> tuple[grpc.Server, int]:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.method_handlers_generic_handler("acgs.v1.Governance", {
            "Decide": grpc.unary_unary_rpc_method_handler(
                self.decide, request_deserializer=pb.DecideRequest.FromString,
                response_serializer=pb.Decision.SerializeToString)})
        server.add_generic_rpc_handlers((handler,))
        bound = server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        return server, bound


def _die_on_first_decide(request: pb.DecideRequest, context: grpc.ServicerContext) -> None:
    print(request.request_id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "acgs.v1.Governance", {"Decide": grpc.unary_unary_rpc_method_handler(
            _die_on_first_decide, request_deserializer=pb.DecideRequest.FromString)}),))
    server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()
