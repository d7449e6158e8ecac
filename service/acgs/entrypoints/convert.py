"""Translation between acgs.v1 protobuf messages and domain objects.

Struct values are converted by hand rather than with json_format: it is several
times faster, checks nesting depth as it goes, refuses NaN and infinities, and
writes integral doubles as integers so that 1 and 1.0 mean the same input.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class StringLimits:
    """The longest strings a request may carry, in characters (Settings.max_id_chars etc.).

    ``id_chars`` bounds every identifier-like string (ids, tenants, roles, types, paths,
    hashes, Struct keys): several are indexed in PostgreSQL, whose btree entries hold at
    most 2704 bytes, and a record whose index entry does not fit can never be shipped.
    ``text_chars`` bounds free text (Struct string values, comments, page tokens).
    """

    id_chars: int = 256
    text_chars: int = 65536
    # Entries of principal.roles (ACGS_MAX_ROLES): the constitution's denials name every
    # role, and regopy's cost of that grows with the square of their number (an evaluation
    # cannot be interrupted: 1,000 roles held an engine thread for 0.5 s, 6,000 for 35 s).
    roles: int = 64
    # Values in the request's Structs, or in input_json (ACGS_MAX_INPUT_NODES): every one
    # becomes a node of the engine's input, built holding the GIL, and a large
    # action.attributes multiplies the constitution's cost per role (80,000 keys: 6.5 s).
    nodes: int = 1000


DEFAULT_LIMITS = StringLimits()


def checked_text(value: str, name: str, limit: int = DEFAULT_LIMITS.id_chars) -> str:
    """``value``, or InvalidRequest if it holds a NUL character or is longer than ``limit``.

    PostgreSQL cannot store NUL in text (an audit record holding one could never be
    shipped) and regopy would cut the string there; a string too long for its index
    (see :class:`StringLimits`) could not be shipped either.
    """
    if "\0" in value:
        raise InvalidRequest(f"{name}: {NUL_MESSAGE}")
    if len(value) > limit:
        raise InvalidRequest(f"{name} is {len(value)} characters long, over the limit of "
                             f"{limit}")
    return value


class _Budget:
    """Values a request may still hold (StringLimits.nodes), shared by its Structs."""

    __slots__ = ("left", "limit")

    def __init__(self, limit: int) -> None:
        self.left = self.limit = limit

    def take(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise InvalidRequest(f"the request holds more than {self.limit} values in its "
                                 "Structs or input_json, over the limit "
                                 "(ACGS_MAX_INPUT_NODES)")


def struct_to_dict(struct: struct_pb2.Struct, *, max_depth: int, depth: int = 1,
                   limits: StringLimits = DEFAULT_LIMITS, where: str = "a Struct",
                   budget: _Budget | None = None) -> dict[str, Any]:
    """A Struct as plain JSON-like data; InvalidRequest when deeper than ``max_depth``, when
    a key or string holds a NUL character or is too long, when a number would not reach
    the policy engine unchanged (``where``, and the key, name the field), or when it holds
    more values than ``budget`` has left (default: ``limits.nodes`` for this Struct)."""
    if depth > max_depth:
        raise InvalidRequest(f"a Struct nests deeper than {max_depth} levels")
    if budget is None:
        budget = _Budget(limits.nodes)
    out = {}
    key_limit = limits.id_chars
    fields = struct.fields
    budget.take(len(fields))
    for k in fields:  # not .items(): its iterator is Python code, twice the cost here
        if len(k) > key_limit or "\0" in k:  # the error's name is built only when it is needed
            checked_text(k, f"{where}: a Struct key", key_limit)
        out[k] = _value(fields[k], max_depth, depth + 1, limits, where, k, budget)
    return out


def _value(v: struct_pb2.Value, max_depth: int, depth: int, limits: StringLimits,
           where: str, key: object, budget: _Budget) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "string_value":
        s = v.string_value
        if len(s) > limits.text_chars or "\0" in s:
            checked_text(s, f"{_field(where, key)}: a Struct string", limits.text_chars)
        return s
    if kind == "number_value":
        n = v.number_value
        if math.isnan(n) or math.isinf(n):
            raise InvalidRequest("a Struct holds NaN or infinity, which JSON cannot carry")
        if n.is_integer():  # an integral double prints exactly, whatever its size
            return int(n) if abs(n) < _MAX_SAFE_INT else n
        if float(f"{n:f}") != n:  # numbers.float_problem, inline: this runs per number
            raise InvalidRequest(f"{_field(where, key)}: {numbers.float_problem(n)}")
        return n
    if kind == "bool_value":
        return v.bool_value
    if kind == "struct_value":
        return struct_to_dict(v.struct_value, max_depth=max_depth, depth=depth, limits=limits,
                              where=_field(where, key), budget=budget)
    if kind == "list_value":
        if depth > max_depth:
            raise InvalidRequest(f"a Struct nests deeper than {max_depth} levels")
        inner = _field(where, key)
        values = v.list_value.values
        budget.take(len(values))
        return [_value(x, max_depth, depth + 1, limits, inner, i, budget)
                for i, x in enumerate(values)]
    return None  # null_value, or a Value with no kind set


def _field(name: str, key: object) -> str:
    return f"{name}[{key}]" if isinstance(key, int) else f"{name}.{key}"


def _require(value: str, name: str, limit: int) -> str:
    if not value:
        raise InvalidRequest(f"{name} is required")
    return checked_text(value, name, limit)


def decision_request(
    msg: pb.DecideRequest, *, metadata_hash: str, max_depth: int,
    limits: StringLimits = DEFAULT_LIMITS,
) -> DecisionRequest:
    """A DecideRequest as a domain request; InvalidRequest names the first bad field."""
    p, a, r = msg.principal, msg.action, msg.resource
    n = limits.id_chars
    if len(p.roles) > limits.roles:
        raise InvalidRequest(f"principal.roles has {len(p.roles)} entries, over the limit of "
                             f"{limits.roles}")
    budget = _Budget(limits.nodes)  # shared by the request's four Structs
    policy_input = {
        "tenant_id": _require(msg.tenant_id, "tenant_id", n),
        "principal": {
            "id": _require(p.id, "principal.id", n),
            "roles": sorted({checked_text(role, "principal.roles", n) for role in p.roles}),
            "tenant_id": _require(p.tenant_id, "principal.tenant_id", n),
            "attributes": struct_to_dict(p.attributes, max_depth=max_depth, limits=limits,
                                         where="principal.attributes", budget=budget),
        },
        "action": {
            "type": _require(a.type, "action.type", n),
            "attributes": struct_to_dict(a.attributes, max_depth=max_depth, limits=limits,
                                         where="action.attributes", budget=budget),
        },
        "resource": {
            "type": _require(r.type, "resource.type", n),
            "id": checked_text(r.id, "resource.id", n),
            "tenant_id": checked_text(r.tenant_id, "resource.tenant_id", n),
            "attributes": struct_to_dict(r.attributes, max_depth=max_depth, limits=limits,
                                         where="resource.attributes", budget=budget),
        },
        "context": struct_to_dict(msg.context, max_depth=max_depth, limits=limits,
                                  where="context", budget=budget),
    }
    return DecisionRequest(
        constitutional_hash=checked_text(msg.constitutional_hash, "constitutional_hash", n)
        or metadata_hash,
        request_id=checked_text(msg.request_id, "request_id", n),
        policy_input=policy_input,
        normalized=True,  # struct_to_dict refuses NaN, bounds depth, makes integral floats ints
    )


def parse_input_json(text: str, *, max_depth: int,
                     limits: StringLimits = DEFAULT_LIMITS) -> Any:
    """Evaluate's input document; None for empty text; InvalidRequest for bad JSON, or for
    a key or string longer than ``limits`` (the ids the audit record indexes: id_chars)."""
    if not text.strip():
        return None
    hooks = _NumberHooks()
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=hooks.float_,
                           parse_int=hooks.int_)
    except (ValueError, RecursionError) as err:
        raise InvalidRequest(f"input_json is not valid JSON: {err}") from err
    _check_value(value, max_depth, limits)
    if isinstance(value, dict):
        _check_indexed(value, limits.id_chars, limits.roles)
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


def _check_indexed(doc: dict[str, Any], limit: int, max_roles: int) -> None:
    """The input's strings the audit record keeps in indexed columns (see describe_request),
    and the number of principal.roles (StringLimits.roles)."""
    principal = doc.get("principal")
    principal = principal if isinstance(principal, dict) else {}
    for name, value in (("tenant_id", doc.get("tenant_id")), ("principal.id", principal.get("id")),
                        ("principal.tenant_id", principal.get("tenant_id"))):
        if isinstance(value, str) and len(value) > limit:
            raise InvalidRequest(f"input_json: {name} is {len(value)} characters long, over "
                                 f"the limit of {limit}")
    roles = principal.get("roles")
    if isinstance(roles, (list, dict)) and len(roles) > max_roles:
        raise InvalidRequest(f"input_json: principal.roles has {len(roles)} entries, over the "
                             f"limit of {max_roles}")


def _check_nul(value: Any) -> None:
    if isinstance(value, str):
        checked_text(value, "input_json", len(value))
    elif isinstance(value, dict):
        for k, v in value.items():
            checked_text(k, "input_json", len(k))
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


def _check_value(value: Any, max_depth: int, limits: StringLimits, depth: int = 1,
                 budget: _Budget | None = None) -> None:
    """Depth, number of values, key and string lengths of a parsed input_json, in one walk."""
    if depth > max_depth:
        raise InvalidRequest(f"input_json nests deeper than {max_depth} levels")
    if budget is None:
        budget = _Budget(limits.nodes)
    if isinstance(value, dict):
        budget.take(len(value))
        for key, child in value.items():
            if len(key) > limits.id_chars:
                raise InvalidRequest(f"input_json: a key is {len(key)} characters long, over "
                                     f"the limit of {limits.id_chars}")
            _check_value(child, max_depth, limits, depth + 1, budget)
    elif isinstance(value, list):
        budget.take(len(value))
        for child in value:
            _check_value(child, max_depth, limits, depth + 1, budget)
    elif isinstance(value, str) and len(value) > limits.text_chars:
        raise InvalidRequest(f"input_json: a string is {len(value)} characters long, over the "
                             f"limit of {limits.text_chars}")


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
        replayed=d.replayed,
    )
