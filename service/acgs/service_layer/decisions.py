"""The decision use cases: Decide, DecideBatch and Evaluate.

One request's path, in order: constitutional hash → cache → engine (fail-safe
on any doubt) → escalation → audit (durable before the answer) → cache fill →
telemetry. Nothing here knows about gRPC.

A decision that needs a human (ESCALATE, fail-safe, a critical violation) gets
an escalation id; the escalation's opening record goes in the same durable
write as the decision's, so the answer never waits on PostgreSQL. A wrong hash
and refused audit writes open incident escalations (see the Escalator port).
A decision that would open an escalation past its caller's cap
(``ACGS_ESCALATION_CALLER_LIMIT``) is a DENY instead, keeping the policy's
violations plus ``escalation_limit``; it is audited like any other and opens one
incident per caller, so a flood is never silent and never ALLOWed. The cache
keeps the policy's answer, not that DENY.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from acgs.domain import canonical, events
from acgs.domain import escalation as esc
from acgs.domain.cache_key import cache_key_of_json, canonical_input
from acgs.domain.escalation_group import EscalationLimited
from acgs.domain.model import (
    AUDIT_UNAVAILABLE,
    CONSTITUTIONAL_HASH,
    ESCALATION_LIMIT,
    Caller,
    Decision,
    DecisionRequest,
    Effect,
    EngineResult,
    Severity,
    Violation,
    fail_safe_result,
    new_decision_id,
    timed_out_result,
)
from acgs.errors import (
    AuditUnavailable,
    ConstitutionMismatch,
    DeadlineExceeded,
    EngineError,
    EngineTimeout,
)
from acgs.service_layer.idempotency import BatchPlan, IdempotencyMap, digest_of
from acgs.service_layer.policy_ports import DecisionObserver
from acgs.service_layer.ports import (
    AuditEntry,
    AuditSink,
    DecisionCache,
    Entry,
    Escalator,
    Evaluation,
    EventEntry,
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
        idempotency: IdempotencyMap | None = None,
    ) -> None:
        self._idempotency = idempotency
        self._engine = engine
        self._cache = cache
        self._audit = audit
        self._escalator = escalator
        self._telemetry = telemetry
        self._hash = constitutional_hash
        self._eval_timeout_s = eval_timeout_s
        self._observer: DecisionObserver | None = None

    def observe_with(self, observer: DecisionObserver | None) -> None:
        """Show every answered decision to ``observer`` (auto-rollback watch, shadow)."""
        self._observer = observer

    @property
    def constitutional_hash(self) -> str:
        return self._hash

    def check_hash(self, got: str) -> None:
        """Raise ConstitutionMismatch (and count it) unless ``got`` is the hash in force."""
        if got != self._hash:
            self._telemetry.hash_mismatch()
            raise ConstitutionMismatch(expected=self._hash, got=got)

    async def _check_hash(self, got: str, caller: Caller,
                          policy_input: Mapping[str, Any] | None = None) -> None:
        """check_hash, and escalate a mismatch: one incident per caller at a time (a client
        sending the wrong hash on every call is one incident, not thousands)."""
        try:
            self.check_hash(got)
        except ConstitutionMismatch as err:
            if self._escalator is not None:
                await self._escalator.incident(
                    reason=esc.CONSTITUTION_MISMATCH,
                    key=f"{esc.CONSTITUTION_MISMATCH}:{caller.id}", caller=caller,
                    violation=Violation(CONSTITUTIONAL_HASH, Severity.HIGH, str(err)),
                    policy_input=policy_input)
            raise

    async def decide(
        self, request: DecisionRequest, caller: Caller, *, deadline_s: float | None = None
    ) -> Decision:
        """Decide one request; the decision is durable in the audit trail when this returns.

        A repeated ``request_id`` gets its original decision (see
        :mod:`acgs.service_layer.idempotency`); IdempotencyConflict for another body."""
        start = time.perf_counter_ns()
        await self._check_hash(request.constitutional_hash, caller, request.policy_input)
        idem = self._idempotency if request.request_id else None
        # One canonical encoding of the input serves the cache key, the audit record and
        # the idempotency digest.
        input_json = (canonical_input(request.policy_input, normalized=request.normalized)
                      if self._cache is not None or self._audit is not None
                      or idem is not None else None)
        if idem is None or input_json is None:
            return await self._decide_new(request, caller, deadline_s, input_json, start)
        got = await idem.claim((caller.id, request.request_id), digest_of(input_json))
        if isinstance(got, Decision):
            return got
        try:
            decision = await self._decide_new(request, caller, deadline_s, input_json, start)
        except BaseException:
            if got is not None:
                got.drop()
            raise
        if got is not None:
            got.keep(decision)
        return decision

    async def _decide_new(self, request: DecisionRequest, caller: Caller,
                          deadline_s: float | None, input_json: str | None,
                          start: int) -> Decision:
        policy = self._engine.policy
        cache = self._cache
        key = cache_key_of_json(policy, input_json) if cache is not None and input_json else ""
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
        decision = (await self._keep_many([decision], [request], caller, [input_json]))[0]
        if cache is not None and not from_cache and not decision.fail_safe:
            await cache.put(key, result)
        self._telemetry.decision_made(decision, engine_us=engine_us)
        if self._observer is not None:  # after the answer is final; never blocks it
            self._observer.observe(request.policy_input, decision)
        return decision

    async def decide_batch(
        self, requests: Sequence[DecisionRequest], caller: Caller, *, deadline_s: float | None
    ) -> list[Decision]:
        """Decide every request, in order; the batch is audited with one durable write.

        Items the cache holds are answered from it (``cached``), as single decisions are;
        the rest are evaluated together and fill the cache. Items repeating a recent
        ``request_id`` get their original decision, as Decide does."""
        start = time.perf_counter_ns()
        for request in requests:
            await self._check_hash(request.constitutional_hash, caller, request.policy_input)
        idem = (self._idempotency if any(r.request_id for r in requests) else None)
        input_jsons = ([canonical_input(r.policy_input, normalized=r.normalized)
                        for r in requests]
                       if self._cache is not None or self._audit is not None
                       or idem is not None else None)
        if idem is None or input_jsons is None:
            return await self._decide_batch_new(requests, caller, deadline_s, input_jsons, start)
        plan = await BatchPlan.make(idem, requests, input_jsons, caller.id)
        try:
            fresh = plan.fresh
            decided = await self._decide_batch_new(
                [requests[i] for i in fresh], caller, deadline_s,
                [input_jsons[i] for i in fresh], start) if fresh else []
        except BaseException:
            plan.drop()
            raise
        return plan.complete(decided)

    async def _decide_batch_new(
        self, requests: Sequence[DecisionRequest], caller: Caller, deadline_s: float | None,
        input_jsons: list[str] | None, start: int,
    ) -> list[Decision]:
        policy = self._engine.policy
        cache = self._cache
        keys = ([cache_key_of_json(policy, j) for j in input_jsons]
                if cache is not None and input_jsons is not None else [])
        hits: list[EngineResult | None] = (
            [await cache.get(key) for key in keys] if cache is not None else [None] * len(requests))
        misses = [i for i, hit in enumerate(hits) if hit is None]
        # The evaluation budget is per decision; a batch may use it once per item
        # (the worst case, evaluated serially), but never past the caller's deadline.
        timeout = self._timeout(deadline_s, items=len(misses))
        outcomes = await self._engine.decide_many(
            [requests[i].policy_input for i in misses], timeout_s=timeout
        ) if misses else []
        revision = self._engine.policy.revision
        evaluated = dict(zip(misses, outcomes, strict=True))
        results = [hit if hit is not None else self._trusted(evaluated[i], revision)
                   for i, hit in enumerate(hits)]
        decisions = [
            self._decision(r, result, cached=hit is not None, start_ns=start)
            for r, result, hit in zip(requests, results, hits, strict=True)
        ]
        decisions = await self._keep_many(decisions, requests, caller, input_jsons)
        for i, decision in enumerate(decisions):
            if cache is not None and hits[i] is None and not decision.fail_safe:
                await cache.put(keys[i], results[i])
            self._telemetry.decision_made(decision, engine_us=None)
            if self._observer is not None:
                self._observer.observe(requests[i].policy_input, decision)
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
        await self._check_hash(constitutional_hash, caller)
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
            await self._audit.append(
                [AuditEntry(events.EVALUATION, decision, caller, request_json)])
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
            return timed_out_result(err, revision=revision)
        except EngineError as err:
            logger.warning("evaluation failed, denying: %s", err)
            return fail_safe_result(f"evaluation failed: {err}", revision=revision)

    @staticmethod
    def _trusted(outcome: EngineResult | Exception, revision: str) -> EngineResult:
        if isinstance(outcome, EngineResult):
            return outcome
        if isinstance(outcome, EngineTimeout):  # as one decision's (_evaluate)
            return timed_out_result(outcome, revision=revision)
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
            required_approvals=result.required_approvals,
        )

    async def _keep_many(
        self, decisions: list[Decision], requests: Sequence[DecisionRequest], caller: Caller,
        input_jsons: Sequence[str | None] | None = None,
    ) -> list[Decision]:
        """Escalate what needs humans, then make every decision (and the opening of every
        escalation, in the same write) durable before it is returned. ``input_jsons``: each
        request's canonical input, where already encoded."""
        if self._audit is None:
            return decisions
        entries: list[Entry] = []
        openings: list[EventEntry] = []
        limited: Violation | None = None
        encoded = input_jsons if input_jsons is not None else [None] * len(requests)
        for i, (decision, request, input_json) in enumerate(
                zip(decisions, requests, encoded, strict=True)):
            try:
                escalation_id, opening = self._opening(decision, request, caller)
            except EscalationLimited as err:
                # Fail closed: past the caller's cap, DENY (never ALLOW, never unanswered).
                limited = err.violation
                decision = replace(decision, effect=Effect.DENY,
                                   violations=(*decision.violations, err.violation))
                decisions[i] = decision
                escalation_id, opening = "", None
            if escalation_id:
                decision = replace(decision, escalation_id=escalation_id)
                decisions[i] = decision
            if opening is not None:
                # Before the decision: PostgreSQL counts decisions into escalations it holds.
                openings.append(opening)
                entries.append(opening)
            doc = {"request_id": request.request_id, "input": request.policy_input}
            entries.append(AuditEntry(events.DECISION, decision, caller,
                                      _request_json(doc, input_json), request_doc=doc))
        try:
            await self._audit.append(entries)
        except AuditUnavailable as err:
            if self._escalator is not None:
                self._escalator.abandoned(openings)
            self._telemetry.audit_refused()
            logger.error("audit trail refused %d records: %s", len(entries), err)
            return await self._refuse_all(decisions, str(err), caller)
        if openings and self._escalator is not None:
            self._escalator.opened(openings)
        if limited is not None and self._escalator is not None:
            # Humans learn of the flood: one incident per caller at a time.
            await self._escalator.incident(
                reason=esc.ESCALATION_LIMIT, key=f"{ESCALATION_LIMIT}:{caller.id}",
                caller=caller, violation=limited)
        return decisions

    def _opening(self, decision: Decision, request: DecisionRequest,
                 caller: Caller) -> tuple[str, EventEntry | None]:
        reason = esc.reason_for(decision) if self._escalator is not None else ""
        if self._escalator is None or not reason:
            return "", None
        return self._escalator.opening(decision, reason=reason, caller=caller,
                                       policy_input=request.policy_input)

    async def _refuse_all(self, decisions: list[Decision], why: str,
                          caller: Caller) -> list[Decision]:
        """Every decision becomes a DENY audit_unavailable carrying this server's incident."""
        incident = ""
        if self._escalator is not None:
            incident = await self._escalator.incident(
                reason=esc.AUDIT_UNAVAILABLE, key=esc.AUDIT_UNAVAILABLE, caller=caller,
                violation=Violation(AUDIT_UNAVAILABLE, Severity.CRITICAL,
                                    f"audit trail refused decisions: {why}"))
        return [self._refused(d, why, incident) for d in decisions]

    def _refused(self, decision: Decision, why: str, escalation_id: str) -> Decision:
        result = fail_safe_result(
            f"audit trail unavailable, refusing to decide: {why}",
            revision=decision.policy_revision,
            principle=AUDIT_UNAVAILABLE,
        )
        return replace(decision, effect=result.effect, violations=result.violations,
                       fail_safe=True, cached=False, escalation_id=escalation_id)


def _request_json(doc: Mapping[str, Any], input_json: str | None) -> str:
    """canonical.dumps(doc) of ``{"request_id", "input"}``, reusing the input's encoding."""
    if input_json is None:
        return canonical.dumps(doc)
    # Canonical order: "input" sorts before "request_id".
    return f'{{"input":{input_json},"request_id":{canonical.dumps(doc["request_id"])}}}'


def _is_fail_safe(result: EngineResult) -> bool:
    return any(v.principle in ("fail_safe", AUDIT_UNAVAILABLE) for v in result.violations)
