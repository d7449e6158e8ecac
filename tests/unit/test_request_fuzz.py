"""Fuzzing request decoding in-process, for volume: wire bytes → message → domain request.

Every input either becomes a request the engine can take (canonical JSON
encodes it, the cache key is computable) or is refused with InvalidRequest;
nothing else escapes (which the server would answer with INTERNAL).
10,000 structured inputs under CI=true, fewer locally.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from acgs.domain import canonical
from acgs.entrypoints import convert
from acgs.entrypoints.grpc_registry import Malformed, _safe_deserializer
from acgs.errors import InvalidRequest
from acgs.v1 import governance_pb2 as pb
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz_support import (
    MAX_DEPTH,
    decide_docs,
    deep_bodies,
    evaluate_inputs,
    fuzz,
    malformed,
    mutated,
    request_of,
)


@pytest.fixture
def tally(capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
          ) -> Iterator[Callable[[], None]]:
    """Counts inputs; prints how many the test tried (past pytest's capture)."""
    count = [0]
    start = time.monotonic()

    def tick() -> None:
        count[0] += 1

    yield tick
    with capsys.disabled():
        print(f"\n{request.node.name}: {count[0]} inputs in {time.monotonic() - start:.1f} s")


def decode(body: bytes) -> convert.DecisionRequest | None:
    """What the server does with a Decide body; None when it refuses it as malformed."""
    message = _safe_deserializer(pb.DecideRequest, check_strings=False)(body)  # as for Decide
    if isinstance(message, Malformed):
        return None
    try:
        return convert.decision_request(message, metadata_hash="", max_depth=MAX_DEPTH)
    except InvalidRequest:
        return None


def test_structured_requests(tally: Callable[[], None]) -> None:
    @fuzz(ci=10_000, local=500)
    @given(decide_docs())
    def check(case: tuple[dict[str, Any], str]) -> None:
        tally()
        doc, constitutional_hash = case
        decoded = decode(request_of(doc, constitutional_hash).SerializeToString())
        assert (decoded is None) == malformed(doc, constitutional_hash)
        if decoded is not None:
            assert decoded.constitutional_hash == constitutional_hash
            assert canonical.dumps(decoded.policy_input)  # what the cache key and audit need

    check()


def test_random_and_mutated_bytes(tally: Callable[[], None]) -> None:
    @fuzz(ci=3_000, local=300)
    @given(st.one_of(st.binary(max_size=1024), mutated()))
    def check(body: bytes) -> None:
        tally()
        decoded = decode(body)
        if decoded is not None:
            canonical.dumps(decoded.policy_input)

    check()


def test_deep_nesting_is_refused(tally: Callable[[], None]) -> None:
    @fuzz(ci=300, local=30)
    @given(deep_bodies)
    def check(body: bytes) -> None:
        tally()
        assert decode(body) is None

    check()


def test_evaluate_input_json(tally: Callable[[], None]) -> None:
    @fuzz(ci=2_000, local=300)
    @given(evaluate_inputs)
    def check(text: str) -> None:
        tally()
        try:
            value = convert.parse_input_json(text, max_depth=MAX_DEPTH)
        except InvalidRequest:
            return
        canonical.dumps({"input": value})
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # what the engine is given

    check()
