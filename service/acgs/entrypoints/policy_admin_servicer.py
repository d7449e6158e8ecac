"""acgs.v1.PolicyAdmin: translate protobuf ↔ domain and call the policy lifecycle.

Errors are mapped to status codes by :mod:`acgs.entrypoints.status`:
PolicyError (syntax with file:line, failing tests, unsupported built-in) and
InvalidRequest → INVALID_ARGUMENT; ConstitutionMismatch and BadSignature →
FAILED_PRECONDITION, as is a rollback with nothing to roll back to;
NotFound → NOT_FOUND; Unavailable (database) → UNAVAILABLE. The authenticated
caller is the actor of every change (its id, role and identity go to the
policy history and the change's audit event).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Protocol

from google.protobuf import timestamp_pb2

from acgs.domain import canonical
from acgs.domain.policy_history import HistoryEntry
from acgs.domain.policy_version import ActivationOutcome, InstanceInfo, PolicyVersion
from acgs.entrypoints import timestamps
from acgs.entrypoints.callers import CallerResolver
from acgs.entrypoints.convert import checked_text
from acgs.entrypoints.status import Context
from acgs.errors import InvalidRequest
from acgs.service_layer.policy_admin import PolicyAdminService
from acgs.service_layer.policy_replay import ReplayReport
from acgs.service_layer.policy_shadow import ShadowPlan, ShadowReport
from acgs.service_layer.policy_shadow_fleet import DEFAULT_EXAMPLES, ShadowAdmin
from acgs.v1 import policy_admin_pb2 as pb

_SERVICE = "acgs.v1.PolicyAdmin/"
_DEFAULT_WAIT_S, _MAX_WAIT_S = 10.0, 30.0
_DEFAULT_REPLAY_LIMIT = 10_000
_DEFAULT_SAMPLE = 0.1
_DEFAULT_HISTORY, _MAX_HISTORY = 50, 1000
_MAX_MESSAGE = 1000
_MAX_SEQ = 2**63 - 1  # a bigint


class Replayer(Protocol):
    """Re-evaluates recorded decisions under a candidate version (PolicyReplayer)."""

    def replay(self, *, revision: str, since_us: int | None, until_us: int | None, limit: int,
               examples: int, sample: float = ...) -> AsyncIterator[ReplayReport]: ...


class PolicyAdminServicer:
    """Every PolicyAdmin method; the caller (an admin) is recorded as creator / activator."""

    def __init__(self, *, service: PolicyAdminService, callers: CallerResolver,
                 replayer: Replayer | None = None, shadow: ShadowAdmin | None = None) -> None:
        self._service = service
        self._callers = callers
        self._replayer = replayer
        self._shadow = shadow

    async def CreatePolicyVersion(self, request: pb.CreatePolicyVersionRequest,
                                  context: Context) -> pb.PolicyVersion:
        caller = await self._callers.resolve(context, _SERVICE + "CreatePolicyVersion")
        upload = await self._service.create(
            modules=dict(request.modules), data_json=request.data_json,
            manifest_json=request.manifest_json, signature=request.signature,
            caller=caller, message=_message(request.message))
        out = version_to_proto(upload.version)
        out.tests_passed = upload.tests_passed
        out.already_stored = not upload.created
        out.signature_attached = upload.signature_attached
        return out

    async def ValidatePolicy(self, request: pb.CreatePolicyVersionRequest,
                             context: Context) -> pb.ValidatePolicyResponse:
        await self._callers.resolve(context, _SERVICE + "ValidatePolicy")
        checked = await self._service.validate(
            modules=dict(request.modules), data_json=request.data_json,
            manifest_json=request.manifest_json, signature=request.signature)
        return pb.ValidatePolicyResponse(revision=checked.revision,
                                         tests_passed=checked.tests_passed)

    async def ListPolicyVersions(self, request: pb.ListPolicyVersionsRequest,
                                 context: Context) -> pb.ListPolicyVersionsResponse:
        await self._callers.resolve(context, _SERVICE + "ListPolicyVersions")
        state = await self._service.state()
        desired = state.desired_revision if state else ""
        versions = [version_to_proto(v, desired=desired)
                    for v in await self._service.list_versions()]
        return pb.ListPolicyVersionsResponse(versions=versions)

    async def GetPolicyVersion(self, request: pb.GetPolicyVersionRequest,
                               context: Context) -> pb.PolicyVersion:
        await self._callers.resolve(context, _SERVICE + "GetPolicyVersion")
        version = await self._service.get_version(request.revision)
        state = await self._service.state()
        return version_to_proto(version, desired=state.desired_revision if state else "")

    async def ActivatePolicyVersion(self, request: pb.ActivatePolicyVersionRequest,
                                    context: Context) -> pb.ActivationResult:
        caller = await self._callers.resolve(context, _SERVICE + "ActivatePolicyVersion")
        outcome = await self._service.activate(
            request.revision, caller=caller, message=_message(request.message),
            wait_s=_wait_s(request.timeout_ms, context))
        return outcome_to_proto(outcome)

    async def RollbackPolicy(self, request: pb.RollbackPolicyRequest,
                             context: Context) -> pb.ActivationResult:
        caller = await self._callers.resolve(context, _SERVICE + "RollbackPolicy")
        outcome = await self._service.rollback(
            caller=caller, reason=_message(request.message),
            wait_s=_wait_s(request.timeout_ms, context))
        return outcome_to_proto(outcome)

    async def ListPolicyHistory(self, request: pb.ListPolicyHistoryRequest,
                                context: Context) -> pb.ListPolicyHistoryResponse:
        await self._callers.resolve(context, _SERVICE + "ListPolicyHistory")
        if request.limit > _MAX_HISTORY:
            raise InvalidRequest(f"limit is at most {_MAX_HISTORY} (0: {_DEFAULT_HISTORY})")
        limit = request.limit or _DEFAULT_HISTORY
        before = min(request.before_seq, _MAX_SEQ)  # past any seq: from the newest
        entries = await self._service.history(limit=limit, before_seq=before)
        more = len(entries) == limit and entries[-1].seq > 1
        return pb.ListPolicyHistoryResponse(
            entries=[history_to_proto(e) for e in entries],
            next_before_seq=entries[-1].seq if more else 0)

    async def ListInstances(self, request: pb.ListInstancesRequest,
                            context: Context) -> pb.ListInstancesResponse:
        await self._callers.resolve(context, _SERVICE + "ListInstances")
        state = await self._service.state()
        instances = [instance_to_proto(i) for i in await self._service.instances()]
        return pb.ListInstancesResponse(
            desired_revision=state.desired_revision if state else "",
            generation=state.generation if state else 0, instances=instances)

    async def ReplayDecisions(self, request: pb.ReplayDecisionsRequest,
                              context: Context) -> AsyncIterator[pb.ReplayProgress]:
        await self._callers.resolve(context, _SERVICE + "ReplayDecisions")
        if not request.revision:
            raise InvalidRequest("revision (the candidate version) is required")
        if self._replayer is None:
            raise InvalidRequest("replay needs the audit trail (ACGS_AUDIT_ENABLED)")
        if not 0.0 <= request.sample <= 1.0:
            raise InvalidRequest("sample is a fraction between 0 and 1 (0: every decision)")
        reports = self._replayer.replay(
            revision=request.revision,
            since_us=timestamps.micros(request, "since", "since"),
            until_us=timestamps.micros(request, "until", "until"),
            limit=request.limit or _DEFAULT_REPLAY_LIMIT, examples=request.examples or 3,
            sample=request.sample or 1.0)
        async for report in reports:
            yield report_to_proto(report)


    async def StartShadow(self, request: pb.StartShadowRequest,
                          context: Context) -> pb.ShadowState:
        caller = await self._callers.resolve(context, _SERVICE + "StartShadow")
        plan = await self._shadows().start(
            request.revision, sample=request.sample or _DEFAULT_SAMPLE,
            examples=request.examples or DEFAULT_EXAMPLES, started_by=caller)
        return plan_to_proto(plan)

    async def StopShadow(self, request: pb.StopShadowRequest, context: Context) -> pb.ShadowState:
        caller = await self._callers.resolve(context, _SERVICE + "StopShadow")
        return plan_to_proto(await self._shadows().stop(stopped_by=caller))

    async def GetShadowReport(self, request: pb.GetShadowReportRequest,
                              context: Context) -> pb.ShadowReport:
        await self._callers.resolve(context, _SERVICE + "GetShadowReport")
        plan, merged, servers = await self._shadows().report()
        return shadow_report_to_proto(plan, merged, servers)

    def _shadows(self) -> ShadowAdmin:
        if self._shadow is None:
            raise InvalidRequest("shadow evaluation needs the audit trail (ACGS_AUDIT_ENABLED)")
        return self._shadow


def _message(text: str) -> str:
    """A change's message (kept in the history and the trail): bounded, never silently cut."""
    return checked_text(text, "message", _MAX_MESSAGE).strip()


def _wait_s(timeout_ms: int, context: Context) -> float:
    if timeout_ms:
        return min(timeout_ms / 1000, _MAX_WAIT_S)
    remaining = context.time_remaining()
    if remaining is None:
        return _DEFAULT_WAIT_S
    return max(0.0, min(remaining - 0.5, _MAX_WAIT_S))


def _timestamp(at: dt.datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(at)
    return ts


def version_to_proto(v: PolicyVersion, *, desired: str = "") -> pb.PolicyVersion:
    return pb.PolicyVersion(
        revision=v.revision, name=v.name, version=v.version, created_by=v.created_by,
        created_at=_timestamp(v.created_at), signed=bool(v.signature), modules=dict(v.modules),
        data_json=v.data_json if v.modules else "", manifest_json=v.manifest_json if v.modules
        else "", desired=v.revision == desired, message=v.message)


def history_to_proto(e: HistoryEntry) -> pb.PolicyHistoryEntry:
    return pb.PolicyHistoryEntry(
        seq=e.seq, action=e.action, revision=e.revision, replaced_revision=e.replaced_revision,
        actor_id=e.actor_id, actor_role=e.actor_role, actor_identity=e.actor_identity,
        at=_timestamp(e.at), message=e.message, event_id=e.event_id, current=e.current,
        beneath=e.beneath, undoes=e.undoes)


def outcome_to_proto(o: ActivationOutcome) -> pb.ActivationResult:
    return pb.ActivationResult(revision=o.revision, generation=o.generation,
                               complete=o.complete, acknowledged=o.acknowledged,
                               pending=o.pending, previous_revision=o.previous_revision)


def report_to_proto(r: ReplayReport) -> pb.ReplayProgress:
    groups = [pb.ReplayGroup(change=change, count=count, examples=[
        pb.ReplayExample(decision_id=e.decision_id, request_id=e.request_id,
                         recorded_effect=e.recorded, replayed_effect=e.replayed)
        for e in r.examples.get(change, [])]) for change, count in sorted(r.counts.items())]
    return pb.ReplayProgress(replayed=r.replayed, changed=r.changed, skipped=r.skipped,
                             done=r.done, groups=groups if r.done else [])


def instance_to_proto(i: InstanceInfo) -> pb.Instance:
    return pb.Instance(instance_id=i.instance_id, address=i.address,
                       active_revision=i.active_revision, serving=i.serving,
                       last_heartbeat=_timestamp(i.last_heartbeat), live=i.live)


def plan_to_proto(plan: ShadowPlan | None) -> pb.ShadowState:
    if plan is None:
        return pb.ShadowState()
    return pb.ShadowState(candidate_revision=plan.revision, sample=plan.sample,
                          examples=plan.examples, generation=plan.generation)


def shadow_report_to_proto(plan: ShadowPlan | None, merged: ShadowReport,
                           servers: list[ShadowReport]) -> pb.ShadowReport:
    transitions = [pb.ShadowTransition(transition=t, count=n, examples=[
        pb.ShadowExample(decision_id=str(e.get("decision_id", "")),
                         instance_id=str(e.get("instance_id", "")),
                         live_revision=str(e.get("live_revision", "")),
                         input_json=canonical.dumps(e.get("input")))
        for e in merged.examples.get(t, [])]) for t, n in sorted(merged.counts.items())]
    return pb.ShadowReport(
        state=plan_to_proto(plan), evaluated=merged.evaluated, dropped=merged.dropped,
        differences=merged.differences, transitions=transitions,
        servers=[pb.ShadowServerReport(instance_id=r.instance_id, live_revision=r.live_revision,
                                       evaluated=r.evaluated, dropped=r.dropped,
                                       differences=r.differences) for r in servers])
