"""The decision use cases: Decide, DecideBatch and Evaluate.

One request's path, in order: constitutional hash → cache → engine (fail-safe
on any doubt) → audit (durable before the answer) → cache fill → telemetry.
Nothing here knows about gRPC.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from acgs.domain import canonical
from acgs.domain.cache_key import decision_cache_key
from acgs.domain.model import (
    AUDIT_UNAVAILABLE,
    Caller,
    Decision,
    DecisionRequest,
    Effect,
    EngineResult,
    fail_safe_result,
    new_decision_id,
)
from acgs.errors import (
    AuditUnavailable,
    ConstitutionMismatch,
    DeadlineExceeded,
    EngineError,
    EngineTimeout,
)
from acgs.service_layer.ports import (
    AuditEntry,
    AuditSink,
    DecisionCache,
    Escalator,
    Evaluation,
    PolicyEngine,
    Telemetry,
)

logger = logging.getLogger("acgs.decisions")


class DecisionService:
    """Makes decisions under the constitution in force and keeps them.

    Every public method raises ``ConstitutionMismatch`` for a wrong hash,
    ``DeadlineExceeded`` when the caller's deadline passed during evaluation,
    and never lets an engine or audit failure become an ALLOW.
    """

    def __init__(
        self,
        *,
        engine: PolicyEngine,
        cache: DecisionCache | None,
        audit: AuditSink | None,
        escalator: Escalator | None,
        telemetry: Telemetry,
        constitutional_hash: str,
        eval_timeout_s: float,
        mask: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
    ) -> None:
        self._engine = engine
        self._cache = cache
        self._audit = audit
        self._escalator = escalator
        self._telemetry = telemetry
        self._hash = constitutional_hash
        self._eval_timeout_s = eval_timeout_s
        self._mask = mask

    @property
    def constitutional_hash(self) -> str:
        return self._hash

    def check_hash(self, got: str) -> None:
        """Raise ConstitutionMismatch (and count it) unless ``got`` is the hash in force."""
        if got != self._hash:
            self._telemetry.hash_mismatch()
            raise ConstitutionMismatch(expected=self._hash, got=got)

    async def decide(
        self, request: DecisionRequest, caller: Caller, *, deadline_s: float | None = None
    ) -> Decision:
        """Decide one request; the decision is durable in the audit trail when this returns."""
        start = time.perf_counter_ns()
        self.check_hash(request.constitutional_hash)
        policy = self._engine.policy
        cache = self._cache
        key = decision_cache_key(policy, request.policy_input) if cache is not None else ""
        cached = await cache.get(key) if cache is not None else None
        engine_us: float | None = None
        if cached is not None:
            result, from_cache = cached, True
        else:
            t0 = time.perf_counter_ns()
            result = await self._evaluate(request.policy_input, deadline_s)
            engine_us = (time.perf_counter_ns() - t0) / 1000
            from_cache = False
        decision = self._decision(request, result, cached=from_cache, start_ns=start)
        decision = await self._keep(decision, request, caller)
        if cache is not None and not from_cache and not decision.fail_safe:
            await cache.put(key, result)
        self._telemetry.decision_made(decision, engine_us=engine_us)
        return decision

    async def decide_batch(
        self, requests: Sequence[DecisionRequest], caller: Caller, *, deadline_s: float | None
    ) -> list[Decision]:
        """Decide every request, in order; the batch is audited with one durable write."""
        start = time.perf_counter_ns()
        for request in requests:
            self.check_hash(request.constitutional_hash)
        # The evaluation budget is per decision; a batch may use it once per item
        # (the worst case, evaluated serially), but never past the caller's deadline.
        timeout = self._timeout(deadline_s, items=len(requests))
        outcomes = await self._engine.decide_many(
            [r.policy_input for r in requests], timeout_s=timeout
        )
        revision = self._engine.policy.revision
        decisions = [
            self._decision(r, self._trusted(o, revision), cached=False, start_ns=start)
            for r, o in zip(requests, outcomes, strict=True)
        ]
        decisions = await self._keep_many(decisions, requests, caller)
        for decision in decisions:
            self._telemetry.decision_made(decision, engine_us=None)
        return decisions

    async def evaluate(
        self,
        path: str,
        input_value: Any,
        caller: Caller,
        *,
        constitutional_hash: str,
        deadline_s: float | None = None,
    ) -> tuple[Evaluation, str]:
        """The value of any rule of the active policy, audited; returns it and its decision id."""
        self.check_hash(constitutional_hash)
        start = time.perf_counter_ns()
        try:
            evaluation = await self._engine.evaluate(
                path, input_value, timeout_s=self._timeout(deadline_s)
            )
        except EngineTimeout as err:
            raise self._deadline_or(err, deadline_s) from err
        request_json = canonical.dumps({"path": path, "input": input_value})
        decision = Decision(
            decision_id=new_decision_id(),
            request_id="",
            effect=Effect.ALLOW,
            violations=(),
            policy_revision=evaluation.policy_revision,
            constitutional_hash=self._hash,
            cached=False,
            latency_us=(time.perf_counter_ns() - start) // 1000,
            decided_at_ns=time.time_ns(),
        )
        if self._audit is not None:
            await self._audit.append([AuditEntry("evaluate", decision, caller, request_json)])
        return evaluation, decision.decision_id

    # -- internals -------------------------------------------------------------------------

    def _timeout(self, deadline_s: float | None, *, items: int = 1) -> float:
        budget = self._eval_timeout_s * max(1, items)
        if deadline_s is None:
            return budget
        return max(0.0, min(budget, deadline_s))

    def _deadline_or(self, err: EngineError, deadline_s: float | None) -> Exception:
        if deadline_s is not None and deadline_s <= self._eval_timeout_s:
            return DeadlineExceeded(
                f"deadline of {deadline_s * 1000:.1f} ms passed during evaluation"
            )
        return err

    async def _evaluate(
        self, policy_input: Mapping[str, Any], deadline_s: float | None
    ) -> EngineResult:
        revision = self._engine.policy.revision
        try:
            return await self._engine.decide(policy_input, timeout_s=self._timeout(deadline_s))
        except EngineTimeout as err:
            outcome = self._deadline_or(err, deadline_s)
            if isinstance(outcome, DeadlineExceeded):
                raise outcome from err
            logger.warning("evaluation timed out: %s", err)
            return fail_safe_result(f"evaluation timed out: {err}", revision=revision)
        except EngineError as err:
            logger.warning("evaluation failed, denying: %s", err)
            return fail_safe_result(f"evaluation failed: {err}", revision=revision)

    @staticmethod
    def _trusted(outcome: EngineResult | Exception, revision: str) -> EngineResult:
        if isinstance(outcome, EngineResult):
            return outcome
        return fail_safe_result(f"evaluation failed: {outcome}", revision=revision)

    def _decision(
        self, request: DecisionRequest, result: EngineResult, *, cached: bool, start_ns: int
    ) -> Decision:
        return Decision(
            decision_id=new_decision_id(),
            request_id=request.request_id,
            effect=result.effect,
            violations=result.violations,
            policy_revision=result.policy_revision,
            constitutional_hash=self._hash,
            cached=cached,
            latency_us=(time.perf_counter_ns() - start_ns) // 1000,
            decided_at_ns=time.time_ns(),
            fail_safe=_is_fail_safe(result),
        )

    async def _keep(self, decision: Decision, request: DecisionRequest, caller: Caller) -> Decision:
        return (await self._keep_many([decision], [request], caller))[0]

    async def _keep_many(
        self, decisions: list[Decision], requests: Sequence[DecisionRequest], caller: Caller
    ) -> list[Decision]:
        """Escalate what needs humans, then make every decision durable before it is returned."""
        if self._escalator is not None:
            decisions = [await self._escalate(d, caller) for d in decisions]
        if self._audit is None:
            return decisions
        entries = [
            AuditEntry("decide", d, caller, self._request_json(r))
            for d, r in zip(decisions, requests, strict=True)
        ]
        try:
            await self._audit.append(entries)
        except AuditUnavailable as err:
            self._telemetry.audit_refused()
            logger.error("audit trail refused %d records: %s", len(entries), err)
            return [self._refused(d, str(err)) for d in decisions]
        return decisions

    async def _escalate(self, decision: Decision, caller: Caller) -> Decision:
        assert self._escalator is not None
        reason = _escalation_reason(decision)
        if not reason:
            return decision
        escalation_id = await self._escalator.escalate(decision, reason=reason, caller=caller)
        return replace(decision, escalation_id=escalation_id)

    def _refused(self, decision: Decision, why: str) -> Decision:
        result = fail_safe_result(
            f"audit trail unavailable, refusing to decide: {why}",
            revision=decision.policy_revision,
            principle=AUDIT_UNAVAILABLE,
        )
        return replace(
            decision,
            effect=result.effect,
            violations=result.violations,
            fail_safe=True,
            cached=False,
        )

    def _request_json(self, request: DecisionRequest) -> str:
        doc = {"request_id": request.request_id, "input": request.policy_input}
        if self._mask is not None:
            doc["input"] = self._mask(request.policy_input)
        return canonical.dumps(doc)


def _is_fail_safe(result: EngineResult) -> bool:
    return any(v.principle in ("fail_safe", AUDIT_UNAVAILABLE) for v in result.violations)


def _escalation_reason(decision: Decision) -> str:
    if decision.effect is Effect.ESCALATE:
        return "high_impact_action"
    if decision.fail_safe:
        return "fail_safe"
    if any(v.severity.value == "critical" for v in decision.violations):
        return "critical_violation"
    return ""
