"""Which roles may call which gRPC method: the role table, as data.

Keys are fully-qualified services (``acgs.v1.Audit``) or methods
(``acgs.v1.Audit/GetDecision``); a method's own entry overrides its service's.
A method named nowhere is refused to every role (deny by default), so a new
service must be added here before anyone can call it. ``grpc.health.v1.Health``
and server reflection never pass through here: they stay open.
"""

from __future__ import annotations

from collections.abc import Mapping

from acgs.domain.tokens import ADMIN, AGENT, AUDITOR

AccessTable = Mapping[str, frozenset[str]]

ACCESS: AccessTable = {
    "acgs.v1.Governance": frozenset({AGENT}),
    "acgs.v1.Audit": frozenset({AUDITOR}),
    # Services to come: policy versions and escalations are the admins' business.
    "acgs.v1.PolicyAdmin": frozenset({ADMIN}),
    "acgs.v1.Escalations": frozenset({ADMIN}),
    # Auditors read and watch escalations; an agent reads those of its own requests (the
    # service hides the others), to learn their outcome. Only admins resolve.
    "acgs.v1.Escalations/ListEscalations": frozenset({ADMIN, AUDITOR}),
    # An agent may watch one escalation of its own (escalation_id set), to wait for it.
    "acgs.v1.Escalations/WatchEscalations": frozenset({ADMIN, AUDITOR, AGENT}),
    "acgs.v1.Escalations/GetEscalation": frozenset({ADMIN, AUDITOR, AGENT}),
}


def allowed_roles(table: AccessTable, method: str) -> frozenset[str]:
    """The roles that may call ``method`` ("package.Service/Method"); empty when none may."""
    if method in table:
        return table[method]
    service, _, _ = method.partition("/")
    return table.get(service, frozenset())
