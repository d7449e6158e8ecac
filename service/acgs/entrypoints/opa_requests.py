"""Decide requests drawn around every branch a policy can take, for the check against OPA
(:mod:`acgs.entrypoints.opa_diff`).

The vocabulary comes from the policy itself: every role and action its data names (and
which actions it lists under which role), numbers at and near every number of the data,
the attribute names its modules read, plus mistyped values and odd strings. ``choose``
picks one of a sequence: ``random.Random.choice`` (the CLI, and the tests with a seed
per request drawn by Hypothesis).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from google.protobuf import struct_pb2

from acgs.adapters.rego_source import PolicyBundle
from acgs.v1 import governance_pb2 as pb

Choose = Callable[[Sequence[Any]], Any]

_ODD = ("", " ", "x", "ADMIN", "admin ", "ünïcødé", "a'b", "a\"b", "a\\b", "\\u0041", "%v",
        "a\nb", "\t", "t1\u200b", "null", "true", "0", "-1", "1e9", "x" * 70, "[]", "{}",
        "😀", "a/b:c@d+e-f_g.h", "a\0b")
# Names read off a short local or input (aa.priority, ra.contains_pii, input.tenant_id):
# the attributes a policy looks at, without its package and built-in names.
_IDENT = re.compile(r"\b(?:[a-z]{1,3}|input)\.([a-z_][a-z0-9_]*)")


@dataclass(frozen=True)
class Vocabulary:
    """What requests are made of: the data's object keys (role names) and other strings
    (actions, purposes), its numbers and their neighbours, attribute names, odd strings."""

    names: tuple[str, ...]
    strings: tuple[str, ...]
    numbers: tuple[int | float, ...]
    inexact: tuple[float, ...]  # numbers six decimals would change: to be refused
    keys: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]  # a name and a string listed under it (role, action)


def vocabulary(bundle: PolicyBundle) -> Vocabulary:
    """Strings and numbers of ``bundle``'s data (with neighbours of each number) and the
    names its modules read after a dot (``action.attributes.priority``)."""
    names: set[str] = set()
    strings: set[str] = set()
    found: list[int | float] = []
    _walk(json.loads(bundle.data_json), names, strings, found)
    numbers: set[int | float] = {0, 1, -1, 0.5, 2**53, 2**63 - 1, 2**64, 1e300, -1e300}
    inexact: set[float] = {1e-9, 0.1 + 0.2}
    for n in found:
        # Neighbours in decimal, so 0.8 + 0.1 is 0.9, not 0.9000000000000001 (which the
        # conversion refuses). n ± 4e-7 and n ± 1e-9 are there to be refused (3.0000004:
        # six decimals would make it 3), now and then.
        exact = Decimal(repr(n))
        numbers.update(_number(exact + Decimal(d)) for d in (
            "0", "1", "-1", "0.5", "-0.5", "0.1", "-0.1", "0.000001", "-0.000001"))
        numbers.update((_number(exact * 10), _number(exact / 10), -n))
        inexact.update((n + 4e-7, n - 4e-7, n + 1e-9, n - 1e-9))
    # Each name as often as the policy reads it: priority (read 7 times by the
    # constitution) is drawn more often than purpose (twice).
    keys = Counter(m for name, src in bundle.modules if "test" not in name
                   for m in _IDENT.findall(src))
    return Vocabulary(names=tuple(sorted(names)), strings=tuple(sorted(strings)),
                      numbers=tuple(sorted(numbers, key=lambda x: (x, type(x).__name__))),
                      inexact=tuple(sorted(inexact)),
                      pairs=tuple(sorted(_pairs(json.loads(bundle.data_json)))),
                      keys=tuple(sorted(keys.elements())))


def _pairs(value: Any) -> set[tuple[str, str]]:
    """(key, s) for every string s in a list directly under an object at ``key``
    (roles.viewer.actions = ["read"] gives ("viewer", "read")): the pairs that decide."""
    found: set[tuple[str, str]] = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            if isinstance(inner, dict):
                found.update((key, s) for v in inner.values() if isinstance(v, list)
                             for s in v if isinstance(s, str))
            found |= _pairs(inner)
    return found


def _number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


def _walk(value: Any, names: set[str], strings: set[str], numbers: list[int | float]) -> None:
    if isinstance(value, str):
        strings.add(value)
    elif isinstance(value, bool):
        return
    elif isinstance(value, (int, float)):
        numbers.append(value)
    elif isinstance(value, dict):
        names.update(value)
        for v in value.values():
            _walk(v, names, strings, numbers)
    elif isinstance(value, list):
        for v in value:
            _walk(v, names, strings, numbers)


def _string(choose: Choose, vocab: Vocabulary) -> str:
    """Mostly a string of the data, sometimes a name or an odd one."""
    pool = choose((vocab.strings, vocab.strings, vocab.strings, vocab.names, _ODD))
    return str(choose(pool))


def random_request(choose: Choose, vocab: Vocabulary) -> dict[str, Any]:
    """A Decide request as a plain document (the shape ``tests/client`` sends)."""
    # Mostly well-formed, so that every branch past the conversion is reached; an empty
    # required field is refused by the conversion, which the outcome counts show.
    tenant = choose(("t1",) * 30 + ("t2", "", "a'b"))
    principal_id = choose(("agent-7",) * 30 + ("u'1", "", "a\\b"))

    def tenant_like() -> str:
        return str(choose((tenant,) * 20 + ("t2", "t2", "")))

    roles = [choose(choose((vocab.names,) * 5 + (vocab.strings, _ODD)))
             for _ in range(choose((0, 1, 1, 1, 2, 2, 3, 3)))]
    action_type = _string(choose, vocab)
    if vocab.pairs and choose((True, False)):  # half the time a role with its own action
        role, action_type = choose(vocab.pairs)
        roles.append(role)
    return {
        "tenant_id": tenant,
        "principal": {"id": principal_id, "roles": roles, "tenant_id": tenant_like(),
                      "attributes": _attributes(choose, vocab, principal_id, 1)},
        "action": {"type": action_type,
                   "attributes": choose((_numbers, _numbers, _attributes))(
                       choose, vocab, principal_id, 3)},
        "resource": {"type": "document", "id": choose(("d1", "", "d 2")),
                     "tenant_id": tenant_like(),
                     "attributes": _attributes(choose, vocab, principal_id, 2)},
        "context": _attributes(choose, vocab, principal_id, 1),
    }


def _attributes(choose: Choose, vocab: Vocabulary, principal_id: str, most: int
                ) -> dict[str, Any]:
    return {_key(choose, vocab): _value(choose, vocab, principal_id, 2)
            for _ in range(choose(range(most + 1)))}


def _numbers(choose: Choose, vocab: Vocabulary, _: str, most: int) -> dict[str, Any]:
    """Attributes that are all numbers: where ceilings and thresholds are decided."""
    return {_key(choose, vocab): _a_number(choose, vocab) for _ in range(choose(range(most + 1)))}


def _a_number(choose: Choose, vocab: Vocabulary) -> int | float:
    return choose(choose((vocab.numbers,) * 6 + (vocab.inexact,)))  # type: ignore[no-any-return]


def _key(choose: Choose, vocab: Vocabulary) -> str:
    return str(choose(choose((vocab.keys, vocab.keys, vocab.keys, _ODD))))


def _value(choose: Choose, vocab: Vocabulary, principal_id: str, depth: int) -> Any:
    kind = choose(("number", "number", "number", "string", "bool", "null", "principal",
                   "list", "object"))
    if kind == "number":
        return _a_number(choose, vocab)
    if kind == "string":
        return _string(choose, vocab)
    if kind == "bool":
        return choose((True, False))
    if kind == "principal":
        return principal_id
    if kind == "null" or depth == 0:
        return None
    if kind == "list":
        return [_value(choose, vocab, principal_id, depth - 1) for _ in range(choose(range(3)))]
    return {_key(choose, vocab): _value(choose, vocab, principal_id, depth - 1)
            for _ in range(choose(range(3)))}


def decide_message(doc: dict[str, Any]) -> pb.DecideRequest:
    """``doc`` as the DecideRequest a caller would send."""
    p, a, r = doc["principal"], doc["action"], doc["resource"]
    return pb.DecideRequest(
        tenant_id=doc["tenant_id"],
        principal=pb.Principal(id=p["id"], roles=p["roles"], tenant_id=p["tenant_id"],
                               attributes=_struct(p["attributes"])),
        action=pb.Action(type=a["type"], attributes=_struct(a["attributes"])),
        resource=pb.Resource(type=r["type"], id=r["id"], tenant_id=r["tenant_id"],
                             attributes=_struct(r["attributes"])),
        context=_struct(doc["context"]))


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(value)
    return s
