"""Replay recorded decisions under a candidate policy version: what would change?

Reads the decisions of the audit trail (a time range, at most ``limit``,
oldest first; other events, such as the admin chain's policy changes, are not
decisions and are passed over uncounted), takes the input each recorded (``request_json`` =
``{"request_id", "input"}``; masked fields stay masked), evaluates it under the
candidate on a private engine, and compares effects. Records that cannot be
replayed (no input, or a fail-safe / audit-refusal DENY, which says nothing
about the policy) are skipped and counted. An evaluation error under the
candidate is what a server would answer: a fail-safe DENY (``FAIL_SAFE``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from acgs.domain import events
from acgs.domain.audit import AuditRecord
from acgs.domain.audit_query import DecisionFilter
from acgs.domain.model import EngineResult
from acgs.domain.policy_version import PolicyVersion
from acgs.service_layer.policy_ports import PolicyStore

# Principles the service adds itself: such a recorded effect is not the policy's answer.
_NOT_POLICY = frozenset({"fail_safe", "audit_unavailable", "escalation_limit"})


class CandidateEngine(Protocol):
    """A private engine serving the candidate (a RegopyEngine); closed after the replay."""

    async def decide_many(self, inputs: Sequence[Mapping[str, Any]], *,
                          timeout_s: float) -> list[EngineResult | Exception]: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ReplayExample:
    decision_id: str
    request_id: str
    recorded: str
    replayed: str


@dataclass
class ReplayReport:
    """Progress so far; ``done`` on the last report, whose ``groups`` are final."""

    replayed: int = 0
    changed: int = 0
    skipped: int = 0
    done: bool = False
    counts: dict[str, int] = field(default_factory=dict)  # "ALLOW->DENY" -> n
    examples: dict[str, list[ReplayExample]] = field(default_factory=dict)

    def snapshot(self) -> ReplayReport:
        """A copy that later progress does not change."""
        return ReplayReport(self.replayed, self.changed, self.skipped, self.done,
                            dict(self.counts), {k: list(v) for k, v in self.examples.items()})


class PolicyReplayer:
    """Replays ``records`` (an export of the audit trail) under stored candidate versions."""

    def __init__(self, *, records: Callable[[DecisionFilter], AsyncIterator[AuditRecord]],
                 store: PolicyStore,
                 engine_for: Callable[[PolicyVersion], Awaitable[CandidateEngine]],
                 batch: int = 200, progress_every: int = 1000,
                 batch_timeout_s: float = 30.0) -> None:
        self._records = records
        self._store = store
        self._engine_for = engine_for
        self._batch = batch
        self._progress_every = progress_every
        self._timeout_s = batch_timeout_s

    async def replay(self, *, revision: str, since_us: int | None, until_us: int | None,
                     limit: int, examples: int, sample: float = 1.0
                     ) -> AsyncIterator[ReplayReport]:
        """Progress reports, then a final one (``done``). ``sample`` < 1 replays that
        fraction of the range, chosen by decision id (the same ids on every run).
        Raises NotFound (no such version), PolicyError (it does not compile here) or
        AuditUnavailable."""
        engine = await self._engine_for(await self._store.get_version(revision))
        report = ReplayReport()
        pending: list[tuple[AuditRecord, Any]] = []
        try:
            async for record in self._records(DecisionFilter(since_us=since_us,
                                                             until_us=until_us)):
                if record.kind not in events.DECISION_KINDS:
                    continue  # not a decision (an admin event, an escalation): not counted
                if report.replayed + report.skipped + len(pending) >= limit:
                    break
                if sample < 1.0 and not _sampled(record.decision_id, sample):
                    continue
                doc = _input(record)
                if doc is None:
                    report.skipped += 1
                    continue
                pending.append((record, doc))
                if len(pending) >= self._batch:
                    before = report.replayed
                    await self._run(engine, pending, report, examples)
                    pending = []
                    if report.replayed // self._progress_every > before // self._progress_every:
                        yield report.snapshot()
            await self._run(engine, pending, report, examples)
        finally:
            engine.close()
        report.done = True
        yield report

    async def _run(self, engine: CandidateEngine, pending: list[tuple[AuditRecord, Any]],
                   report: ReplayReport, examples: int) -> None:
        if not pending:
            return
        results = await engine.decide_many([doc for _, doc in pending], timeout_s=self._timeout_s)
        for (record, _), result in zip(pending, results, strict=True):
            replayed = result.effect.name if isinstance(result, EngineResult) else "FAIL_SAFE"
            recorded = record.effect.name
            report.replayed += 1
            if replayed == recorded:
                continue
            change = f"{recorded}->{replayed}"
            report.changed += 1
            report.counts[change] = report.counts.get(change, 0) + 1
            kept = report.examples.setdefault(change, [])
            if len(kept) < examples:
                kept.append(ReplayExample(record.decision_id, record.request_id, recorded,
                                          replayed))


def _sampled(decision_id: str, fraction: float) -> bool:
    digest = hashlib.sha256(decision_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def _input(record: AuditRecord) -> Mapping[str, Any] | None:
    """The recorded input of a replayable decision, else None."""
    if (record.kind not in ("decide", events.DECISION) or record.data
            or any(v.principle in _NOT_POLICY for v in record.violations)):
        return None
    try:
        doc = json.loads(record.request_json)
    except ValueError:
        return None
    value = doc.get("input") if isinstance(doc, dict) else None
    return value if isinstance(value, dict) else None
