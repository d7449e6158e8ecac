"""Cheap mutants of a drawn request, for volume (tests/e2e/test_fuzz_every_method.py).

Drawing a request through Hypothesis costs milliseconds; 10,000 of them would take minutes
on two busy cores. Each drawn request is therefore also sent as a few mutants: a copy with
one or two fields (anywhere in the message) set to a value at or past its limits, chosen
by a Random seeded from a Hypothesis draw (so a run replays from its seed).
"""

from __future__ import annotations

import math
import random
from typing import Any

from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from tests import fuzz_support as fz
from tests.fuzz_requests import INT32, INT64, MAX_S, MIN_S, UINT32, Call, Seen, b64, known_code

F = FieldDescriptor
_EDGES: dict[int, tuple[Any, ...]] = {
    F.TYPE_INT32: INT32, F.TYPE_INT64: INT64, F.TYPE_UINT32: UINT32,
    F.TYPE_UINT64: (0, 1, 2**64 - 1), F.TYPE_BOOL: (True, False),
    F.TYPE_DOUBLE: (0.0, -0.0, math.nan, math.inf, -math.inf, 1e308, 5e-324, -1.0, 1.0000001),
    F.TYPE_ENUM: (0, 1, 2, 3, 5, 6, -1, 2**31 - 1),
}
_STRINGS = ("", " ", "\x00", "é", "\U0010ffff", "a" * 300, "x" * 70_000, "1e400",
            "00000000-0000-0000-0000-000000000000", "acgs_0123456789abcdef", "{}", "[",
            b64(b'[1, "a", 1]'), b64(b"[" * 3000), b64(b'["2026-01-01T00:00:00", "x"]'),
            "W1tbW1tb", "%%%", "\u202e", "../..")
_TIMES = ((0, 0), (MIN_S, 0), (MAX_S, 999_999_999), (10**12, 0), (MAX_S + 1, 0),
          (MIN_S - 1, 0), (2**63 - 1, 0), (-(2**63), 0), (0, -1), (0, 10**9), (0, 2**31 - 1))
_STRUCTS: tuple[dict[str, Any], ...] = (
    {}, {"n": math.inf}, {"n": math.nan}, {"n": 1e308}, {"n": 2.0**63}, {"\x00": 1},
    fz.nested(fz.MAX_DEPTH), fz.nested(fz.MAX_DEPTH - 3), {"s": "x" * 70_000},
)


def _leaves(msg: Message) -> list[tuple[Message, FieldDescriptor]]:
    """Every field of ``msg`` a mutant may change, nested messages' fields included."""
    out: list[tuple[Message, FieldDescriptor]] = []
    for fd in msg.DESCRIPTOR.fields:
        kind = fd.message_type.full_name if fd.message_type is not None else ""
        if fd.type != F.TYPE_MESSAGE or kind in (TIMESTAMP, STRUCT) or _is_map(fd):
            out.append((msg, fd))
        elif fd.is_repeated:
            for item in getattr(msg, fd.name)[:3]:
                out.extend(_leaves(item))
        else:
            out.extend(_leaves(getattr(msg, fd.name)))
    return out


TIMESTAMP, STRUCT = "google.protobuf.Timestamp", "google.protobuf.Struct"


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry


def _set(msg: Message, fd: FieldDescriptor, rng: random.Random, seen: Seen) -> None:
    kind = fd.message_type.full_name if fd.message_type is not None else ""
    if kind == TIMESTAMP:
        seconds, nanos = rng.choice(_TIMES)
        getattr(msg, fd.name).CopyFrom(timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos))
    elif kind == STRUCT:
        getattr(msg, fd.name).Clear()
        getattr(msg, fd.name).update(rng.choice(_STRUCTS))
    elif _is_map(fd):
        getattr(msg, fd.name)[rng.choice(_STRINGS)[:100]] = rng.choice(_STRINGS)
    elif fd.type == F.TYPE_STRING:
        pool = sorted(seen.decisions | seen.escalations | seen.page_tokens | seen.instances)
        value = rng.choice(pool) if pool and rng.random() < 0.3 else rng.choice(_STRINGS)
        if fd.is_repeated:
            getattr(msg, fd.name).append(value)
        else:
            setattr(msg, fd.name, value)
    elif fd.type in _EDGES and not fd.is_repeated:
        setattr(msg, fd.name, rng.choice(_EDGES[fd.type]))


def mutants(call: Call, rng: random.Random, seen: Seen, n: int) -> list[Call]:
    """``n`` copies of ``call`` with one or two fields each set to an edge value."""
    if call.request is None:
        return []
    out = []
    for _ in range(n):
        msg = type(call.request)()
        msg.CopyFrom(call.request)
        leaves = _leaves(msg)
        if not leaves:
            break
        for parent, fd in rng.sample(leaves, min(len(leaves), rng.choice((1, 1, 2)))):
            _set(parent, fd, rng, seen)
        expect = call.expect if call.wrong_caller else known_code(call.method, msg)
        out.append(Call(call.method, msg.SerializeToString(), call.role, expect, request=msg,
                        wrong_caller=call.wrong_caller))
    return out
