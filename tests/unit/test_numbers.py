"""Numbers reach the engine as sent, or the request is refused naming the field.

rego-cpp keeps an input float as printf("%f") text (six decimals) and integers as 64 bits;
every number either survives that unchanged or is refused with InvalidRequest
(INVALID_ARGUMENT) naming where it is.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from acgs.domain import numbers
from acgs.entrypoints import convert
from acgs.errors import InvalidRequest
from hypothesis import given
from hypothesis import strategies as st

from tests.client import allow_input, decide_request

DEPTH = 16


def decide(**overrides: Any) -> dict[str, Any]:
    msg = decide_request(allow_input(**overrides))
    return convert.decision_request(msg, metadata_hash="", max_depth=DEPTH).policy_input


@pytest.mark.parametrize("x", [3.0000004, 0.7999999, 1e-9, 0.1 + 0.2, 2.0000001e-3])
def test_floats_six_decimals_would_change_are_named(x: float) -> None:
    assert numbers.float_problem(x) is not None
    with pytest.raises(InvalidRequest, match=r"^action\.attributes\.priority: .* would reach"):
        decide(action={"type": "read", "attributes": {"priority": x}})


@pytest.mark.parametrize("x", [3.0, 2.5, 0.8, 0.85, 0.000001, 1e300, 1e20, -7.25, 2.0**62])
def test_floats_six_decimals_keep_pass_unchanged(x: float) -> None:
    assert numbers.float_problem(x) is None
    got = decide(action={"type": "read", "attributes": {"priority": x}})
    assert got["action"]["attributes"]["priority"] == x


def test_nested_and_listed_numbers_are_named_by_their_path() -> None:
    with pytest.raises(InvalidRequest, match=r"^context\.a\.b\[2\]: 1e-09 "):
        decide(context={"a": {"b": [1, 2, 1e-9]}})
    with pytest.raises(InvalidRequest, match=r"^resource\.attributes\.score: "):
        decide(resource={"type": "d", "id": "1", "tenant_id": "t1",
                         "attributes": {"score": 0.7999999}})


@pytest.mark.parametrize(("text", "field"), [
    ('{"priority": 3.0000004}', "input_json.priority"),
    ('{"a": [0, {"b": 1e-9}]}', r"input_json.a\[1\].b"),
    ('{"n": 18446744073709551616}', "input_json.n"),
    ('{"n": -9223372036854775809}', "input_json.n"),
    ('{"p": 3.00000000000000000001}', "input_json.p"),  # Python would read 3.0; OPA would not
    ('[1e400]', r"input_json\[0\]"),
])
def test_input_json_numbers_the_engine_would_change_are_named(text: str, field: str) -> None:
    with pytest.raises(InvalidRequest, match=f"^{field}: "):
        convert.parse_input_json(text, max_depth=DEPTH)


@pytest.mark.parametrize("text", [
    '{"n": 9223372036854775807}', '{"n": -9223372036854775808}', '{"x": 0.1}', '{"x": 1.50}',
    '{"x": 1e300}', '{"x": 2.5E-3}', '{"x": -0.0}',
])
def test_input_json_numbers_the_engine_keeps_pass(text: str) -> None:
    assert convert.parse_input_json(text, max_depth=DEPTH) == json.loads(text)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_struct_floats_reach_the_engine_unchanged_or_are_refused(x: float) -> None:
    try:
        got = decide(context={"x": x})["context"]["x"]
    except InvalidRequest as err:
        assert float(f"{x:f}") != x, err
        return
    assert got == x
    assert float(f"{got:f}") == got  # what rego-cpp's regoInputFloat would keep
