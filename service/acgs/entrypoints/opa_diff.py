"""Decide's answers against OPA's own on the same policy, data and input.

OPA's Go engine runs in-process through the ``opa_bindings`` package (PyPI
``opa-golib-python-bindings``, installed for tests only: see README, "Differential
test against OPA"). Each generated request goes the way Decide takes it: protobuf
message, conversion (``convert.decision_request``: a refusal is INVALID_ARGUMENT),
then regopy through :class:`RegopyEngine` (an engine error is Decide's fail-safe
DENY). OPA evaluates the converted input document. An answer is fine when it equals
OPA's (effect and violations), is a fail-safe DENY or a refusal; anything else is a
divergence, and one more permissive than OPA's (ALLOW over ESCALATE over DENY) is the
kind that must never ship.

Requests are drawn around every branch the policy can take: every role and action the
data names, numbers at and near every number of the data, attribute names the policy
reads, missing and mistyped fields, odd strings. ``choose`` picks one of a sequence:
``random.Random.choice`` for the CLI, a Hypothesis draw in the tests (so that a
failure shrinks).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

from google.protobuf import struct_pb2

from acgs.adapters.rego_source import PolicyBundle
from acgs.adapters.regopy_engine import RegopyEngine, parse_decision
from acgs.domain.model import Effect, EngineResult
from acgs.entrypoints import convert
from acgs.errors import AcgsError, InvalidRequest
from acgs.v1 import governance_pb2 as pb

T = TypeVar("T")
Choose = Callable[[Sequence[Any]], Any]

MISSING_PACKAGE = ("OPA's engine is not installed here: `python3 -m pip install --no-deps "
                   "--ignore-requires-python opa-golib-python-bindings==0.4.4`")
_RANK = {Effect.DENY: 0, Effect.ESCALATE: 1, Effect.ALLOW: 2}
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


@dataclass
class Report:
    """Counts of outcomes and effects, with the first divergences as examples."""

    outcomes: Counter[str] = field(default_factory=Counter)
    effects: Counter[str] = field(default_factory=Counter)  # "service/opa" effect pairs
    divergences: list[str] = field(default_factory=list)

    def add(self, other: Report) -> None:
        self.outcomes.update(other.outcomes)
        self.effects.update(other.effects)
        self.divergences.extend(other.divergences[:20 - len(self.divergences)])

    @property
    def ok(self) -> bool:
        return self.outcomes["MORE PERMISSIVE"] == 0 and self.outcomes["DIFFERENT"] == 0

    def summary(self) -> str:
        order = ("agree", "fail-safe", "refused", "OPA undecided", "DIFFERENT",
                 "MORE PERMISSIVE")
        counts = ", ".join(f"{k} {self.outcomes[k]}" for k in order)
        by_effect = ", ".join(f"{k} {v}" for k, v in sorted(self.effects.items()))
        return (f"{sum(self.outcomes.values())} inputs: {counts}\n"
                f"by effect (service/OPA): {by_effect}")


class OpaDecider:
    """``bundle``'s decision rule on OPA (raises ImportError without opa_bindings)."""

    def __init__(self, bundle: PolicyBundle) -> None:
        from opa_bindings import OpaEngine  # optional: installed for tests only

        self._engine = OpaEngine()
        for name, source in bundle.modules:
            self._engine.add_policy(name, source)
        self._engine.add_data(json.loads(bundle.data_json))
        self._path = bundle.decision.replace("/", ".")
        self._revision = bundle.revision

    def decide(self, policy_input: Mapping[str, Any]) -> EngineResult | None:
        """OPA's decision, or None when OPA has none (error, undefined, malformed)."""
        from opa_bindings import OpaError

        try:
            value = self._engine.eval_document(self._path, policy_input)
            return parse_decision(value, revision=self._revision)
        except (OpaError, AcgsError):
            return None

    def close(self) -> None:
        self._engine.close()


class Differential:
    """Decides batches of requests as the service does and as OPA does, adding the outcomes
    to ``report``. Raises ImportError when opa_bindings is not installed."""

    def __init__(self, bundle: PolicyBundle, *, max_depth: int = 16) -> None:
        self.report = Report()
        self._opa = OpaDecider(bundle)
        self._max_depth = max_depth
        self._runner = asyncio.Runner()
        self._engine = RegopyEngine(workers=1, constitutional_hash=bundle.constitutional_hash)
        self._runner.run(self._engine.activate(bundle))

    def check(self, docs: Iterable[dict[str, Any]]) -> Report:
        """The outcomes of ``docs`` alone (also added to ``self.report``)."""
        batch = Report()
        requests: list[tuple[dict[str, Any], Mapping[str, Any]]] = []
        for doc in docs:
            try:
                converted = convert.decision_request(decide_message(doc), metadata_hash="",
                                                     max_depth=self._max_depth)
            except InvalidRequest:
                batch.outcomes["refused"] += 1
                continue
            requests.append((doc, converted.policy_input))
        inputs = [i for _, i in requests]
        answers = self._runner.run(
            self._engine.decide_many(inputs, timeout_s=max(30.0, len(inputs) * 0.05)))
        for (doc, policy_input), answer in zip(requests, answers, strict=True):
            _classify(batch, doc, answer, self._opa.decide(policy_input))
        self.report.add(batch)
        return batch

    def close(self) -> None:
        self._engine.close()
        self._runner.close()
        self._opa.close()


def _classify(report: Report, doc: dict[str, Any], service: EngineResult | Exception,
              opa: EngineResult | None) -> None:
    theirs = opa.effect.value if opa else "none"
    if isinstance(service, Exception):  # Decide answers a fail-safe DENY
        report.outcomes["fail-safe"] += 1
        report.effects[f"fail-safe DENY/{theirs}"] += 1
        return
    report.effects[f"{service.effect.value}/{theirs}"] += 1
    if opa is not None and (service.effect, service.violations) == (opa.effect, opa.violations):
        report.outcomes["agree"] += 1
        return
    if opa is None and service.effect is Effect.DENY:  # as strict as Decide's fail-safe
        report.outcomes["OPA undecided"] += 1
        return
    permissive = _RANK[service.effect] > (_RANK[opa.effect] if opa else 0)
    report.outcomes["MORE PERMISSIVE" if permissive else "DIFFERENT"] += 1
    if len(report.divergences) < 20:
        report.divergences.append(
            f"service {service.effect.value} {_names(service)} / OPA {theirs} "
            f"{_names(opa) if opa else ''} for {json.dumps(doc)[:600]}")


def _names(result: EngineResult) -> list[str]:
    return [f"{v.principle}: {v.message}" for v in result.violations]
