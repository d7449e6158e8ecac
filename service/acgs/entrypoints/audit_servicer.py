"""acgs.v1.Audit: translate protobuf ↔ domain and call the audit trail's read side.

Errors are mapped to status codes by :mod:`acgs.entrypoints.grpc_registry`:
NotFound (a decision, or a chain, that does not exist) → NOT_FOUND,
InvalidRequest (a bad id, cursor, range or filter) →
INVALID_ARGUMENT, AuditUnavailable (database unreachable) → UNAVAILABLE.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from google.protobuf import timestamp_pb2

from acgs.domain.audit import AuditRecord, StoredRecord
from acgs.domain.audit_query import (
    ChainInfo,
    ChainReport,
    DecisionFilter,
    EventFilter,
    Page,
    event_kinds,
)
from acgs.domain.model import Effect, Severity, Violation
from acgs.entrypoints import timestamps
from acgs.entrypoints.callers import CallerResolver
from acgs.entrypoints.status import Context
from acgs.errors import InvalidRequest
from acgs.v1 import audit_pb2 as pb
from acgs.v1 import governance_pb2 as gpb

_EFFECTS = {Effect.ALLOW: gpb.ALLOW, Effect.DENY: gpb.DENY, Effect.ESCALATE: gpb.ESCALATE}
_FROM_PB = {v: k for k, v in _EFFECTS.items()}
_SEVERITIES = {Severity.LOW: gpb.LOW, Severity.MEDIUM: gpb.MEDIUM,
               Severity.HIGH: gpb.HIGH, Severity.CRITICAL: gpb.CRITICAL}
_SEVERITY_FROM_PB = {v: k for k, v in _SEVERITIES.items()}
DEFAULT_PAGE = 100


class AuditReader(Protocol):
    """The read side of the audit trail (:class:`acgs.adapters.pg_audit_queries.AuditQueries`)."""

    async def get_decision(self, decision_id: str) -> AuditRecord: ...

    async def list_decisions(self, where: DecisionFilter, *, page_size: int = ...,
                             cursor: str = ...) -> Page: ...

    async def list_events(self, where: EventFilter, *, page_size: int = ...,
                          cursor: str = ...) -> Page: ...

    def export(self, where: DecisionFilter, *, page_size: int = ...
               ) -> AsyncIterator[AuditRecord]: ...

    async def verify_chain(self, instance_id: str, *, from_seq: int = ...,
                           to_seq: int = ...) -> ChainReport: ...

    async def list_chains(self) -> list[ChainInfo]: ...


class AuditServicer:
    """GetDecision, ListDecisions, ListEvents, VerifyChain, ExportDecisions and ListChains."""

    def __init__(self, *, reader: AuditReader, callers: CallerResolver) -> None:
        self._reader = reader
        self._callers = callers

    async def GetDecision(self, request: pb.GetDecisionRequest, context: Context
                          ) -> pb.AuditRecord:
        await self._callers.resolve(context, "acgs.v1.Audit/GetDecision")
        return record_to_proto(await self._reader.get_decision(request.decision_id))

    async def ListDecisions(self, request: pb.ListDecisionsRequest, context: Context
                            ) -> pb.ListDecisionsResponse:
        await self._callers.resolve(context, "acgs.v1.Audit/ListDecisions")
        page = await self._reader.list_decisions(
            filter_from_proto(request.filter), page_size=request.page_size or DEFAULT_PAGE,
            cursor=request.page_token,
        )
        return pb.ListDecisionsResponse(decisions=[record_to_proto(r) for r in page.records],
                                        next_page_token=page.next_cursor)

    async def ListEvents(self, request: pb.ListEventsRequest, context: Context
                         ) -> pb.ListEventsResponse:
        await self._callers.resolve(context, "acgs.v1.Audit/ListEvents")
        page = await self._reader.list_events(
            event_filter_from_proto(request.filter),
            page_size=request.page_size or DEFAULT_PAGE, cursor=request.page_token)
        return pb.ListEventsResponse(events=[record_to_proto(r) for r in page.records],
                                     next_page_token=page.next_cursor,
                                     resume_token=page.resume_cursor)

    async def VerifyChain(self, request: pb.VerifyChainRequest, context: Context
                          ) -> pb.VerifyChainResponse:
        await self._callers.resolve(context, "acgs.v1.Audit/VerifyChain")
        if not request.instance_id:
            raise InvalidRequest("instance_id is required (ListChains names them)")
        report = await self._reader.verify_chain(
            request.instance_id, from_seq=request.from_seq or 1, to_seq=request.to_seq)
        return report_to_proto(report)

    async def ExportDecisions(self, request: pb.ExportDecisionsRequest, context: Context
                              ) -> AsyncIterator[pb.AuditRecord]:
        await self._callers.resolve(context, "acgs.v1.Audit/ExportDecisions")
        async for record in self._reader.export(filter_from_proto(request.filter)):
            yield record_to_proto(record)

    async def ListChains(self, request: pb.ListChainsRequest, context: Context
                         ) -> pb.ListChainsResponse:
        await self._callers.resolve(context, "acgs.v1.Audit/ListChains")
        chains = await self._reader.list_chains()
        return pb.ListChainsResponse(chains=[
            pb.Chain(instance_id=c.instance_id, first_seq=c.first_seq, last_seq=c.last_seq,
                     records=c.records, checkpoints=c.checkpoints) for c in chains])


def report_to_proto(report: ChainReport) -> pb.VerifyChainResponse:
    out = pb.VerifyChainResponse(
        ok=report.ok, records_checked=report.checked, last_seq=report.last_seq,
        checkpoint_seq=report.checkpoint_seq, checkpoint_record_seq=report.checkpoint_record_seq,
        checkpoints_checked=report.checkpoints_checked, keys_used=report.keys_used,
        trust=report.trust, notes=report.notes)
    if report.checkpoint_at_us:
        out.checkpoint_signed_at.FromMicroseconds(report.checkpoint_at_us)
    if report.broken is not None:
        out.broken_seq = report.broken.seq
        out.reason = report.broken.reason
        out.detail = report.broken.detail
        out.missing_seq = report.broken.missing_seq
    out.quarantined.extend(pb.QuarantinedRecord(seq=q.seq, source=q.source, reason=q.reason)
                           for q in report.quarantined)
    return out


def filter_from_proto(f: pb.DecisionFilter) -> DecisionFilter:
    """A DecisionFilter; InvalidRequest for an unknown effect or a time outside years 1-9999."""
    effect = None
    if f.effect:
        if f.effect not in _FROM_PB:
            raise InvalidRequest(f"filter.effect {f.effect} is not an Effect")
        effect = _FROM_PB[f.effect]
    return DecisionFilter(
        since_us=timestamps.micros(f, "since", "filter.since"),
        until_us=timestamps.micros(f, "until", "filter.until"),
        principal_id=f.principal_id, tenant_id=f.tenant_id, effect=effect,
        policy_revision=f.policy_revision, instance_id=f.instance_id,
    )


def event_filter_from_proto(f: pb.EventFilter) -> EventFilter:
    """An EventFilter; InvalidRequest for an unknown kind or a time outside years 1-9999."""
    if f.after_seq < 0:
        raise InvalidRequest("filter.after_seq must not be negative")
    if f.after_seq and not f.instance_id:
        raise InvalidRequest("filter.after_seq needs filter.instance_id (a seq is a place in "
                             "one chain)")
    return EventFilter(
        kinds=event_kinds(f.kinds), actor=f.actor,
        since_us=timestamps.micros(f, "since", "filter.since"),
        until_us=timestamps.micros(f, "until", "filter.until"), instance_id=f.instance_id,
        after_seq=f.after_seq)


def record_to_proto(r: AuditRecord) -> pb.AuditRecord:
    decided_at = timestamp_pb2.Timestamp()
    decided_at.FromMicroseconds(r.decided_at_us)
    return pb.AuditRecord(
        decision_id=r.decision_id, instance_id=r.instance_id, seq=r.seq, decided_at=decided_at,
        kind=r.kind, caller_id=r.caller_id, caller_role=r.caller_role, request_id=r.request_id,
        tenant_id=r.tenant_id, principal_id=r.principal_id, request_json=r.request_json,
        effect=_EFFECTS[r.effect],
        violations=[gpb.Violation(principle=v.principle, severity=_SEVERITIES[v.severity],
                                  message=v.message) for v in r.violations],
        policy_revision=r.policy_revision, constitutional_hash=r.constitutional_hash,
        cached=r.cached, latency_us=r.latency_us, escalation_id=r.escalation_id,
        prev_hash=r.prev_hash, record_hash=r.record_hash, malformed=r.malformed,
        source=r.source, schema=r.schema, data=r.data,
    )


def record_from_proto(r: pb.AuditRecord) -> StoredRecord:
    """The inverse of :func:`record_to_proto` (exports verified offline); ValueError if bad."""
    if r.effect not in _FROM_PB or any(v.severity not in _SEVERITY_FROM_PB
                                        for v in r.violations):
        raise ValueError(f"record {r.instance_id}#{r.seq}: an unknown effect or severity")
    return StoredRecord(
        decision_id=r.decision_id, instance_id=r.instance_id, seq=r.seq,
        decided_at_us=r.decided_at.ToMicroseconds(), kind=r.kind, caller_id=r.caller_id,
        caller_role=r.caller_role, request_id=r.request_id, tenant_id=r.tenant_id,
        principal_id=r.principal_id, request_json=r.request_json, effect=_FROM_PB[r.effect],
        violations=tuple(Violation(v.principle, _SEVERITY_FROM_PB[v.severity], v.message)
                         for v in r.violations),
        policy_revision=r.policy_revision, constitutional_hash=r.constitutional_hash,
        cached=r.cached, latency_us=r.latency_us, escalation_id=r.escalation_id,
        prev_hash=r.prev_hash, record_hash=r.record_hash, malformed=r.malformed, source=r.source,
        schema=r.schema, data=r.data,
    )
