"""The GIL-holding input builder and output reader answer exactly as regopy's own."""

from __future__ import annotations

from typing import Any

import pytest
import regopy
from acgs.adapters.regopy_calls import build_input, query_entrypoint
from hypothesis import given, settings
from hypothesis import strategies as st

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
    # Floats the engine keeps (six decimals); the others are refused, tested below.
    st.floats(allow_nan=False, allow_infinity=False, width=64).filter(
        lambda x: float(f"{x:f}") == x),
    st.decimals(places=6, allow_nan=False, allow_infinity=False, min_value=-10**9,
                max_value=10**9).map(float),
    # Printable text only: regopy 1.5 writes control characters, quotes and backslashes into
    # its output unescaped (for either builder), so they could not be compared here.
    st.text(alphabet=st.characters(blacklist_characters="\\\"",
                                   blacklist_categories=("Cc", "Cs")), max_size=20),
)
_documents = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(st.text(alphabet="abcxyz_", max_size=6), inner,
                                            max_size=5)),
    max_leaves=30,
)


def _echo(value: Any) -> str:
    interp = regopy.Interpreter()
    interp.set_input(value)
    return str(interp.query("input"))


@settings(max_examples=300, deadline=None)
@given(_documents)
def test_the_same_document_as_regopy(doc: Any) -> None:
    assert _echo(build_input(doc)) == _echo(regopy.Input(doc))


@pytest.mark.parametrize("bad", [
    "admin\0x", {"k\0": 1}, {1: "x"}, {"s": {1, 2}}, 2**63, -(2**63) - 1, object(), b"bytes",
    3.0000004, 0.7999999, 1e-9, -2.0000001, float("inf"), float("-inf"), float("nan"),
])
def test_refuses_what_it_cannot_pass_faithfully(bad: Any) -> None:
    with pytest.raises(ValueError):
        build_input({"v": bad})


def test_query_reads_values_undefined_and_errors() -> None:
    interp = regopy.Interpreter()
    interp.strict_built_in_errors = True
    interp.add_module("p.rego", "package p\nimport rego.v1\nyes := input.v\n"
                      "no := false\nmaybe if input.nope\nboom := 1 / input.zero\n")
    bundle = interp.build(None, ["p/yes", "p/no", "p/maybe", "p/boom"])
    interp.set_input(build_input({"v": [1, "two", None], "zero": 0}))
    assert query_entrypoint(interp, bundle, "p/yes").results[0].expressions == [[1, "two", None]]
    assert query_entrypoint(interp, bundle, "p/no").results[0].expressions == [False]
    assert query_entrypoint(interp, bundle, "p/maybe").results[0].expressions == []
    assert not query_entrypoint(interp, bundle, "p/boom").ok()


@pytest.mark.parametrize("value", [3.0000004, 0.7999999, 1e-9, 0.1 + 0.2])
def test_a_float_six_decimals_would_change_never_reaches_the_policy(value: float) -> None:
    """rego-cpp keeps an input float as printf("%f") text: 3.0000004 would be compared as 3
    (an analyst at ceiling 3 allowed). The builder refuses it instead."""
    interp = regopy.Interpreter()
    interp.set_input(regopy.Input({"v": value}))  # regopy's own builder: the number changes
    assert interp.query("x := input.v").results[0].bindings["x"] != value
    with pytest.raises(ValueError, match="would reach the policy engine as"):
        build_input({"v": value})


@pytest.mark.parametrize("value", [3.0, 2.5, 0.85, 0.000001, 1e300, -1e22, 123456789.125, 2.0**62])
def test_floats_six_decimals_keep_reach_the_policy_as_sent(value: float) -> None:
    interp = regopy.Interpreter()
    interp.set_input(build_input({"v": value}))
    assert interp.query("x := input.v").results[0].bindings["x"] == value
