"""Every request string has a length bound: at the bound it is taken, one past it is refused.

Before the bounds, a Decide whose principal.id was ~8 KB was answered ALLOW and journaled,
and PostgreSQL then refused its audit row (index row size exceeds the btree maximum) on
every attempt: nothing after it was shipped.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from acgs import CONSTITUTIONAL_HASH
from acgs.adapters.rego_source import load_policy_dir
from acgs.adapters.regopy_engine import RegopyEngine
from acgs.config import Settings
from acgs.entrypoints import convert
from acgs.entrypoints.convert import StringLimits
from acgs.entrypoints.grpc_registry import Malformed, _safe_deserializer
from acgs.errors import ConfigurationError, InvalidRequest
from acgs.v1 import audit_pb2, escalations_pb2, policy_admin_pb2
from acgs.v1 import governance_pb2 as pb

from tests.client import allow_input, decide_request

LIMITS = StringLimits(id_chars=40, text_chars=100)
POLICY = Path(__file__).resolve().parents[2] / "policy"
WIDE = "\U0001d11e"  # 4 bytes in UTF-8: the worst case for an index entry


def _principal(**kw: Any) -> dict[str, Any]:
    return {"id": "agent-1", "roles": ["operator"], "tenant_id": "t1", "attributes": {}, **kw}


def _resource(**kw: Any) -> dict[str, Any]:
    return {"type": "document", "id": "d1", "tenant_id": "t1", "attributes": {}, **kw}


# field name in the error -> (bound, a request whose field holds the given string)
DECIDE_FIELDS: dict[str, tuple[int, Callable[[str], pb.DecideRequest]]] = {
    "tenant_id": (40, lambda s: decide_request(allow_input(tenant_id=s))),
    "principal.id": (40, lambda s: decide_request(allow_input(principal=_principal(id=s)))),
    "principal.roles": (40, lambda s: decide_request(
        allow_input(principal=_principal(roles=[s])))),
    "principal.tenant_id": (40, lambda s: decide_request(
        allow_input(principal=_principal(tenant_id=s)))),
    "action.type": (40, lambda s: decide_request(allow_input(action={"type": s}))),
    "resource.type": (40, lambda s: decide_request(allow_input(resource=_resource(type=s)))),
    "resource.id": (40, lambda s: decide_request(allow_input(resource=_resource(id=s)))),
    "resource.tenant_id": (40, lambda s: decide_request(
        allow_input(resource=_resource(tenant_id=s)))),
    "request_id": (40, lambda s: decide_request(allow_input(), request_id=s)),
    "constitutional_hash": (40, lambda s: decide_request(allow_input(), constitutional_hash=s)),
    "principal.attributes: a Struct key": (40, lambda s: decide_request(
        allow_input(principal=_principal(attributes={s: 1})))),
    "context: a Struct key": (40, lambda s: decide_request(allow_input(context={s: 1}))),
    "resource.attributes.note: a Struct string": (100, lambda s: decide_request(
        allow_input(resource=_resource(attributes={"note": s})))),
    "action.attributes.deep[0].x: a Struct string": (100, lambda s: decide_request(
        allow_input(action={"type": "read", "attributes": {"deep": [{"x": s}]}}))),
}


def decode(msg: pb.DecideRequest) -> convert.DecisionRequest:
    return convert.decision_request(msg, metadata_hash="", max_depth=8, limits=LIMITS)


@pytest.mark.parametrize("name", sorted(DECIDE_FIELDS))
def test_decide_strings_at_and_past_their_bound(name: str) -> None:
    bound, make = DECIDE_FIELDS[name]
    decode(make(WIDE * bound))  # at the bound: taken
    with pytest.raises(InvalidRequest) as info:
        decode(make(WIDE * (bound + 1)))
    assert str(info.value).startswith(name)
    assert f"{bound + 1} characters long, over the limit of {bound}" in str(info.value)


def test_the_default_bounds_refuse_an_8_kb_principal_id() -> None:
    msg = decide_request(allow_input(principal=_principal(id="p" * 8192)))
    with pytest.raises(InvalidRequest, match=r"principal\.id is 8192 characters"):
        convert.decision_request(msg, metadata_hash="", max_depth=8)


@pytest.mark.parametrize(("text", "what"), [
    ('{"principal": {"id": "%s"}}', "principal.id"),
    ('{"tenant_id": "%s"}', "tenant_id"),
    ('{"principal": {"tenant_id": "%s"}}', "principal.tenant_id"),
    ('{"%s": 1}', "a key"),
])
def test_evaluate_input_ids_at_and_past_their_bound(text: str, what: str) -> None:
    convert.parse_input_json(text % ("x" * 40), max_depth=8, limits=LIMITS)
    with pytest.raises(InvalidRequest, match=f"input_json: {what} is 41 characters"):
        convert.parse_input_json(text % ("x" * 41), max_depth=8, limits=LIMITS)


def test_evaluate_input_strings_are_bounded_as_text() -> None:
    convert.parse_input_json('{"note": "%s"}' % ("x" * 100), max_depth=8, limits=LIMITS)
    with pytest.raises(InvalidRequest, match="a string is 101 characters"):
        convert.parse_input_json('{"note": "%s"}' % ("x" * 101), max_depth=8, limits=LIMITS)


OTHER_FIELDS: list[tuple[Any, str, str, int]] = [
    # (message class, field path, how to set it, bound)
    (pb.EvaluateRequest, "path", "path", 40),
    (pb.EvaluateRequest, "constitutional_hash", "constitutional_hash", 40),
    (audit_pb2.GetDecisionRequest, "decision_id", "decision_id", 40),
    (audit_pb2.ListDecisionsRequest, "filter.principal_id", "filter.principal_id", 40),
    (audit_pb2.ListDecisionsRequest, "page_token", "page_token", 100),
    (audit_pb2.ListEventsRequest, "filter.actor", "filter.actor", 40),
    (audit_pb2.ListEventsRequest, "page_token", "page_token", 100),
    (audit_pb2.VerifyChainRequest, "instance_id", "instance_id", 40),
    (escalations_pb2.AcknowledgeEscalationRequest, "escalation_id", "escalation_id", 40),
    (escalations_pb2.AcknowledgeEscalationRequest, "comment", "comment", 100),
    (escalations_pb2.ResolveEscalationRequest, "comment", "comment", 100),
    (escalations_pb2.ListEscalationsRequest, "tenant_id", "tenant_id", 40),
    (policy_admin_pb2.ActivatePolicyVersionRequest, "revision", "revision", 40),
]


def _body(cls: Any, path: str, value: str) -> bytes:
    msg = cls()
    *parents, leaf = path.split(".")
    target = msg
    for part in parents:
        target = getattr(target, part)
    setattr(target, leaf, value)
    return bytes(msg.SerializeToString())


@pytest.mark.parametrize(("cls", "path", "bound"), [(c, p, b) for c, p, _, b in OTHER_FIELDS],
                         ids=[f"{c.__name__}.{p}" for c, p, _, _ in OTHER_FIELDS])
def test_other_methods_strings_at_and_past_their_bound(cls: Any, path: str, bound: int) -> None:
    deserialize = _safe_deserializer(cls, check_strings=True, limits=LIMITS)
    assert not isinstance(deserialize(_body(cls, path, WIDE * bound)), Malformed)
    refused = deserialize(_body(cls, path, WIDE * (bound + 1)))
    assert isinstance(refused, Malformed)
    assert refused.reason == f"{path} is {bound + 1} characters long, over the limit of {bound}"


def test_documents_are_bounded_by_the_message_size_only() -> None:
    deserialize = _safe_deserializer(policy_admin_pb2.CreatePolicyVersionRequest,
                                     check_strings=True, limits=LIMITS)
    ok = policy_admin_pb2.CreatePolicyVersionRequest(
        modules={"policy.rego": "x" * 1000}, data_json="{}" + " " * 1000)
    assert not isinstance(deserialize(ok.SerializeToString()), Malformed)
    long_name = policy_admin_pb2.CreatePolicyVersionRequest(modules={"m" * 41: "package x"})
    refused = deserialize(long_name.SerializeToString())
    assert isinstance(refused, Malformed) and refused.reason.startswith("modules key is 41")
    evaluate = _safe_deserializer(pb.EvaluateRequest, check_strings=True, limits=LIMITS)
    assert not isinstance(evaluate(pb.EvaluateRequest(input_json=" " * 1000)
                                   .SerializeToString()), Malformed)


def _roles(n: int) -> list[str]:
    return [f"role-{i}" for i in range(n)]


def test_principal_roles_at_and_past_their_count() -> None:
    """The constitution's denials name every role, which regopy evaluates in time growing
    with the square of their number, past any timeout (6,000 roles, 22 KB: 35 s)."""
    limits = StringLimits(id_chars=40, text_chars=100, roles=5)

    def decide(n: int) -> convert.DecisionRequest:
        msg = decide_request(allow_input(principal=_principal(roles=_roles(n))))
        return convert.decision_request(msg, metadata_hash="", max_depth=8, limits=limits)

    assert decide(5).policy_input["principal"]["roles"] == sorted(_roles(5))
    with pytest.raises(InvalidRequest, match=r"^principal\.roles has 6 entries, over the "
                                             r"limit of 5$"):
        decide(6)
    for shape in (list, lambda roles: dict.fromkeys(roles, True)):  # Rego iterates both
        def text(n: int, shape: Callable[[list[str]], Any] = shape) -> str:
            return json.dumps({"principal": {"roles": shape(_roles(n))}})
        convert.parse_input_json(text(5), max_depth=8, limits=limits)
        with pytest.raises(InvalidRequest, match=r"input_json: principal\.roles has 6"):
            convert.parse_input_json(text(6), max_depth=8, limits=limits)


def test_values_at_and_past_their_count() -> None:
    """A request's Structs share one budget of values; so does input_json."""
    limits = StringLimits(id_chars=40, text_chars=100, nodes=20)

    def decide(attributes: int, context: list[int]) -> convert.DecisionRequest:
        msg = decide_request(allow_input(
            action={"type": "read", "attributes": {f"k{i}": i for i in range(attributes)}},
            context={"items": context}))
        return convert.decision_request(msg, metadata_hash="", max_depth=8, limits=limits)

    decide(10, list(range(9)))  # 10 + 1 + 9 values: at the bound
    for attributes, context in ((11, list(range(9))), (10, list(range(10))), (21, [])):
        with pytest.raises(InvalidRequest, match=r"more than 20 values .*ACGS_MAX_INPUT_NODES"):
            decide(attributes, context)
    convert.parse_input_json(json.dumps({"a": list(range(19))}), max_depth=8, limits=limits)
    with pytest.raises(InvalidRequest, match="more than 20 values"):
        convert.parse_input_json(json.dumps({"a": list(range(20))}), max_depth=8,
                                 limits=limits)


def test_the_default_bounds_are_decided_within_the_timeout() -> None:
    """At the default bounds, the constitution's dearest path (every principle denies, each
    naming all 64 roles, each as long as a role it shows; its cost grows with the roles
    times the size of action.attributes, which takes the rest of the values) stays inside
    the 250 ms budget: an evaluation past it cannot be stopped."""
    settings = Settings()
    roles = [f"{i:02d}" + "r" * 62 for i in range(settings.max_roles)]
    attributes: dict[str, Any] = {"pii": True}
    attributes.update((f"k{i}", i) for i in range(settings.max_input_nodes - 2))  # +1
    msg = decide_request(allow_input(principal=_principal(roles=roles),
                                     action={"type": "write", "attributes": attributes},
                                     resource=_resource(attributes={"contains_pii": True,
                                                                    "created_by": "agent-1"})))
    with pytest.raises(InvalidRequest, match="values"):  # one value too many
        convert.decision_request(msg, metadata_hash="", max_depth=8)
    del attributes["k0"]
    policy_input = convert.decision_request(decide_request(allow_input(
        principal=_principal(roles=roles), action={"type": "write", "attributes": attributes},
        resource=_resource(attributes={"contains_pii": True, "created_by": "agent-1"}))),
        metadata_hash="", max_depth=8).policy_input

    async def decide() -> tuple[float, Any]:
        engine = RegopyEngine(workers=1, constitutional_hash=CONSTITUTIONAL_HASH)
        try:
            await engine.activate(load_policy_dir(POLICY, constitutional_hash=CONSTITUTIONAL_HASH))
            t0 = time.perf_counter()
            result = await engine.decide(policy_input, timeout_s=10)
            return time.perf_counter() - t0, result
        finally:
            engine.close()

    seconds, result = asyncio.run(decide())
    assert [v.principle for v in result.violations] == ["pii_purpose", "role_permission"]
    assert all(roles[-1] in v.message for v in result.violations)
    assert seconds < Settings().eval_timeout_ms / 1000, seconds


def test_settings() -> None:
    s = Settings.from_env({"ACGS_MAX_ID_CHARS": "600", "ACGS_MAX_TEXT_CHARS": "1000",
                           "ACGS_MAX_ROLES": "10"})
    assert (s.max_id_chars, s.max_text_chars, s.max_roles) == (600, 1000, 10)
    assert (Settings().max_id_chars, Settings().max_text_chars) == (256, 65536)
    assert (Settings().max_roles, Settings().max_input_nodes) == (64, 1000)
    with pytest.raises(ConfigurationError, match="ACGS_MAX_ROLES"):
        Settings.from_env({"ACGS_MAX_ROLES": "0"})
    with pytest.raises(ConfigurationError, match="ACGS_MAX_ID_CHARS=601 is above its maximum"):
        Settings.from_env({"ACGS_MAX_ID_CHARS": "601"})
