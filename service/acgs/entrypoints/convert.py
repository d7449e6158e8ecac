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


def struct_to_dict(struct: struct_pb2.Struct, *, max_depth: int, depth: int = 1) -> dict[str, Any]:
    """A Struct as plain JSON-like data; InvalidRequest when deeper than ``max_depth`` or when
    a key or string holds a NUL character."""
    if depth > max_depth:
        raise InvalidRequest(f"a Struct nests deeper than {max_depth} levels")
    return {checked_text(k, "a Struct key"): _value(v, max_depth, depth + 1)
            for k, v in struct.fields.items()}


def _value(v: struct_pb2.Value, max_depth: int, depth: int) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "string_value":
        return checked_text(v.string_value, "a Struct string")
    if kind == "number_value":
        n = v.number_value
        if math.isnan(n) or math.isinf(n):
            raise InvalidRequest("a Struct holds NaN or infinity, which JSON cannot carry")
        return int(n) if n.is_integer() and abs(n) < _MAX_SAFE_INT else n
    if kind == "bool_value":
        return v.bool_value
    if kind == "struct_value":
        return struct_to_dict(v.struct_value, max_depth=max_depth, depth=depth)
    if kind == "list_value":
        if depth > max_depth:
            raise InvalidRequest(f"a Struct nests deeper than {max_depth} levels")
        return [_value(x, max_depth, depth + 1) for x in v.list_value.values]
    return None  # null_value, or a Value with no kind set


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
            "attributes": struct_to_dict(p.attributes, max_depth=max_depth),
        },
        "action": {
            "type": _require(a.type, "action.type"),
            "attributes": struct_to_dict(a.attributes, max_depth=max_depth),
        },
        "resource": {
            "type": _require(r.type, "resource.type"),
            "id": checked_text(r.id, "resource.id"),
            "tenant_id": checked_text(r.tenant_id, "resource.tenant_id"),
            "attributes": struct_to_dict(r.attributes, max_depth=max_depth),
        },
        "context": struct_to_dict(msg.context, max_depth=max_depth),
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
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as err:
        raise InvalidRequest(f"input_json is not valid JSON: {err}") from err
    _check_depth(value, max_depth)
    if "\\u0000" in text:  # JSON can spell a NUL character only as this escape
        _check_nul(value)
    if "\\u" in text:  # only an escape can make a lone surrogate, which no engine can encode
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as err:
            raise InvalidRequest("input_json holds a lone UTF-16 surrogate (\\ud800-\\udfff)"
                                 ) from err
    where = _non_finite(value, "input_json")
    if where is not None:  # 1e400 parses as infinity: evaluated, it could not be audited
        raise InvalidRequest(f"{where[:200]}: a number beyond a 64-bit float, which JSON "
                             "cannot carry")
    return value


def _non_finite(value: Any, path: str) -> str | None:
    """The path of the first number in ``value`` that is not finite, else None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    items = (value.items() if isinstance(value, dict)
             else enumerate(value) if isinstance(value, list) else ())
    for k, v in items:
        found = _non_finite(v, f"{path}.{k}" if isinstance(k, str) else f"{path}[{k}]")
        if found is not None:
            return found
    return None


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
