"""Translation between acgs.v1 protobuf messages and domain objects.

Struct values are converted by hand rather than with json_format: it is several
times faster, checks nesting depth as it goes, refuses NaN and infinities, and
writes integral doubles as integers so that 1 and 1.0 mean the same input.
"""

from __future__ import annotations

import json
import math
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from acgs.domain import numbers
from acgs.domain.model import Decision, DecisionRequest, Effect, Severity
from acgs.errors import InvalidRequest
from acgs.v1 import governance_pb2 as pb

_MAX_SAFE_INT = 2**53
_EFFECTS = {Effect.ALLOW: pb.ALLOW, Effect.DENY: pb.DENY, Effect.ESCALATE: pb.ESCALATE}
_SEVERITIES = {
    Severity.LOW: pb.LOW,
    Severity.MEDIUM: pb.MEDIUM,
    Severity.HIGH: pb.HIGH,
    Severity.CRITICAL: pb.CRITICAL,
}


NUL_MESSAGE = "strings may not contain NUL characters"


def checked_text(value: str, name: str) -> str:
    """``value``, or InvalidRequest if it holds a NUL character. PostgreSQL cannot store one in
    text (an audit record holding one could never be shipped) and regopy would cut the string
    there, so no request string may carry one."""
    if "\0" in value:
        raise InvalidRequest(f"{name}: {NUL_MESSAGE}")
    return value


def struct_to_dict(struct: struct_pb2.Struct, *, max_depth: int, depth: int = 1,
                   name: str = "a Struct") -> dict[str, Any]:
    """A Struct as plain JSON-like data; InvalidRequest when deeper than ``max_depth``, when
    a key or string holds a NUL character, or when a number would not reach the policy engine
    unchanged (``name``.key names it)."""
    if depth > max_depth:
        raise InvalidRequest(f"a Struct nests deeper than {max_depth} levels")
    return {checked_text(k, "a Struct key"): _value(v, max_depth, depth + 1, name, k)
            for k, v in struct.fields.items()}


def _value(v: struct_pb2.Value, max_depth: int, depth: int, name: str, key: object) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "string_value":
        return checked_text(v.string_value, "a Struct string")
    if kind == "number_value":
        n = v.number_value
        if math.isnan(n) or math.isinf(n):
            raise InvalidRequest("a Struct holds NaN or infinity, which JSON cannot carry")
        if n.is_integer():  # an integral double prints exactly, whatever its size
            return int(n) if abs(n) < _MAX_SAFE_INT else n
        if float(f"{n:f}") != n:  # numbers.float_problem, inline: this runs per number
            raise InvalidRequest(f"{_field(name, key)}: {numbers.float_problem(n)}")
        return n
    if kind == "bool_value":
        return v.bool_value
    if kind == "struct_value":
        return struct_to_dict(v.struct_value, max_depth=max_depth, depth=depth,
                              name=_field(name, key))
    if kind == "list_value":
        if depth > max_depth:
            raise InvalidRequest(f"a Struct nests deeper than {max_depth} levels")
        inner = _field(name, key)
        return [_value(x, max_depth, depth + 1, inner, i)
                for i, x in enumerate(v.list_value.values)]
    return None  # null_value, or a Value with no kind set


def _field(name: str, key: object) -> str:
    return f"{name}[{key}]" if isinstance(key, int) else f"{name}.{key}"


def _require(value: str, name: str) -> str:
    if not value:
        raise InvalidRequest(f"{name} is required")
    return checked_text(value, name)


def decision_request(
    msg: pb.DecideRequest, *, metadata_hash: str, max_depth: int
) -> DecisionRequest:
    """A DecideRequest as a domain request; InvalidRequest names the first bad field."""
    p, a, r = msg.principal, msg.action, msg.resource
    policy_input = {
        "tenant_id": _require(msg.tenant_id, "tenant_id"),
        "principal": {
            "id": _require(p.id, "principal.id"),
            "roles": sorted({checked_text(role, "principal.roles") for role in p.roles}),
            "tenant_id": _require(p.tenant_id, "principal.tenant_id"),
            "attributes": struct_to_dict(p.attributes, max_depth=max_depth,
                                        name="principal.attributes"),
        },
        "action": {
            "type": _require(a.type, "action.type"),
            "attributes": struct_to_dict(a.attributes, max_depth=max_depth,
                                        name="action.attributes"),
        },
        "resource": {
            "type": _require(r.type, "resource.type"),
            "id": checked_text(r.id, "resource.id"),
            "tenant_id": checked_text(r.tenant_id, "resource.tenant_id"),
            "attributes": struct_to_dict(r.attributes, max_depth=max_depth,
                                        name="resource.attributes"),
        },
        "context": struct_to_dict(msg.context, max_depth=max_depth, name="context"),
    }
    return DecisionRequest(
        constitutional_hash=checked_text(msg.constitutional_hash, "constitutional_hash")
        or metadata_hash,
        request_id=checked_text(msg.request_id, "request_id"),
        policy_input=policy_input,
    )


def parse_input_json(text: str, *, max_depth: int) -> Any:
    """Evaluate's input document; None for empty text; InvalidRequest for bad JSON."""
    if not text.strip():
        return None
    hooks = _NumberHooks()
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=hooks.float_,
                           parse_int=hooks.int_)
    except (ValueError, RecursionError) as err:
        raise InvalidRequest(f"input_json is not valid JSON: {err}") from err
    _check_depth(value, max_depth)
    if hooks.bad:
        _check_numbers(value, "input_json")
    if "\\u0000" in text:  # JSON can spell a NUL character only as this escape
        _check_nul(value)
    if "\\u" in text:  # only an escape can make a lone surrogate, which no engine can encode
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as err:
            raise InvalidRequest("input_json holds a lone UTF-16 surrogate (\\ud800-\\udfff)"
                                 ) from err
    return value


def _check_nul(value: Any) -> None:
    if isinstance(value, str):
        checked_text(value, "input_json")
    elif isinstance(value, dict):
        for k, v in value.items():
            checked_text(k, "input_json")
            _check_nul(v)
    elif isinstance(value, list):
        for v in value:
            _check_nul(v)


class _JsonFloat(float):
    """A float from input_json that the engine would change; it keeps its text to name."""

    text = ""


class _JsonInt(int):
    """An integer from input_json outside the engine's 64 bits."""


class _NumberHooks:
    """json.loads hooks that mark the numbers the engine would change (``bad`` then set),
    so that the document is walked for their names only when there is one."""

    def __init__(self) -> None:
        self.bad = False

    def float_(self, text: str) -> float:
        if numbers.text_problem(text) is None:
            return float(text)
        self.bad = True
        marked = _JsonFloat(text)
        marked.text = text
        return marked

    def int_(self, text: str) -> int:
        value = int(text)
        if numbers.int_problem(value) is None:
            return value
        self.bad = True
        return _JsonInt(value)


def _check_numbers(value: Any, where: str) -> None:
    """InvalidRequest naming the first number of ``value`` the engine would change."""
    if isinstance(value, _JsonFloat):
        raise InvalidRequest(f"{where}: {numbers.text_problem(value.text)}")
    if isinstance(value, _JsonInt):
        raise InvalidRequest(f"{where}: {numbers.int_problem(value)}")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_numbers(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_numbers(v, f"{where}[{i}]")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _check_depth(value: Any, max_depth: int, depth: int = 1) -> None:
    if depth > max_depth:
        raise InvalidRequest(f"input_json nests deeper than {max_depth} levels")
    children = (
        value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    )
    for child in children:
        _check_depth(child, max_depth, depth + 1)


def decision_to_proto(d: Decision) -> pb.Decision:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(d.decided_at_ns)
    return pb.Decision(
        decision_id=d.decision_id,
        effect=_EFFECTS[d.effect],
        violations=[
            pb.Violation(principle=v.principle, severity=_SEVERITIES[v.severity], message=v.message)
            for v in d.violations
        ],
        policy_revision=d.policy_revision,
        constitutional_hash=d.constitutional_hash,
        cached=d.cached,
        escalation_id=d.escalation_id,
        server_latency_us=d.latency_us,
        request_id=d.request_id,
        decided_at=ts,
    )
