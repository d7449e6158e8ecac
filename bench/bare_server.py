"""The yardstick: a bare gRPC server, its own process, nothing but ``grpc.health.v1``.

``python3 -m bench.bare_server PORT`` serves ``grpc.health.v1.Health/Check`` (SERVING)
on 127.0.0.1:PORT with grpc.aio until killed; ``BENCH_BARE_SYNC=1`` serves it on grpc's
synchronous server (a pool of 8 threads) instead. :mod:`bench.cost` measures the grpc.aio
one's CPU per call at the same rate as the service's, so a cheaper transport in the
service shows as a gain rather than moving the baseline with it; the synchronous one is
shown beside it, as what that transport alone would cost.
"""

from __future__ import annotations

import asyncio
import os
import sys
from concurrent import futures

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


class AioHealth(health_pb2_grpc.HealthServicer):
    async def Check(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        return SERVING


class SyncHealth(health_pb2_grpc.HealthServicer):
    def Check(self, request: health_pb2.HealthCheckRequest,
              context: grpc.ServicerContext) -> health_pb2.HealthCheckResponse:
        return SERVING


async def serve_aio(port: int) -> None:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(AioHealth(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def serve_sync(port: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    health_pb2_grpc.add_HealthServicer_to_server(SyncHealth(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    if os.environ.get("BENCH_BARE_SYNC") == "1":
        serve_sync(int(sys.argv[1]))
    else:
        asyncio.run(serve_aio(int(sys.argv[1])))
