"""The asyncio client: the same calls as :class:`acgs_client.Client`, awaited."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import grpc
import grpc.aio

from acgs_client.client import SIGHT_POLL_S
from acgs_client.config import ClientConfig
from acgs_client.errors import DeadlineExceeded, NotFound, from_status
from acgs_client.retry import retry_after_s, server_cancelled
from acgs_client.types import (
    Decision,
    DecisionRequest,
    Escalation,
    Evaluation,
    EventPage,
    decision_request,
    evaluation_of,
    list_events_request,
)
from acgs_client.v1 import (
    audit_pb2_grpc,
    escalations_pb2,
    escalations_pb2_grpc,
    governance_pb2,
    governance_pb2_grpc,
)

T = TypeVar("T")


class AsyncClient:
    """A grpc.aio connection to ACGS-2; create it inside the event loop that uses it.
    Same rules as the synchronous client: hash and token on every call, one deadline
    per call with retries inside it, typed errors."""

    def __init__(self, target: str | None = None, *, token: str | None = None,
                 config: ClientConfig | None = None, **settings: Any) -> None:
        self.config = config or ClientConfig.from_env(target=target, token=token, **settings)
        self._channel = _channel(self.config)
        self._metadata = self.config.metadata()
        self._governance = governance_pb2_grpc.GovernanceStub(self._channel)
        self._escalations = escalations_pb2_grpc.EscalationsStub(self._channel)
        self._audit = audit_pb2_grpc.AuditStub(self._channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close(None)

    async def decide(self, request: DecisionRequest | None = None, /, *,
                     timeout_s: float | None = None, **fields: Any) -> Decision:
        req = request or decision_request(**fields)
        proto = req.to_proto(self.config.constitutional_hash)
        return Decision.from_proto(await self._call(self._governance.Decide, proto, timeout_s,
                                                    idempotent=True))

    async def decide_batch(self, requests: Iterable[DecisionRequest], *,
                           timeout_s: float | None = None) -> list[Decision]:
        proto = governance_pb2.DecideBatchRequest(
            requests=[r.to_proto(self.config.constitutional_hash) for r in requests])
        response = await self._call(self._governance.DecideBatch, proto, timeout_s,
                                    idempotent=True)
        return [Decision.from_proto(d) for d in response.decisions]

    async def evaluate(self, path: str, input: Mapping[str, Any] | None = None, *,
                       timeout_s: float | None = None) -> Evaluation:
        proto = governance_pb2.EvaluateRequest(
            constitutional_hash=self.config.constitutional_hash, path=path,
            input_json="" if input is None else json.dumps(input))
        return evaluation_of(await self._call(self._governance.Evaluate, proto, timeout_s,
                                              idempotent=True))

    async def get_escalation(self, escalation_id: str, *,
                             timeout_s: float | None = None) -> Escalation:
        proto = escalations_pb2.GetEscalationRequest(escalation_id=escalation_id)
        return Escalation.from_proto(
            await self._call(self._escalations.GetEscalation, proto, timeout_s))

    async def list_events(self, *, kinds: Iterable[str] = (), actor: str = "",
                          since: dt.datetime | None = None, until: dt.datetime | None = None,
                          instance_id: str = "", page_size: int = 0, page_token: str = "",
                          timeout_s: float | None = None) -> EventPage:
        """A page of the audit trail's events: see :meth:`acgs_client.Client.list_events`."""
        proto = list_events_request(kinds=kinds, actor=actor, since=since, until=until,
                                    instance_id=instance_id, page_size=page_size,
                                    page_token=page_token)
        return EventPage.from_proto(await self._call(self._audit.ListEvents, proto, timeout_s))

    async def wait_for_escalation(self, escalation_id: str, timeout_s: float) -> Escalation:
        """Wait until a human resolves the escalation; TimeoutError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        escalation = await self._first_sight(escalation_id, deadline)
        attempt = 0
        while not escalation.final:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"escalation {escalation_id} still {escalation.state}")
            try:
                escalation = await self._watch(escalation, remaining)
            except grpc.aio.AioRpcError as err:
                attempt += 1
                if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise TimeoutError(
                        f"escalation {escalation_id} still {escalation.state}") from err
                delay = self.config.retry.delay_s(attempt, err.code(), None)
                if delay is None:
                    raise from_status(err.code(), err.details() or "") from err
                await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        return escalation

    async def _first_sight(self, escalation_id: str, deadline: float) -> Escalation:
        while True:  # NOT_FOUND until the deciding server has shipped it (see Client)
            try:
                return await self.get_escalation(
                    escalation_id, timeout_s=max(0.05, deadline - time.monotonic()))
            except NotFound:
                if time.monotonic() + SIGHT_POLL_S >= deadline:
                    raise
                await asyncio.sleep(SIGHT_POLL_S)

    async def _watch(self, escalation: Escalation, timeout_s: float) -> Escalation:
        request = escalations_pb2.WatchEscalationsRequest(
            after_seq=escalation.last_event_seq, escalation_id=escalation.escalation_id)
        call = self._escalations.WatchEscalations(request, timeout=timeout_s,
                                                  metadata=self._metadata)
        try:
            async for event in call:
                escalation = Escalation.from_proto(event.escalation)
                if escalation.final:
                    break
        finally:
            call.cancel()
        return escalation

    async def _call(self, method: Callable[..., Awaitable[T]], request: Any,
                    timeout_s: float | None, *, idempotent: bool = False) -> T:
        """``idempotent``: a CANCELLED from the server is retried too (acgs_client.retry).
        Cancelling the caller's task raises CancelledError here, never retried."""
        deadline = time.monotonic() + (timeout_s or self.config.timeout_s)
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(grpc.StatusCode.DEADLINE_EXCEEDED,
                                       "deadline passed between retries")
            try:
                return await method(request, timeout=remaining, metadata=self._metadata)
            except grpc.aio.AioRpcError as err:
                code, after = err.code(), retry_after_s(err.trailing_metadata())
                delay = self.config.retry.delay_s(
                    attempt, code, after,
                    cancelled_by_server=idempotent and server_cancelled(code, err.details()))
                if delay is None or time.monotonic() + delay >= deadline:
                    raise from_status(code, err.details() or "", after) from err
                await asyncio.sleep(delay)


def _channel(config: ClientConfig) -> grpc.aio.Channel:
    credentials = config.credentials()
    options = config.channel_options()
    if credentials is None:
        return grpc.aio.insecure_channel(config.target, options=options)
    return grpc.aio.secure_channel(config.target, credentials, options=options)
