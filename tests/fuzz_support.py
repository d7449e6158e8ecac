"""Hypothesis strategies for bad input, and the oracle that says what each deserves.

A generated Decide request comes with its *input document* (a plain dict), so
the oracle can judge it without the code under test: a missing required field,
a NaN or infinity, nesting past the depth limit or a NUL character in any string
is INVALID_ARGUMENT; then a missing or wrong constitutional hash is
FAILED_PRECONDITION; anything else is answered, and an ALLOW is only possible
for a principal acting in its own tenant.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import grpc
from acgs.entrypoints.convert import DEFAULT_LIMITS
from acgs.v1 import governance_pb2 as pb
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.client import HASH, allow_input, decide_request

CI = os.environ.get("CI", "").lower() == "true"
MAX_DEPTH = 32  # the server's default ACGS_MAX_INPUT_DEPTH
REQUIRED = ("tenant_id", "principal.id", "principal.tenant_id", "action.type", "resource.type")
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE,
         grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
         grpc.StatusCode.DATA_LOSS, grpc.StatusCode.CANCELLED}


def fuzz(*, ci: int, local: int) -> settings:
    """Hypothesis settings for ``ci`` examples under CI=true, ``local`` otherwise; no
    deadline (a server under load is slow now and then), no example database."""
    return settings(max_examples=ci if CI else local, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


# -- values --------------------------------------------------------------------------------

def rare(special: st.SearchStrategy[Any], common: st.SearchStrategy[Any],
         one_in: int = 40) -> st.SearchStrategy[Any]:
    """``special`` about once in ``one_in`` draws, else ``common``."""
    return st.integers(0, one_in - 1).flatmap(lambda i: special if i == 0 else common)


numbers = st.one_of(st.integers(-(2**60), 2**60), st.floats(allow_nan=True, allow_infinity=True))
strings = st.one_of(st.text(max_size=20), st.sampled_from(["", "t1", "t2", "agent-7", "\x00"]))


class Huge(str):
    """A long string with a short repr (Hypothesis prints every failing example)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Huge({len(self)} x {self[:1]!r})"


huge = st.integers(100_000, 700_000).map(lambda n: Huge("é" * n))  # 2 bytes each: to 1.4 MB
scalars = st.one_of(st.none(), st.booleans(), numbers, strings)
json_values = st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                     st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6)


def nested(depth: int, leaf: Any = 1) -> dict[str, Any]:
    """A dict ``depth`` levels deep (alternating dicts and lists)."""
    value: Any = leaf
    for i in range(depth):
        value = {"n": value} if i % 2 else [value]
    return {"deep": value}


# Deeper Structs cannot even be built by a protobuf client: see ``deep_bodies``.
attributes = st.one_of(
    st.dictionaries(st.text(max_size=8), json_values, max_size=3),
    st.integers(1, 10).map(nested),
)
tenants = st.sampled_from(["t1", "t2", ""])
hashes = st.one_of(st.just(HASH), st.sampled_from(["", HASH.upper(), HASH[:-1], HASH + " "]),
                   st.text(max_size=20))


SLOTS = ("principal", "action", "resource", "context")


@st.composite
def decide_docs(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """(input document, constitutional hash) of a Decide request, often malformed. One of
    its four Structs (drawn at random) holds arbitrary values: cheaper to draw, as telling."""
    doc: dict[str, Any] = {
        "tenant_id": draw(tenants),
        "principal": {"id": draw(st.sampled_from(["agent-7", "", "x"])),
                      "roles": draw(st.lists(st.sampled_from(
                          ["operator", "admin", "auditor", "agent", "", "root"]), max_size=3)),
                      "tenant_id": draw(tenants), "attributes": {}},
        "action": {"type": draw(st.sampled_from(["read", "write", "fund_transfer", "", "x"])),
                   "attributes": {}},
        "resource": {"type": draw(st.sampled_from(["document", ""])),
                     "id": draw(rare(huge, strings)), "tenant_id": draw(tenants),
                     "attributes": {}},
        "context": {},
    }
    slot = draw(st.sampled_from(SLOTS))
    if slot == "context":
        doc["context"] = draw(attributes)
    else:
        doc[slot]["attributes"] = draw(attributes)
    return doc, draw(hashes)


# -- the oracle ----------------------------------------------------------------------------


def _bad_value(value: Any, depth: int) -> bool:
    if isinstance(value, float) and (not math.isfinite(value) or float(f"{value:f}") != value):
        return True  # the engine would not see it as sent (service/acgs/domain/numbers.py)
    if isinstance(value, dict):
        return depth > MAX_DEPTH or any(_bad_value(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return depth > MAX_DEPTH or any(_bad_value(v, depth + 1) for v in value)
    return False


def _field(doc: dict[str, Any], path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\0" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


IDS = ("tenant_id", "principal.id", "principal.tenant_id", "action.type", "resource.type",
       "resource.id", "resource.tenant_id")


def _too_long(value: Any) -> bool:
    """A Struct key over the id bound or a Struct string over the text bound."""
    if isinstance(value, str):
        return len(value) > DEFAULT_LIMITS.text_chars
    if isinstance(value, dict):
        return any(len(k) > DEFAULT_LIMITS.id_chars or _too_long(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_too_long(v) for v in value)
    return False


def _over_bounds(doc: dict[str, Any], structs: list[Any], constitutional_hash: str) -> bool:
    ids = [_field(doc, p) for p in IDS] + list(doc["principal"]["roles"]) + [constitutional_hash]
    return (any(isinstance(v, str) and len(v) > DEFAULT_LIMITS.id_chars for v in ids)
            or any(_too_long(s) for s in structs))


def malformed(doc: dict[str, Any], constitutional_hash: str = "") -> bool:
    """True when the server must refuse ``doc`` with INVALID_ARGUMENT (a required field
    missing, NaN or infinity, a number six decimals would change, too deep, a NUL
    character in any string, or a string over its length bound)."""
    structs = [doc["principal"]["attributes"], doc["action"]["attributes"],
               doc["resource"]["attributes"], doc["context"]]
    return (any(not _field(doc, p) for p in REQUIRED)
            or any(_bad_value(s, 1) for s in structs)
            or _has_nul(doc) or "\0" in constitutional_hash
            or _over_bounds(doc, structs, constitutional_hash))


def expected_code(doc: dict[str, Any], constitutional_hash: str) -> grpc.StatusCode:
    if malformed(doc, constitutional_hash):
        return grpc.StatusCode.INVALID_ARGUMENT
    if constitutional_hash != HASH:
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.OK


def may_allow(doc: dict[str, Any]) -> bool:
    """The constitution's necessary conditions for an ALLOW (policy/README.md)."""
    tenant = doc["tenant_id"]
    return bool(doc["principal"]["id"]) and tenant == doc["principal"]["tenant_id"] == \
        doc["resource"]["tenant_id"] != ""


def request_of(doc: dict[str, Any], constitutional_hash: str) -> pb.DecideRequest:
    return decide_request(doc, constitutional_hash=constitutional_hash)


# -- bytes ---------------------------------------------------------------------------------

VALID = decide_request(allow_input()).SerializeToString()


def varint(n: int) -> bytes:
    """A protobuf base-128 varint."""
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def string_field(number: int, raw: bytes) -> bytes:
    """A length-delimited field ``number`` holding ``raw`` (no UTF-8 check on the way)."""
    return varint(number << 3 | 2) + varint(len(raw)) + raw


def _invalid(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def deep_struct(depth: int) -> bytes:
    """A Struct nested ``depth`` levels, encoded by hand (past protobuf's own limits)."""
    struct = b""
    for _ in range(depth):
        value = string_field(5, struct)  # Value.struct_value
        struct = string_field(1, string_field(1, b"n") + string_field(2, value))  # fields entry
    return struct


deep_bodies = st.integers(MAX_DEPTH + 1, 3000).map(
    lambda depth: VALID + string_field(7, deep_struct(depth)))  # DecideRequest.context
"""Allowed requests but for a context nested past the limit: INVALID_ARGUMENT."""


invalid_utf8 = st.binary(min_size=1, max_size=32).filter(_invalid)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """The bytes of an allowed request, with bytes flipped, cut, or inserted."""
    body = bytearray(VALID)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(body)))
        kind = draw(st.sampled_from(["flip", "cut", "insert"]))
        if kind == "flip" and at < len(body):
            body[at] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del body[at:]
        else:
            body[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(body)


evaluate_inputs = st.one_of(
    json_values.map(lambda v: json.dumps(v, allow_nan=True)),
    st.text(max_size=50),
    st.integers(MAX_DEPTH + 1, 5000).map(lambda n: "[" * n + "]" * n),
    st.sampled_from(["NaN", "Infinity", "-Infinity", '{"a": NaN}', ""]),
    st.integers(0xD800, 0xDFFF).map(lambda c: f'{{"k": "\\u{c:04x}"}}'),  # lone surrogates
)
evaluate_paths = st.one_of(
    st.sampled_from(["acgs/constitution/decision", "data.acgs.constitution.decision",
                     "acgs/constitution", "", "/", "data", "acgs/constitution/no_rule"]),
    st.text(max_size=30),
)
