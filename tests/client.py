"""Helpers for tests: build acgs.v1 requests from plain dicts; send a bearer token."""

from __future__ import annotations

from typing import Any

import grpc
from acgs.v1 import governance_pb2 as pb
from google.protobuf import struct_pb2

HASH = "cdd01ef066bc6cf2"


def struct(value: dict[str, Any] | None) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    if value:
        s.update(value)
    return s


def decide_request(
    policy_input: dict[str, Any], *, request_id: str = "", constitutional_hash: str = HASH
) -> pb.DecideRequest:
    """A DecideRequest carrying ``policy_input`` (the input document's shape). No
    ``request_id`` by default: a request_id is an idempotency key (the same one with
    another body is FAILED_PRECONDITION), so tests name one only when they mean it."""
    p = policy_input.get("principal", {})
    a = policy_input.get("action", {})
    r = policy_input.get("resource", {})
    return pb.DecideRequest(
        constitutional_hash=constitutional_hash,
        request_id=request_id,
        tenant_id=policy_input.get("tenant_id", ""),
        principal=pb.Principal(
            id=p.get("id", ""),
            roles=p.get("roles", []),
            tenant_id=p.get("tenant_id", ""),
            attributes=struct(p.get("attributes")),
        ),
        action=pb.Action(type=a.get("type", ""), attributes=struct(a.get("attributes"))),
        resource=pb.Resource(
            type=r.get("type", ""),
            id=r.get("id", ""),
            tenant_id=r.get("tenant_id", ""),
            attributes=struct(r.get("attributes")),
        ),
        context=struct(policy_input.get("context")),
    )


def allow_input(**overrides: Any) -> dict[str, Any]:
    """A request the constitution allows (see policy/README.md)."""
    doc: dict[str, Any] = {
        "tenant_id": "t1",
        "principal": {"id": "agent-7", "roles": ["operator"], "tenant_id": "t1", "attributes": {}},
        "action": {"type": "read", "attributes": {}},
        "resource": {"type": "document", "id": "d1", "tenant_id": "t1", "attributes": {}},
        "context": {},
    }
    doc.update(overrides)
    return doc


class _Bearer(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds ``authorization: Bearer <token>`` to every call of a channel."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: Any) -> Any:
        return details._replace(metadata=(*(details.metadata or ()), self._header))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)


def authorized(channel: grpc.Channel, token: str) -> grpc.Channel:
    """``channel`` sending ``token`` as its bearer token on every call."""
    return grpc.intercept_channel(channel, _Bearer(token))
