"""acgs.v1.Escalations: translate protobuf ↔ domain and call the EscalationService.

The resolver of an escalation is the authenticated caller (CallerResolver),
never a request field. Errors are mapped to status codes by
:mod:`acgs.entrypoints.grpc_registry`: NotFound → NOT_FOUND, InvalidRequest →
INVALID_ARGUMENT, InvalidTransition (resolved, expired) → FAILED_PRECONDITION,
SelfResolution (one's own action) → PERMISSION_DENIED, Unavailable and
AuditUnavailable → UNAVAILABLE.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from acgs.domain.tokens import AGENT
from acgs.entrypoints.callers import CallerResolver
from acgs.entrypoints.escalation_convert import (
    escalation_to_proto,
    event_to_proto,
    filter_from_proto,
    verdict_from_proto,
)
from acgs.entrypoints.status import Context
from acgs.errors import InvalidRequest
from acgs.service_layer.escalations import EscalationService
from acgs.v1 import escalations_pb2 as pb

SERVICE = "acgs.v1.Escalations"
DEFAULT_PAGE = 100
MAX_COMMENT = 4096


def _comment(text: str) -> str:
    if len(text) > MAX_COMMENT:
        raise InvalidRequest(f"comment is over {MAX_COMMENT} characters")
    return text


class EscalationsServicer:
    """List, Get, Watch, Acknowledge and Resolve escalations."""

    def __init__(self, *, service: EscalationService, callers: CallerResolver) -> None:
        self._service = service
        self._callers = callers

    async def ListEscalations(self, request: pb.ListEscalationsRequest, context: Context
                              ) -> pb.ListEscalationsResponse:
        await self._callers.resolve(context, f"{SERVICE}/ListEscalations")
        page = await self._service.list_escalations(
            filter_from_proto(request), page_size=request.page_size or DEFAULT_PAGE,
            cursor=request.page_token)
        return pb.ListEscalationsResponse(
            escalations=[escalation_to_proto(e) for e in page.escalations],
            next_page_token=page.next_cursor)

    async def GetEscalation(self, request: pb.GetEscalationRequest, context: Context
                            ) -> pb.Escalation:
        caller = await self._callers.resolve(context, f"{SERVICE}/GetEscalation")
        return escalation_to_proto(await self._service.get(request.escalation_id, caller))

    async def WatchEscalations(self, request: pb.WatchEscalationsRequest, context: Context
                               ) -> AsyncIterator[pb.EscalationEvent]:
        caller = await self._callers.resolve(context, f"{SERVICE}/WatchEscalations")
        if request.after_seq < 0:
            raise InvalidRequest("after_seq must not be negative")
        if caller.role == AGENT:
            # An agent waits for the outcome of its own escalation, one at a time.
            if not request.escalation_id:
                raise InvalidRequest("escalation_id is required for an agent's watch")
            await self._service.get(request.escalation_id, caller)  # NOT_FOUND unless its own
        async for event in self._service.watch(after_seq=request.after_seq,
                                               from_now=request.from_now,
                                               escalation_id=request.escalation_id):
            yield event_to_proto(event)

    async def AcknowledgeEscalation(self, request: pb.AcknowledgeEscalationRequest,
                                    context: Context) -> pb.Escalation:
        caller = await self._callers.resolve(context, f"{SERVICE}/AcknowledgeEscalation")
        return escalation_to_proto(await self._service.acknowledge(
            request.escalation_id, caller, comment=_comment(request.comment)))

    async def ResolveEscalation(self, request: pb.ResolveEscalationRequest, context: Context
                                ) -> pb.Escalation:
        caller = await self._callers.resolve(context, f"{SERVICE}/ResolveEscalation")
        return escalation_to_proto(await self._service.resolve(
            request.escalation_id, caller, verdict=verdict_from_proto(request.verdict),
            comment=_comment(request.comment)))
