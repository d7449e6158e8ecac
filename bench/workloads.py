"""Request bodies for the benchmark: serialized once as templates, stamped with ids per call.

A DecideRequest is serialized with fixed-width placeholder strings; each call
replaces them with ids of the same width, so the protobuf length prefixes stay
valid and making a body costs a few hundred nanoseconds instead of a protobuf
build. Every request is one the constitution ALLOWs (an ``agent`` writing a
document of its own tenant, with a few attributes to convert).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from acgs import CONSTITUTIONAL_HASH
from acgs.v1 import governance_pb2 as pb
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2

ID_WIDTH = 16
# Placeholders of the request id, principal id and resource id.
_SLOTS = (b"\x01" * ID_WIDTH, b"\x02" * ID_WIDTH, b"\x03" * ID_WIDTH)

HEADERS = {"x-constitutional-hash": CONSTITUTIONAL_HASH, "grpc-timeout": "5S"}
"""The metadata every benchmark call carries (a token is added per server)."""

Body = Callable[[int], bytes]
"""Message bytes of the i-th call of a workload (i counts up across steps)."""


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(value)
    return s


def decide_request(request_id: str, principal_id: str, resource_id: str) -> pb.DecideRequest:
    return pb.DecideRequest(
        constitutional_hash=CONSTITUTIONAL_HASH, request_id=request_id, tenant_id="t1",
        principal=pb.Principal(id=principal_id, roles=["agent"], tenant_id="t1",
                               attributes=_struct({"team": "payments", "model": "m-2"})),
        action=pb.Action(type="write", attributes=_struct({"priority": 2, "impact_score": 0.3})),
        resource=pb.Resource(type="document", id=resource_id, tenant_id="t1",
                             attributes=_struct({"created_by": "agent-other",
                                                 "contains_pii": False})),
        context=_struct({"session": "s-1", "channel": "api"}),
    )


class DecideTemplate:
    """Serialized DecideRequest with three fixed-width id slots."""

    def __init__(self) -> None:
        raw = decide_request(*(s.decode() for s in _SLOTS)).SerializeToString()
        parts: list[bytes] = []
        for slot in _SLOTS:
            head, sep, raw = raw.partition(slot)
            if not sep:
                raise RuntimeError("placeholder not found in the serialized request")
            parts.append(head)
        self._p0, self._p1, self._p2 = parts
        self._p3 = raw
        self.size = len(self.render(b"0" * ID_WIDTH, b"0" * ID_WIDTH, b"0" * ID_WIDTH))

    def render(self, request_id: bytes, principal_id: bytes, resource_id: bytes) -> bytes:
        return b"".join((self._p0, request_id, self._p1, principal_id, self._p2, resource_id,
                         self._p3))


def ident(prefix: str, n: int) -> bytes:
    """A fixed-width id: ``prefix`` then ``n`` zero-padded (ID_WIDTH bytes)."""
    text = f"{prefix}{n:0{ID_WIDTH - len(prefix)}d}"
    if len(text) != ID_WIDTH:
        raise ValueError(f"id {text!r} is not {ID_WIDTH} characters")
    return text.encode()


def distinct(tag: str) -> Body:
    """Every call distinct: new request, principal and resource ids (cache misses)."""
    t = DecideTemplate()
    return lambda i: t.render(ident(f"r{tag}", i), ident(f"a{tag}", i), ident(f"d{tag}", i))


def same(tag: str) -> Body:
    """The same decision input every call (one principal, one resource), request ids unique:
    after the first call, every one is a cache hit that is still audited."""
    t = DecideTemplate()
    principal, resource = ident(f"s{tag}", 0), ident(f"u{tag}", 0)
    return lambda i: t.render(ident(f"r{tag}", i), principal, resource)


def zipf_ranks(keys: int, exponent: float, count: int, seed: int) -> list[int]:
    """``count`` draws of key ranks 0..keys-1 with P(k) proportional to 1/(k+1)**exponent."""
    weights = [1.0 / (k + 1) ** exponent for k in range(keys)]
    return random.Random(seed).choices(range(keys), weights=weights, k=count)


def zipf(tag: str, *, keys: int = 10_000, exponent: float = 1.1, count: int = 400_000,
         seed: int = 7) -> Body:
    """Calls over ``keys`` distinct decision inputs drawn Zipf(``exponent``); request ids unique."""
    t = DecideTemplate()
    ranks = zipf_ranks(keys, exponent, count, seed)
    principals = [ident(f"z{tag}", k) for k in range(keys)]
    resources = [ident(f"y{tag}", k) for k in range(keys)]

    def body(i: int) -> bytes:
        k = ranks[i % count]
        return t.render(ident(f"r{tag}", i), principals[k], resources[k])

    return body


def batch(tag: str, size: int) -> Body:
    """DecideBatchRequest of ``size`` distinct requests; every batch distinct too."""
    t = DecideTemplate()
    field = b"\x0a" + _varint(t.size)  # field 1 (requests), wire type 2, then the length

    def body(i: int) -> bytes:
        base = i * size
        return b"".join(
            field + t.render(ident(f"b{tag}", base + k), ident(f"p{tag}", base + k),
                             ident(f"q{tag}", base + k))
            for k in range(size))

    return body


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def health() -> Body:
    """grpc.health.v1.HealthCheckRequest for the overall server (service "")."""
    raw = health_pb2.HealthCheckRequest().SerializeToString()
    return lambda i: raw


def check_decision(raw: bytes) -> str | None:
    """None when ``raw`` is a non-fail-safe ALLOW Decision, else what is wrong."""
    d = pb.Decision.FromString(raw)
    if d.effect != pb.ALLOW:
        return f"effect {pb.Effect.Name(d.effect)}: {[v.principle for v in d.violations]}"
    return None


def check_batch(raw: bytes, size: int) -> str | None:
    resp = pb.DecideBatchResponse.FromString(raw)
    if len(resp.decisions) != size:
        return f"{len(resp.decisions)} decisions for a batch of {size}"
    bad = [pb.Effect.Name(d.effect) for d in resp.decisions if d.effect != pb.ALLOW]
    return f"{len(bad)} non-ALLOW decisions: {bad[:3]}" if bad else None


def check_health(raw: bytes) -> str | None:
    status = health_pb2.HealthCheckResponse.FromString(raw).status
    return None if status == health_pb2.HealthCheckResponse.SERVING else f"health {status}"
