"""Shadow evaluation: one server also decides a sample of its live decisions under a candidate.

After a decision is answered, :meth:`ShadowEvaluator.offer` (called from the
decision path, synchronous, no I/O) samples it and puts its input on a
bounded queue; when the queue is full the input is dropped and counted, so
the shadow never blocks nor delays an answer, and never changes one (it sees
the decision only after it was made). A supervised worker task takes inputs
in batches, decides them on a private engine serving the candidate, and
counts each difference by transition (``ALLOW->DENY``, ``DENY->FAIL_SAFE``...),
keeping up to ``examples`` per transition with the input masked like the
audit trail masks it. A fail-safe live answer, or a candidate that fails to
evaluate, is named ``FAIL_SAFE``. Not compared: live answers refused for want of
an audit trail, and inputs the private engine did not decide within ``timeout_s``
per batch (counted with the dropped).

Which candidate (if any) is shadowed is fleet state, applied by
:class:`ShadowSync`, one round per policy reconciliation.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from acgs.domain.audit import mask_fields
from acgs.domain.model import AUDIT_UNAVAILABLE, ESCALATION_LIMIT, Decision, EngineResult
from acgs.errors import EngineTimeout

logger = logging.getLogger("acgs.policy.shadow")
FAIL_SAFE = "FAIL_SAFE"


class CandidateEngine(Protocol):
    """A private engine serving the candidate (a RegopyEngine); closed when replaced."""

    async def decide_many(self, inputs: Sequence[Mapping[str, Any]], *,
                          timeout_s: float) -> list[EngineResult | Exception]: ...

    def close(self) -> None: ...


class ShadowTelemetry(Protocol):
    """Counts shadow decisions, differences (by transition) and dropped inputs."""

    def shadow_evaluated(self, *, transition: str) -> None: ...

    def shadow_dropped(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ShadowPlan:
    """The fleet's shadow: ``revision`` "" when none. ``generation`` changes on every change."""

    revision: str
    sample: float
    examples: int
    generation: int


@dataclass
class ShadowReport:
    """One server's (or, merged, the fleet's) findings for one generation of the plan."""

    instance_id: str = ""
    generation: int = 0
    candidate_revision: str = ""
    live_revision: str = ""
    evaluated: int = 0
    dropped: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def differences(self) -> int:
        return sum(self.counts.values())

    def snapshot(self) -> ShadowReport:
        return ShadowReport(self.instance_id, self.generation, self.candidate_revision,
                            self.live_revision, self.evaluated, self.dropped, dict(self.counts),
                            {k: list(v) for k, v in self.examples.items()})


@dataclass(frozen=True, slots=True)
class _Item:
    generation: int
    policy_input: Mapping[str, Any]
    live: str
    live_revision: str
    decision_id: str


class ShadowEvaluator:
    """This server's shadow of the live decisions: ``offer`` samples, ``round`` evaluates."""

    def __init__(self, *, instance_id: str, telemetry: ShadowTelemetry,
                 mask: Sequence[str] = (), queue_size: int = 1000, batch: int = 32,
                 timeout_s: float = 5.0, sample: Callable[[], float] = random.random) -> None:
        self._instance_id = instance_id
        self._telemetry = telemetry
        self._mask = tuple(mask)
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=queue_size)
        self._batch = batch
        self._timeout_s = timeout_s
        self._random = sample
        self._plan: ShadowPlan | None = None
        self._engine: CandidateEngine | None = None
        self._report = ShadowReport(instance_id=instance_id)

    @property
    def plan(self) -> ShadowPlan | None:
        return self._plan

    def offer(self, policy_input: Mapping[str, Any], decision: Decision) -> None:
        """Sample one answered decision for the candidate; never blocks, never raises."""
        plan = self._plan
        if plan is None or self._random() >= plan.sample:
            return
        if decision.fail_safe and any(v.principle == AUDIT_UNAVAILABLE
                                      for v in decision.violations):
            return  # refused for want of an audit trail: says nothing about the policy
        if any(v.principle == ESCALATION_LIMIT for v in decision.violations):
            return  # a DENY for the caller's escalation cap: not the policy's answer either
        live = FAIL_SAFE if decision.fail_safe else decision.effect.name
        try:
            self._queue.put_nowait(_Item(plan.generation, policy_input, live,
                                         decision.policy_revision, decision.decision_id))
        except asyncio.QueueFull:
            self._report.dropped += 1
            self._telemetry.shadow_dropped()

    async def switch(self, plan: ShadowPlan | None, engine: CandidateEngine | None) -> None:
        """Shadow ``plan`` on ``engine`` from now on (None: stop); findings start afresh."""
        old, self._engine = self._engine, engine
        self._plan = plan if plan is not None and plan.revision else None
        self._report = ShadowReport(
            instance_id=self._instance_id, generation=plan.generation if plan else 0,
            candidate_revision=plan.revision if plan else "")
        if old is not None and old is not engine:
            old.close()

    def report(self) -> ShadowReport:
        """A copy of the findings of the current plan."""
        return self._report.snapshot()

    async def stop(self) -> None:
        """Shadow nothing more (the candidate engine is closed); after the rounds end."""
        await self.switch(None, None)

    async def round(self) -> None:
        """One batch: wait for a sampled decision, take up to ``batch`` queued ones, evaluate
        them (run back to back under the supervisor; a failing batch is logged there)."""
        items = [await self._queue.get()]
        while len(items) < self._batch and not self._queue.empty():
            items.append(self._queue.get_nowait())
        await self._evaluate(items)

    async def _evaluate(self, items: list[_Item]) -> None:
        plan, engine = self._plan, self._engine
        if plan is None or engine is None:
            return
        current = [i for i in items if i.generation == plan.generation]
        if not current:
            return
        results = await engine.decide_many([i.policy_input for i in current],
                                           timeout_s=self._timeout_s)
        if self._plan is not plan:
            return  # switched while evaluating: these findings belong to no report
        for item, result in zip(current, results, strict=True):
            self._count(plan, item, result)

    def _count(self, plan: ShadowPlan, item: _Item,
               result: EngineResult | Exception) -> None:
        report = self._report
        if isinstance(result, EngineTimeout):
            # The private engine fell behind (one thread, off the request path): not a
            # judgement on the candidate, so not a difference; counted with the dropped.
            report.dropped += 1
            self._telemetry.shadow_dropped()
            return
        candidate = result.effect.name if isinstance(result, EngineResult) else FAIL_SAFE
        report.evaluated += 1
        report.live_revision = item.live_revision
        if candidate == item.live:
            self._telemetry.shadow_evaluated(transition="")
            return
        transition = f"{item.live}->{candidate}"
        self._telemetry.shadow_evaluated(transition=transition)
        report.counts[transition] = report.counts.get(transition, 0) + 1
        kept = report.examples.setdefault(transition, [])
        if len(kept) < plan.examples:
            kept.append({"decision_id": item.decision_id, "instance_id": self._instance_id,
                         "live_revision": item.live_revision,
                         "input": mask_fields(dict(item.policy_input), self._mask)})


def merge_reports(reports: Sequence[ShadowReport], *, examples: int) -> ShadowReport:
    """The fleet's findings: counts summed, at most ``examples`` kept per transition."""
    merged = ShadowReport()
    for r in reports:
        merged.evaluated += r.evaluated
        merged.dropped += r.dropped
        merged.live_revision = merged.live_revision or r.live_revision
        for transition, n in r.counts.items():
            merged.counts[transition] = merged.counts.get(transition, 0) + n
        for transition, kept in r.examples.items():
            room = examples - len(merged.examples.get(transition, []))
            if room > 0:
                merged.examples.setdefault(transition, []).extend(kept[:room])
    return merged
