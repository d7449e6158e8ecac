"""The yardstick: a bare grpc.aio server, its own process, nothing but ``grpc.health.v1``.

``python3 -m bench.bare_server PORT`` serves ``grpc.health.v1.Health/Check`` (SERVING)
on 127.0.0.1:PORT until killed. :mod:`bench.cost` measures its CPU per call at the
same rate as the service's, so a cheaper transport in the service shows as a gain
rather than moving the baseline with it.
"""

from __future__ import annotations

import asyncio
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


class Health(health_pb2_grpc.HealthServicer):
    async def Check(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


async def serve(port: int) -> None:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(Health(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
