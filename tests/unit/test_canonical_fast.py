"""canonical.dumps takes orjson's bytes only where they are the reference's (json.dumps).

Audit records are hashed over these bytes and checked by others: one byte of difference
would break every chain verified by an older server or an outside verifier. So the fast
path is tested against the reference over generated JSON values, and at the edges where
the two encoders are known to differ.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from acgs.domain import canonical
from hypothesis import given, settings
from hypothesis import strategies as st


def reference(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


# Every code point but lone surrogates (which no protobuf string can carry).
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
SCALARS = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | TEXT)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(TEXT, inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=3000, deadline=None)
@given(VALUES)
def test_fast_path_gives_the_reference_bytes(value: Any) -> None:
    assert canonical.dumps(value) == reference(value)
    assert canonical.dumps_bytes(value) == reference(value).encode("utf-8")


@pytest.mark.parametrize("value", [
    1e-06, 1e-05, 1.5e-05, 0.0001, 0.00012, 1.5e16, 1e16 - 2, 9007199254740993.0, 1e22,
    1.7976931348623157e308, 5e-324, -0.0, 0.1, 2**53 + 0.0,
    2**63, -(2**63) - 1, 2**100,  # past 64 bits: orjson refuses, the reference writes them
    "1e5", "text 2E+3 in a string", "null", {"null": None},
    "\x00\x1f\x7f\u2028\u2029\ufeff\U0001f600", {"\U0001f600": 1, "\uffff": 2, "a": 3},
    {"b": {"d": [1, 2.5], "c": True}, "a": None}, [], {}, "", {1.5: "a float key"},
])
def test_known_differences_take_the_reference(value: Any) -> None:
    assert canonical.dumps(value) == reference(value)


def test_nan_and_infinity_are_refused_as_before() -> None:
    for bad in (math.nan, math.inf, -math.inf, {"a": [math.nan]}):
        with pytest.raises(ValueError):
            canonical.dumps(bad)


def test_types_json_has_none_for_are_refused_as_before() -> None:
    import datetime as dt
    from dataclasses import dataclass

    @dataclass
    class D:
        x: int

    for bad in (dt.datetime(2026, 1, 1), D(1), object()):
        with pytest.raises(TypeError):
            canonical.dumps(bad)


def test_str_and_int_subclasses_encode_as_the_reference_does() -> None:
    import enum

    class Color(str, enum.Enum):  # noqa: UP042 - the str mix-in is the point
        RED = "red"

    class Level(enum.IntEnum):
        HIGH = 3

    value = {"c": Color.RED, "l": Level.HIGH, "flag": True}
    assert canonical.dumps(value) == reference(value)


def test_lone_surrogates_behave_as_before() -> None:
    assert canonical.dumps("\ud800") == reference("\ud800")  # text, as json gives it
    with pytest.raises(UnicodeEncodeError):
        canonical.dumps_bytes("\ud800")  # not UTF-8: the journal could never write it


STRUCT_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**60), 2**60).map(float)
    | st.floats(allow_nan=False, allow_infinity=False, width=64)
    | st.decimals(places=6, min_value=-10**6, max_value=10**6).map(float) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=1000, deadline=None)
@given(st.dictionaries(TEXT, STRUCT_VALUES, max_size=5))
def test_a_converted_request_is_already_normalized(attributes: dict[str, Any]) -> None:
    """convert.decision_request marks its input normalized, so Decide skips normalize(): the
    canonical JSON must be what normalize() would have made of it."""
    from acgs.domain.cache_key import canonical_input
    from acgs.entrypoints import convert
    from acgs.errors import InvalidRequest
    from acgs.v1 import governance_pb2 as pb
    from google.protobuf import struct_pb2

    s = struct_pb2.Struct()
    s.update(attributes)
    msg = pb.DecideRequest(constitutional_hash="h", tenant_id="t",
                           principal=pb.Principal(id="p", roles=["b", "a"], tenant_id="t"),
                           action=pb.Action(type="read"), resource=pb.Resource(type="doc"),
                           context=s)
    try:
        request = convert.decision_request(msg, metadata_hash="", max_depth=32)
    except InvalidRequest:
        return  # refused (a float regopy could not carry, too deep): never encoded
    assert request.normalized
    assert (canonical_input(request.policy_input, normalized=True)
            == canonical_input(request.policy_input))


@settings(max_examples=500, deadline=None)
@given(text=TEXT, number=st.integers(0, 2**62), flag=st.booleans(),
       violations=st.lists(st.tuples(TEXT, TEXT), max_size=3))
def test_a_sealed_record_is_the_reference_encoding_of_its_body(
        text: str, number: int, flag: bool, violations: list[tuple[str, str]]) -> None:
    """A record's body is encoded with ``floats=False`` (no check of orjson's bytes): its
    hash and line must still be the reference encoding, whatever its strings hold."""
    import hashlib

    from acgs.domain.audit import AuditRecord
    from acgs.domain.model import Effect, Severity, Violation

    record = AuditRecord(
        decision_id=text, instance_id="i", seq=number, decided_at_us=number, kind="decision",
        caller_id=text, caller_role="agent", request_id=text, tenant_id=text,
        principal_id=text, request_json='{"input":{"x":1e-05,"y":null}}' + text,
        effect=Effect.ALLOW, violations=tuple(Violation(p, Severity.HIGH, m)
                                              for p, m in violations),
        policy_revision=text, constitutional_hash="h", cached=flag, latency_us=number,
        escalation_id=text, prev_hash="0" * 64, schema=1, data=text)
    body = record.body()
    assert not any(isinstance(v, float) for v in body.values())
    record_hash, line = record.seal_line()
    assert record_hash == hashlib.sha256(reference(body).encode()).hexdigest()
    assert record.computed_hash() == record_hash
    assert line == reference({**body, "seq": number, "record_hash": record_hash}).encode()



def test_the_fast_path_is_on_with_this_orjson_and_off_when_orjson_writes_otherwise(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert canonical._FAST_PATH  # the probes agree with the pinned orjson
    real = canonical.orjson.dumps

    def other(value: Any, option: int = 0) -> bytes:  # a release that escapes DEL, say
        return real(value, option=option).replace(b"\x7f", b"\\u007f")

    monkeypatch.setattr(canonical.orjson, "dumps", other)
    assert not canonical._fast_path_agrees()
