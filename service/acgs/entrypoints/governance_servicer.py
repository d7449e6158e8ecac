"""acgs.v1.Governance: translate protobuf ↔ domain and call the DecisionService."""

from __future__ import annotations

from acgs.entrypoints import convert
from acgs.entrypoints.callers import CallerResolver
from acgs.entrypoints.status import Context
from acgs.errors import LimitExceeded
from acgs.service_layer.decisions import DecisionService
from acgs.v1 import governance_pb2 as pb

HASH_METADATA = "x-constitutional-hash"
DECIDE = "acgs.v1.Governance/Decide"
DECIDE_BATCH = "acgs.v1.Governance/DecideBatch"
EVALUATE = "acgs.v1.Governance/Evaluate"


def metadata_value(context: Context, key: str) -> str:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else ""
    return ""


class GovernanceServicer:
    """Decide, DecideBatch and Evaluate. Errors are mapped to codes by grpc_registry."""

    def __init__(
        self,
        *,
        service: DecisionService,
        callers: CallerResolver,
        max_batch: int,
        max_input_depth: int,
        limits: convert.StringLimits = convert.DEFAULT_LIMITS,
    ) -> None:
        self._service = service
        self._limits = limits
        self._callers = callers
        self._max_batch = max_batch
        self._max_depth = max_input_depth

    async def Decide(self, request: pb.DecideRequest, context: Context) -> pb.Decision:
        caller = await self._callers.resolve(context, DECIDE)
        domain_request = convert.decision_request(
            request, metadata_hash=metadata_value(context, HASH_METADATA),
            max_depth=self._max_depth, limits=self._limits,
        )
        decision = await self._service.decide(
            domain_request, caller, deadline_s=context.time_remaining()
        )
        return convert.decision_to_proto(decision)

    async def DecideBatch(
        self, request: pb.DecideBatchRequest, context: Context
    ) -> pb.DecideBatchResponse:
        caller = await self._callers.resolve(context, DECIDE_BATCH)
        if len(request.requests) > self._max_batch:
            raise LimitExceeded(
                f"batch of {len(request.requests)} requests exceeds the limit of {self._max_batch}"
            )
        header = metadata_value(context, HASH_METADATA)
        items = [
            convert.decision_request(r, metadata_hash=header, max_depth=self._max_depth,
                                     limits=self._limits)
            for r in request.requests
        ]
        decisions = await self._service.decide_batch(
            items, caller, deadline_s=context.time_remaining()
        )
        return pb.DecideBatchResponse(decisions=[convert.decision_to_proto(d) for d in decisions])

    async def Evaluate(self, request: pb.EvaluateRequest, context: Context) -> pb.EvaluateResponse:
        caller = await self._callers.resolve(context, EVALUATE)
        input_value = convert.parse_input_json(request.input_json, max_depth=self._max_depth,
                                               limits=self._limits)
        evaluation, decision_id = await self._service.evaluate(
            request.path,
            input_value,
            caller,
            constitutional_hash=request.constitutional_hash
            or metadata_value(context, HASH_METADATA),
            deadline_s=context.time_remaining(),
        )
        return pb.EvaluateResponse(
            result_json=evaluation.result_json,
            undefined=evaluation.undefined,
            policy_revision=evaluation.policy_revision,
            decision_id=decision_id,
        )
