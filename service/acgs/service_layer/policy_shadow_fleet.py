"""The shadow across the fleet: the plan in PostgreSQL, applied and reported by every server.

``acgs policy shadow REV`` (StartShadow) writes the plan: the candidate, its
sample share, the examples kept per transition, and a new generation; the
write NOTIFYs the channel activations use, so each server's policy
reconciliation (:class:`~acgs.service_layer.policy_sync.PolicySync`, one
:meth:`ShadowSync.round` per round) loads the candidate on a private engine
and starts shadowing within a round. Each round also stores the server's
report of the current generation; GetShadowReport merges the reports of the
current generation. StopShadow clears the candidate (a new generation), and
every server closes its private engine.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from acgs.domain.model import Caller
from acgs.domain.policy_version import PolicyVersion
from acgs.errors import AcgsError, InvalidRequest
from acgs.service_layer.policy_ports import PolicyStore, ShadowStore
from acgs.service_layer.policy_shadow import (
    CandidateEngine,
    ShadowEvaluator,
    ShadowPlan,
    ShadowReport,
    merge_reports,
)

logger = logging.getLogger("acgs.policy.shadow")
MAX_EXAMPLES = 100
DEFAULT_EXAMPLES = 5


class ShadowSync:
    """Applies the fleet's plan on this server and publishes its report (one round at a time)."""

    def __init__(self, *, store: ShadowStore, versions: PolicyStore, evaluator: ShadowEvaluator,
                 engine_for: Callable[[PolicyVersion], Awaitable[CandidateEngine]]) -> None:
        self._store = store
        self._versions = versions
        self._evaluator = evaluator
        self._engine_for = engine_for
        self._generation = 0
        self._failed = 0

    async def round(self) -> None:
        """Follow the plan (load or drop the candidate), then store this server's report."""
        try:
            plan = await self._store.shadow_plan()
            if plan is not None and plan.generation != self._generation:
                await self._follow(plan)
            if self._evaluator.plan is not None:
                await self._store.put_shadow_report(self._evaluator.report())
        except AcgsError as err:
            logger.warning("shadow: %s", err)

    async def _follow(self, plan: ShadowPlan) -> None:
        if not plan.revision:
            await self._evaluator.switch(None, None)
            self._generation = plan.generation
            logger.info("shadow stopped (generation %d)", plan.generation)
            return
        try:
            engine = await self._engine_for(await self._versions.get_version(plan.revision))
        except AcgsError as err:
            if self._failed != plan.generation:  # once per plan: it is retried every round
                logger.error("shadow: cannot load candidate %s: %s", plan.revision, err)
            self._failed = plan.generation
            raise
        await self._evaluator.switch(plan, engine)
        self._generation = plan.generation
        logger.info("shadowing candidate %s on %.0f%% of decisions (generation %d)",
                    plan.revision, plan.sample * 100, plan.generation)


class ShadowAdmin:
    """The use cases of StartShadow, StopShadow and GetShadowReport."""

    def __init__(self, *, store: ShadowStore, versions: PolicyStore) -> None:
        self._store = store
        self._versions = versions

    async def start(self, revision: str, *, sample: float, examples: int,
                    started_by: Caller) -> ShadowPlan:
        """Shadow ``revision`` (stored) fleet-wide. Raises InvalidRequest, NotFound."""
        if not revision.strip():
            raise InvalidRequest("revision (the candidate version) is required")
        if not 0.0 < sample <= 1.0:
            raise InvalidRequest("sample is a fraction of decisions, above 0 and at most 1")
        if not 0 <= examples <= MAX_EXAMPLES:
            raise InvalidRequest(f"examples is at most {MAX_EXAMPLES} per transition")
        version = await self._versions.get_version(revision.strip(), full=False)
        return await self._store.set_shadow(revision=version.revision, sample=sample,
                                            examples=examples, actor=started_by)

    async def stop(self, *, stopped_by: Caller) -> ShadowPlan:
        """No candidate any more; every server drops its own."""
        return await self._store.set_shadow(revision="", sample=1.0, examples=0,
                                            actor=stopped_by)

    async def report(self) -> tuple[ShadowPlan | None, ShadowReport, list[ShadowReport]]:
        """The plan, the fleet's merged report and each server's, for the current plan."""
        plan = await self._store.shadow_plan()
        if plan is None:
            return None, ShadowReport(), []
        reports = await self._store.shadow_reports(generation=plan.generation)
        merged = merge_reports(reports, examples=plan.examples)
        merged.generation, merged.candidate_revision = plan.generation, plan.revision
        return plan, merged, reports
