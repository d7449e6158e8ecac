"""The gRPC server: servicers, standard health, reflection, graceful stop."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from acgs.entrypoints.convert import DEFAULT_LIMITS, StringLimits
from acgs.entrypoints.grpc_registry import Gate, Guard, register
from acgs.listen import cannot_listen

logger = logging.getLogger("acgs.server")

QUIET_S = 0.05
"""At stop, how long no call may have been refused before grpc's stop begins (see stop)."""
MAX_QUIET_WAIT_S = 1.0
"""The longest the stop waits for that lull (callers that never back off do not hold it)."""


class GrpcServer:
    """A grpc.aio server whose health reports SERVING only when told to.

    ``credentials``: TLS, else plaintext. ``guard``: the CallerResolver's
    ``resolve``, applied to bodies that do not parse (see grpc_registry).

    ``start`` binds and returns the bound port (useful with port 0), or raises
    ConfigurationError naming ACGS_GRPC_ADDR when it cannot bind; ``stop``
    reports NOT_SERVING first, then lets in-flight calls finish for up to
    ``grace_s`` seconds, answering new ones UNAVAILABLE.
    """

    def __init__(
        self,
        *,
        address: str,
        services: Sequence[tuple[ServiceDescriptor, object]],
        max_message_bytes: int,
        credentials: grpc.ServerCredentials | None = None,
        guard: Guard | None = None,
        limits: StringLimits = DEFAULT_LIMITS,
    ) -> None:
        self._address = address
        self._limits = limits
        self._credentials = credentials
        self._guard = guard
        self._services = list(services)
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max(max_message_bytes, 16 * 1024 * 1024)),
                ("grpc.so_reuseport", 0),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ]
        )
        self._health = HealthServicer()
        self._gate = Gate()
        self.port = 0

    @property
    def health(self) -> HealthServicer:
        return self._health

    async def start(self) -> int:
        for descriptor, servicer in self._services:
            register(self._server, descriptor, servicer, guard=self._guard, limits=self._limits,
                     gate=self._gate)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        names = [d.full_name for d, _ in self._services]
        names += [
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        reflection.enable_server_reflection(names, self._server)
        try:
            if self._credentials is None:
                self.port = self._server.add_insecure_port(self._address)
            else:
                self.port = self._server.add_secure_port(self._address, self._credentials)
        except RuntimeError as err:  # grpc: "Failed to bind to address ...; set GRPC_VERBOSITY"
            raise cannot_listen("ACGS_GRPC_ADDR", self._address) from err
        if self.port == 0:
            raise cannot_listen("ACGS_GRPC_ADDR", self._address)
        await self._server.start()
        await self.set_serving(False)
        logger.info("gRPC listening on %s (port %d)", self._address, self.port)
        return self.port

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self._health.set("", status)
        for descriptor, _ in self._services:
            await self._health.set(descriptor.full_name, status)

    async def stop(self, grace_s: float) -> None:
        """NOT_SERVING; refuse new calls with UNAVAILABLE; wait for the admitted ones (at
        most ``grace_s``) and for a lull in arrivals; then grpc's stop with what remains
        of ``grace_s`` (streams still open are cancelled at its end).

        grpc's ``Server.stop`` cancels at once (CANCELLED) every call that reached the
        server but that the application had not picked up yet; under load that was most
        of the calls in flight. Emptying the server first leaves only calls that arrive
        in the instant grpc's stop begins, while their connection is still open: those
        can still see CANCELLED (README, status codes).
        """
        await self.set_serving(False)
        end = time.monotonic() + grace_s
        self._gate.close()
        in_flight = self._gate.in_flight
        if not await self._gate.drained(grace_s):
            logger.warning("stop: %d call(s) still running after the grace period of %.1f s",
                           self._gate.in_flight, grace_s)
        await self._gate.quiet(QUIET_S, min(MAX_QUIET_WAIT_S, end - time.monotonic()))
        logger.info("stop: %d call(s) in flight finished; %d new call(s) refused (UNAVAILABLE)",
                    in_flight - self._gate.in_flight, self._gate.refused)
        await self._server.stop(max(0.0, end - time.monotonic()))

    async def wait(self) -> None:
        await self._server.wait_for_termination()
