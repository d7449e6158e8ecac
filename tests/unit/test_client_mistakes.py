"""Client mistakes that used to surface as INTERNAL or UNAVAILABLE are InvalidRequest naming
the field: timestamps outside years 1-9999, page tokens of any shape, numbers JSON cannot
carry; and ``retry-after-ms`` is rounded up, never 0 (issue 16, points 4 and 6)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from typing import Any

import grpc
import pytest
from acgs.adapters import pg_audit_queries, pg_escalations
from acgs.domain.model import Caller
from acgs.domain.rate_limit import Rate, RateLimiter
from acgs.entrypoints import timestamps
from acgs.entrypoints.audit_servicer import filter_from_proto
from acgs.entrypoints.convert import parse_input_json
from acgs.entrypoints.escalation_convert import filter_from_proto as escalation_filter
from acgs.entrypoints.status import abort_with
from acgs.errors import InvalidRequest, LimitExceeded
from acgs.v1 import audit_pb2, escalations_pb2
from google.protobuf import timestamp_pb2
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz_support import fuzz

BAD_TIMES = [(10**12, 0), (-62_135_596_801, 0), (253_402_300_800, 0), (0, -1),
             (0, 1_000_000_000), (2**63 - 1, 0), (-(2**63), 0), (0, -(2**31))]


@pytest.mark.parametrize(("seconds", "nanos"), BAD_TIMES)
def test_a_time_outside_years_1_to_9999_is_invalid_naming_the_field(seconds: int,
                                                                     nanos: int) -> None:
    ts = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
    with pytest.raises(InvalidRequest, match=r"filter\.since"):
        filter_from_proto(audit_pb2.DecisionFilter(since=ts))
    with pytest.raises(InvalidRequest, match=r"filter\.until"):
        filter_from_proto(audit_pb2.DecisionFilter(until=ts))
    with pytest.raises(InvalidRequest, match=r"^since"):
        escalation_filter(escalations_pb2.ListEscalationsRequest(since=ts))


def test_the_first_and_last_moments_are_fine() -> None:
    first = timestamp_pb2.Timestamp(seconds=timestamps.MIN_SECONDS)
    last = timestamp_pb2.Timestamp(seconds=timestamps.MAX_SECONDS, nanos=999_999_999)
    f = filter_from_proto(audit_pb2.DecisionFilter(since=first, until=last))
    assert f.since_us == timestamps.MIN_SECONDS * 10**6
    e = escalation_filter(escalations_pb2.ListEscalationsRequest(since=first, until=last))
    assert e.since is not None and e.since.year == 1
    assert e.until is not None and e.until.year == 9999


def b64(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).decode()


BAD_TOKENS = [
    "x", "!!!!", "é", "\x00", "a" * 5000, b64(b"\xff\xfe"), b64(b"[" * 10_000), b64({}),
    b64([]), b64([1, 2]), b64([1, "a", 2, 3]), b64(["2020-01-01T00:00:00+00:00", 5]),
    b64([True, "a", 1]), b64([1.5, "a", 1]), b64([1, "a", 2**63]), b64([10**20, "a", 1]),
    b64([1, "a\u0000", 1]), b64([1, None, 1]), b64(["2020-01-01T00:00:00", "not-a-uuid"]),
    b64(["2020-01-01T00:00:00", "00000000-0000-0000-0000-000000000000"]),  # naive time
    b64(["yesterday", "00000000-0000-0000-0000-000000000000"]), b64([{"a": 1}, [1]]),
    b64(["2020-01-01T00:00:00+00:00", {"hex": 1}]), b64(["2020-01-01T00:00:00+00:00", 12]),
    # a lone surrogate: valid JSON, but psycopg cannot encode it (was INTERNAL)
    "WzAsIlx1ZDgwMCIsMV0=", b64(["2020-01-01T00:00:00+00:00", "\ud800"]),
]


@pytest.mark.parametrize("token", BAD_TOKENS)
def test_a_malformed_page_token_is_invalid(token: str) -> None:
    for decode in (pg_audit_queries.decode_cursor, pg_escalations._decode):
        with pytest.raises(InvalidRequest, match="page_token"):
            decode(token)


@fuzz(ci=2000, local=500)
@given(st.one_of(st.text(max_size=60), st.binary(max_size=60).map(b64),
                 st.recursive(st.one_of(st.none(), st.booleans(), st.integers(),
                                        st.floats(), st.text(max_size=8)),
                              lambda inner: st.lists(inner, max_size=4), max_leaves=8).map(b64)))
def test_any_page_token_decodes_or_is_invalid(token: str) -> None:
    for decode in (pg_audit_queries.decode_cursor, pg_escalations._decode):
        with contextlib.suppress(InvalidRequest):
            decode(token)


def test_our_own_page_tokens_still_decode() -> None:
    at, instance, seq = pg_audit_queries.decode_cursor(b64([1_700_000_000_000_000, "s1", 7]))
    assert (at.year, instance, seq) == (2023, "s1", 7)
    created, key = pg_escalations._decode(
        b64(["2026-01-01T00:00:00+00:00", "00000000-0000-0000-0000-000000000001"]))
    assert created.year == 2026 and key.int == 1


@pytest.mark.parametrize(("text", "path"), [
    ('{"a": [1, {"b": 1e400}]}', "input_json.a[1].b"), ("-1e999", "input_json"),
    ('{"x": 1' + "0" * 400 + '.5}', "input_json.x"), ('[0, 2e308]', "input_json[1]"),
])
def test_a_number_beyond_a_double_is_invalid_naming_its_path(text: str, path: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_input_json(text, max_depth=32)
    assert str(info.value).startswith(f"{path}: ")


def test_finite_numbers_pass() -> None:
    # The largest double passes; a subnormal like -5e-324 is refused, but for its precision
    # (see tests/unit/test_numbers.py), not as beyond a double.
    assert parse_input_json('{"a": 1.7976931348623157e308, "b": -0.5}', max_depth=32) == {
        "a": 1.7976931348623157e308, "b": -0.5}


@pytest.mark.parametrize(("wait_s", "ms"), [(0.0, 1), (1e-9, 1), (0.0004, 1), (0.001, 1),
                                            (0.0011, 2), (0.1, 100), (2.5, 2500)])
def test_retry_after_ms_is_rounded_up_and_at_least_1(wait_s: float, ms: int) -> None:
    assert LimitExceeded("x", retry_after_s=wait_s).retry_after_ms == ms


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self) -> None:
        self.trailers: tuple[tuple[str, str], ...] = ()

    def set_trailing_metadata(self, trailers: tuple[tuple[str, str], ...]) -> None:
        self.trailers = trailers

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


def test_a_nearly_full_bucket_asks_for_at_least_1_ms() -> None:
    now = [0.0]
    limiter = RateLimiter(rates={"agent": Rate(per_s=1000, burst=1)}, clock=lambda: now[0])
    caller = Caller("a", "agent")
    limiter.check(caller)
    now[0] = 0.0009995  # 0.9995 of a call back: 0.5 µs to wait, which truncated to 0 ms
    with pytest.raises(LimitExceeded) as info:
        limiter.check(caller)
    assert "retry in 1 ms" in str(info.value)
    context = FakeContext()
    with pytest.raises(Aborted):
        asyncio.run(abort_with(context, info.value))  # type: ignore[arg-type]
    assert context.trailers == (("retry-after-ms", "1"),)
