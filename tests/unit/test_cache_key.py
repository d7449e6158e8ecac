"""The decision cache key: equal for equal meaning, different for anything else."""

from __future__ import annotations

import random
from typing import Any

import pytest
from acgs.domain.cache_key import (
    KEY_VERSION,
    cacheable_effects,
    decision_cache_key,
    is_cacheable,
)
from acgs.domain.model import Effect, EngineResult, Severity, Violation, fail_safe_result
from acgs.errors import ConfigurationError, InvalidRequest
from acgs.service_layer.ports import PolicyInfo
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

POLICY = PolicyInfo(revision="rev-1", data_revision="data-1")
# Hypothesis's "explain" phase imports libcst, which warns on import; warnings are errors
# here, so a real failure would surface as an INTERNALERROR instead of its example.
PROPERTY = settings(
    max_examples=300, deadline=None, phases=[p for p in Phase if p is not Phase.explain]
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)
inputs = st.dictionaries(st.text(max_size=6), json_values, max_size=5)


def meaning(value: Any) -> Any:
    """A comparable form in which only what JSON means counts (not order, not 1 vs 1.0)."""
    if isinstance(value, bool) or value is None:
        return ("literal", value)
    if isinstance(value, int | float):
        return ("number", 0 if value == 0 else value)  # 0.0 == -0.0 == 0
    if isinstance(value, str):
        return ("string", value)
    if isinstance(value, list):
        return ("array", tuple(meaning(v) for v in value))
    return ("object", tuple(sorted((k, meaning(v)) for k, v in value.items())))


def respell(value: Any, rng: random.Random) -> Any:
    """Same meaning, other spelling: maps reordered, integral numbers as floats."""
    if isinstance(value, dict):
        items = [(k, respell(v, rng)) for k, v in value.items()]
        rng.shuffle(items)
        return dict(items)
    if isinstance(value, list):
        return [respell(v, rng) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def test_key_is_versioned_sha256() -> None:
    key = decision_cache_key(POLICY, {"action": "read"})
    prefix, _, hexdigest = key.rpartition(":")
    assert prefix == KEY_VERSION
    assert len(hexdigest) == 64 and int(hexdigest, 16) >= 0


def test_field_order_and_number_spelling_do_not_change_the_key() -> None:
    a = {"principal": {"id": "p", "tenant": "t"}, "priority": 1, "scores": [2, 0.5]}
    b = {"scores": [2.0, 0.5], "priority": 1.0, "principal": {"tenant": "t", "id": "p"}}
    assert decision_cache_key(POLICY, a) == decision_cache_key(POLICY, b)


@pytest.mark.parametrize(
    "other",
    [
        PolicyInfo(revision="rev-2", data_revision="data-1"),
        PolicyInfo(revision="rev-1", data_revision="data-2"),
        PolicyInfo(revision="rev-1data-1", data_revision=""),
    ],
)
def test_another_revision_gives_another_key(other: PolicyInfo) -> None:
    policy_input = {"action": "read"}
    assert decision_cache_key(POLICY, policy_input) != decision_cache_key(other, policy_input)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"x": 1}, {"x": True}),
        ({"x": 1}, {"x": "1"}),
        ({"x": None}, {}),
        ({"x": [1, 2]}, {"x": [2, 1]}),
        ({"x": 0.1}, {"x": 0.1000000001}),
        ({"a": "b,c"}, {"a,b": "c"}),
    ],
)
def test_near_misses_never_share_a_key(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert decision_cache_key(POLICY, a) != decision_cache_key(POLICY, b)


def test_input_json_cannot_carry_is_refused() -> None:
    with pytest.raises(InvalidRequest):
        decision_cache_key(POLICY, {"x": float("nan")})


@PROPERTY
@given(a=inputs, b=inputs)
def test_inputs_that_differ_anywhere_never_share_a_key(
    a: dict[str, Any], b: dict[str, Any]
) -> None:
    if meaning(a) != meaning(b):
        assert decision_cache_key(POLICY, a) != decision_cache_key(POLICY, b)


@PROPERTY
@given(a=inputs, path_choice=st.randoms(use_true_random=False), new_leaf=scalars)
def test_changing_one_leaf_changes_the_key(
    a: dict[str, Any], path_choice: random.Random, new_leaf: Any
) -> None:
    b = _replace_random_leaf(a, path_choice, new_leaf) if a else {"added": new_leaf}
    if meaning(a) != meaning(b):
        assert decision_cache_key(POLICY, a) != decision_cache_key(POLICY, b)


@PROPERTY
@given(a=inputs, rng=st.randoms(use_true_random=False))
def test_reordered_and_respelled_inputs_share_a_key(a: dict[str, Any], rng: random.Random) -> None:
    assert decision_cache_key(POLICY, a) == decision_cache_key(POLICY, respell(a, rng))


def _replace_random_leaf(value: Any, rng: random.Random, leaf: Any) -> Any:
    if isinstance(value, dict) and value:
        key = rng.choice(sorted(value))
        return {**value, key: _replace_random_leaf(value[key], rng, leaf)}
    if isinstance(value, list) and value:
        i = rng.randrange(len(value))
        return [*value[:i], _replace_random_leaf(value[i], rng, leaf), *value[i + 1 :]]
    return leaf


def test_cacheable_effects_refuses_escalate_and_unknown_names() -> None:
    assert cacheable_effects(["allow", "DENY"]) == {Effect.ALLOW, Effect.DENY}
    with pytest.raises(ConfigurationError):
        cacheable_effects(["ESCALATE"])
    with pytest.raises(ConfigurationError):
        cacheable_effects(["PERMIT"])


def test_only_configured_effects_and_never_fail_safe_results_are_cacheable() -> None:
    allow = EngineResult(effect=Effect.ALLOW, violations=(), policy_revision="r")
    escalate = EngineResult(effect=Effect.ESCALATE, violations=(), policy_revision="r")
    deny = EngineResult(
        effect=Effect.DENY,
        violations=(Violation("tenant_isolation", Severity.CRITICAL, "other tenant"),),
        policy_revision="r",
    )
    everything = frozenset(Effect)
    assert is_cacheable(allow, frozenset({Effect.ALLOW}))
    assert not is_cacheable(deny, frozenset({Effect.ALLOW}))
    assert is_cacheable(deny, frozenset({Effect.DENY}))
    assert not is_cacheable(escalate, everything)
    assert not is_cacheable(fail_safe_result("engine timed out", revision="r"), everything)
    audit = fail_safe_result("journal full", revision="r", principle="audit_unavailable")
    assert not is_cacheable(audit, everything)
