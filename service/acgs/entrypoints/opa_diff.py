"""Decide's answers against OPA's own on the same policy, data and input.

OPA's Go engine runs in-process through the ``opa_bindings`` package (PyPI
``opa-golib-python-bindings``, installed for tests only: see README, "Checked against
OPA"). Each request (:mod:`acgs.entrypoints.opa_requests`) goes the way Decide takes it:
protobuf message, conversion (``convert.decision_request``: a refusal is
INVALID_ARGUMENT), then regopy through :class:`RegopyEngine` (an engine error is
Decide's fail-safe DENY). OPA evaluates the converted input document. An answer is fine
when it equals OPA's (effect and violations), is a fail-safe DENY or a refusal; anything
else is a divergence, and one more permissive than OPA's (ALLOW over ESCALATE over DENY)
is the kind that must never ship.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from acgs.adapters.rego_source import PolicyBundle
from acgs.adapters.regopy_engine import RegopyEngine, parse_decision
from acgs.domain.model import Effect, EngineResult
from acgs.entrypoints import convert
from acgs.entrypoints.opa_requests import decide_message
from acgs.errors import AcgsError, InvalidRequest

MISSING_PACKAGE = ("OPA's engine is not installed here: `python3 -m pip install --no-deps "
                   "--ignore-requires-python opa-golib-python-bindings==0.4.4`")
_RANK = {Effect.DENY: 0, Effect.ESCALATE: 1, Effect.ALLOW: 2}


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
