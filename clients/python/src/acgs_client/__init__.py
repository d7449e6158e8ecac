"""acgs-client: call ACGS-2, the constitutional governance decision service.

    from acgs_client import Client

    with Client() as acgs:                      # ACGS_ADDR, ACGS_TOKEN from the environment
        d = acgs.decide(tenant_id="t1", principal={"id": "agent-7", "roles": ["operator"],
                        "tenant_id": "t1"}, action="read",
                        resource={"type": "document", "id": "d1", "tenant_id": "t1"})
        if d.allowed: ...

Only ``Decision.allowed`` permits an action. A DENY with ``fail_safe`` means the server
could not decide (it never allows in doubt); an ESCALATE carries ``escalation_id``, which
``wait_for_escalation`` follows until a human approves or denies.
"""

from acgs_client.aio import AsyncClient
from acgs_client.client import Client
from acgs_client.config import CONSTITUTIONAL_HASH, ClientConfig
from acgs_client.errors import (
    AcgsError,
    ConstitutionMismatch,
    DeadlineExceeded,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from acgs_client.retry import RetryPolicy
from acgs_client.types import (
    Action,
    Decision,
    DecisionRequest,
    Escalation,
    Evaluation,
    Event,
    EventPage,
    Principal,
    Resource,
    Violation,
    decision_request,
)

__all__ = [
    "CONSTITUTIONAL_HASH",
    "AcgsError",
    "Action",
    "AsyncClient",
    "Client",
    "ClientConfig",
    "ConstitutionMismatch",
    "DeadlineExceeded",
    "Decision",
    "DecisionRequest",
    "Escalation",
    "Evaluation",
    "Event",
    "EventPage",
    "InvalidRequest",
    "NotFound",
    "PermissionDenied",
    "Principal",
    "RateLimited",
    "Resource",
    "RetryPolicy",
    "Unauthenticated",
    "Unavailable",
    "Violation",
    "decision_request",
]
