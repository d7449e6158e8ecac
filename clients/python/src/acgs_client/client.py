"""The synchronous client: ``Client().decide(...)`` over one gRPC channel."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import grpc

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
SIGHT_POLL_S = 0.1


class Client:
    """A connection to ACGS-2. Thread-safe; open one per process and reuse it.

    Every call carries the constitutional hash and the bearer token, has a deadline
    (``timeout_s``, default the config's), and is retried inside that deadline only when
    a retry is safe (see :mod:`acgs_client.retry`). Failures raise
    :class:`acgs_client.errors.AcgsError` subclasses.
    """

    def __init__(self, target: str | None = None, *, token: str | None = None,
                 config: ClientConfig | None = None, channel: grpc.Channel | None = None,
                 **settings: Any) -> None:
        self.config = config or ClientConfig.from_env(target=target, token=token, **settings)
        self._channel = channel or _channel(self.config)
        self._metadata = self.config.metadata()
        self._governance = governance_pb2_grpc.GovernanceStub(self._channel)
        self._escalations = escalations_pb2_grpc.EscalationsStub(self._channel)
        self._audit = audit_pb2_grpc.AuditStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def decide(self, request: DecisionRequest | None = None, /, *,
               timeout_s: float | None = None, **fields: Any) -> Decision:
        """Decide one action: pass a :class:`DecisionRequest`, or its fields as keywords
        (``tenant_id``, ``principal``, ``action``, ``resource``, ``context``,
        ``request_id``; dicts are accepted). Retries reuse the request's ``request_id``."""
        req = request or decision_request(**fields)
        proto = req.to_proto(self.config.constitutional_hash)
        return Decision.from_proto(self._call(self._governance.Decide, proto, timeout_s,
                                              idempotent=True))

    def decide_batch(self, requests: Iterable[DecisionRequest], *,
                     timeout_s: float | None = None) -> list[Decision]:
        """Decide several actions in one call; decisions come back in request order."""
        proto = governance_pb2.DecideBatchRequest(
            requests=[r.to_proto(self.config.constitutional_hash) for r in requests])
        response = self._call(self._governance.DecideBatch, proto, timeout_s,
                              idempotent=True)
        return [Decision.from_proto(d) for d in response.decisions]

    def evaluate(self, path: str, input: Mapping[str, Any] | None = None, *,
                 timeout_s: float | None = None) -> Evaluation:
        """The value of any rule of the active policy, e.g. ``acgs/constitution/decision``."""
        proto = governance_pb2.EvaluateRequest(
            constitutional_hash=self.config.constitutional_hash, path=path,
            input_json="" if input is None else json.dumps(input))
        return evaluation_of(self._call(self._governance.Evaluate, proto, timeout_s,
                                        idempotent=True))

    def get_escalation(self, escalation_id: str, *,
                       timeout_s: float | None = None) -> Escalation:
        """An escalation's current state (an agent sees those of its own requests)."""
        proto = escalations_pb2.GetEscalationRequest(escalation_id=escalation_id)
        return Escalation.from_proto(self._call(self._escalations.GetEscalation, proto,
                                                timeout_s))

    def list_events(self, *, kinds: Iterable[str] = (), actor: str = "",
                    since: dt.datetime | None = None, until: dt.datetime | None = None,
                    instance_id: str = "", page_size: int = 0, page_token: str = "",
                    timeout_s: float | None = None) -> EventPage:
        """A page of the audit trail's events (an auditor's token), oldest first: of
        ``kinds`` ("policy.activated", "token.revoked", ...; "decision" also finds the
        older "decide" records), done by ``actor`` (a caller id), ``since`` (inclusive) to
        ``until`` (exclusive), in one chain. Read-only: retried like any safe call."""
        proto = list_events_request(kinds=kinds, actor=actor, since=since, until=until,
                                    instance_id=instance_id, page_size=page_size,
                                    page_token=page_token)
        return EventPage.from_proto(self._call(self._audit.ListEvents, proto, timeout_s))

    def wait_for_escalation(self, escalation_id: str, timeout_s: float) -> Escalation:
        """Block until a human resolves the escalation (APPROVED, DENIED or EXPIRED) and
        return it; raise TimeoutError after ``timeout_s``. Streams WatchEscalations and
        resumes after a dropped connection without missing an event."""
        deadline = time.monotonic() + timeout_s
        escalation = self._first_sight(escalation_id, deadline)
        attempt = 0
        while not escalation.final:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"escalation {escalation_id} still {escalation.state}")
            try:
                escalation = self._watch(escalation, remaining)
            except grpc.RpcError as err:
                attempt += 1
                if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise TimeoutError(
                        f"escalation {escalation_id} still {escalation.state}") from err
                delay = self.config.retry.delay_s(attempt, err.code(), None)
                if delay is None:
                    raise from_status(err.code(), err.details() or "") from err
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        return escalation

    def _first_sight(self, escalation_id: str, deadline: float) -> Escalation:
        """The escalation, once readable: one opened a moment ago is NOT_FOUND until the
        deciding server has copied it to PostgreSQL (usually well under a second)."""
        while True:
            try:
                return self.get_escalation(
                    escalation_id, timeout_s=max(0.05, deadline - time.monotonic()))
            except NotFound:
                if time.monotonic() + SIGHT_POLL_S >= deadline:
                    raise
                time.sleep(SIGHT_POLL_S)

    def _watch(self, escalation: Escalation, timeout_s: float) -> Escalation:
        request = escalations_pb2.WatchEscalationsRequest(
            after_seq=escalation.last_event_seq, escalation_id=escalation.escalation_id)
        call = self._escalations.WatchEscalations(request, timeout=timeout_s,
                                                  metadata=self._metadata)
        try:
            for event in call:
                escalation = Escalation.from_proto(event.escalation)
                if escalation.final:
                    break
        finally:
            call.cancel()
        return escalation

    def _call(self, method: Callable[..., T], request: Any, timeout_s: float | None, *,
              idempotent: bool = False) -> T:
        """``idempotent``: a CANCELLED from the server is retried too (acgs_client.retry)."""
        deadline = time.monotonic() + (timeout_s or self.config.timeout_s)
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(grpc.StatusCode.DEADLINE_EXCEEDED,
                                       "deadline passed between retries")
            try:
                return method(request, timeout=remaining, metadata=self._metadata)
            except grpc.RpcError as err:
                code, after = err.code(), retry_after_s(err.trailing_metadata())
                delay = self.config.retry.delay_s(
                    attempt, code, after,
                    cancelled_by_server=idempotent and server_cancelled(code, err.details()))
                if delay is None or time.monotonic() + delay >= deadline:
                    raise from_status(code, err.details() or "", after) from err
                time.sleep(delay)


def _channel(config: ClientConfig) -> grpc.Channel:
    credentials = config.credentials()
    options = config.channel_options()
    if credentials is None:
        return grpc.insecure_channel(config.target, options=options)
    return grpc.secure_channel(config.target, credentials, options=options)



