"""Example requests and what the constitution (policy/) decides for them.

Each case is a full input document, as the server builds it from a gRPC
request, with the expected effect and the exact set of principles the
decision names. Tests parametrize over ``CASES`` (e.g. through a real gRPC
server); ``policy/README.md`` shows the same examples as a table.

Numbers are written as floats where protobuf's Struct would deliver them
that way (a priority of 5 arrives as 5.0); the constitution compares them
numerically, so 5 and 5.0 decide alike.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

ALLOW = "ALLOW"
DENY = "DENY"
ESCALATE = "ESCALATE"

HIGH_IMPACT_ACTIONS: tuple[str, ...] = (
    "policy_change",
    "credential_rotation",
    "agent_termination",
    "security_override",
    "fund_transfer",
    "data_deletion",
)


@dataclass(frozen=True)
class Case:
    name: str
    policy_input: dict[str, Any]
    effect: str
    principles: frozenset[str]


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``patch`` merged in: objects merge, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def request(
    role: str = "viewer",
    action: str = "read",
    *,
    action_attributes: dict[str, Any] | None = None,
    resource_attributes: dict[str, Any] | None = None,
    **patch: Any,
) -> dict[str, Any]:
    """A request by ``agent-7`` (one role, ``role``) of tenant ``t1`` on a document of ``t1``.

    ``patch`` is merged into the document last and can override anything
    (tenants, the role list, ids); to remove a field, delete it from the result.
    """
    doc: dict[str, Any] = {
        "tenant_id": "t1",
        "principal": {"id": "agent-7", "roles": [role], "tenant_id": "t1", "attributes": {}},
        "action": {"type": action, "attributes": dict(action_attributes or {})},
        "resource": {
            "type": "document",
            "id": "d1",
            "tenant_id": "t1",
            "attributes": dict(resource_attributes or {}),
        },
        "context": {"source": "constitution_cases"},
    }
    return _merge(doc, patch)


def _case(name: str, effect: str, principles: set[str], policy_input: dict[str, Any]) -> Case:
    return Case(name, policy_input, effect, frozenset(principles))


_NO_PRINCIPAL_ID = request()
del _NO_PRINCIPAL_ID["principal"]["id"]

CASES: list[Case] = [
    # --- ALLOW -------------------------------------------------------------
    _case("allow_viewer_reads_document", ALLOW, set(), request()),
    _case(
        "allow_operator_writes_at_priority_ceiling",
        ALLOW,
        set(),
        request("operator", "write", action_attributes={"priority": 5.0}),
    ),
    _case(
        "allow_ceiling_is_max_over_roles",
        ALLOW,
        set(),
        request(
            "viewer",
            "approve",
            action_attributes={"priority": 7.0},
            principal={"roles": ["viewer", "approver"]},
        ),
    ),
    _case(
        "allow_analyst_pii_for_allowed_purpose",
        ALLOW,
        set(),
        request(
            "analyst",
            "read",
            action_attributes={"purpose": "fraud_investigation"},
            resource_attributes={"contains_pii": True},
        ),
    ),
    _case(
        "allow_approver_approves_anothers_output",
        ALLOW,
        set(),
        request("approver", "approve", resource_attributes={"created_by": "agent-9"}),
    ),
    _case(
        "allow_impact_score_just_below_threshold",
        ALLOW,
        set(),
        request("agent", "execute", action_attributes={"impact_score": 0.79}),
    ),
    # --- DENY, one principle each --------------------------------------------
    _case(
        "deny_by_default_unidentified_principal",
        DENY,
        {"deny_by_default"},
        _NO_PRINCIPAL_ID,
    ),
    _case(
        "deny_tenant_isolation_principal_of_other_tenant",
        DENY,
        {"tenant_isolation"},
        request(principal={"tenant_id": "t2"}),
    ),
    _case(
        "deny_tenant_isolation_resource_of_other_tenant",
        DENY,
        {"tenant_isolation"},
        request(resource={"tenant_id": "t2"}),
    ),
    _case(
        "deny_tenant_isolation_missing_request_tenant",
        DENY,
        {"tenant_isolation"},
        request(tenant_id=""),
    ),
    _case(
        "deny_role_permission_viewer_writes",
        DENY,
        {"role_permission"},
        request("viewer", "write"),
    ),
    _case(
        "deny_role_permission_unknown_role",
        DENY,
        {"role_permission"},
        request("superuser", "read"),
    ),
    _case(
        "deny_priority_ceiling_exceeded",
        DENY,
        {"priority_ceiling"},
        request("operator", "write", action_attributes={"priority": 6.0}),
    ),
    _case(
        "deny_priority_ceiling_priority_not_a_number",
        DENY,
        {"priority_ceiling"},
        request("operator", "write", action_attributes={"priority": "urgent"}),
    ),
    _case(
        "deny_pii_purpose_role_without_pii_rights",
        DENY,
        {"pii_purpose"},
        request(
            "operator",
            "read",
            action_attributes={"purpose": "fraud_investigation"},
            resource_attributes={"contains_pii": True},
        ),
    ),
    _case(
        "deny_pii_purpose_purpose_not_allowed",
        DENY,
        {"pii_purpose"},
        request(
            "analyst",
            "read",
            action_attributes={"purpose": "marketing"},
            resource_attributes={"contains_pii": True},
        ),
    ),
    _case(
        "deny_pii_purpose_missing_purpose_on_pii_action",
        DENY,
        {"pii_purpose"},
        request("analyst", "export", action_attributes={"pii": True}),
    ),
    _case(
        "deny_separation_of_powers_approve_own_output",
        DENY,
        {"separation_of_powers"},
        request("approver", "approve", resource_attributes={"created_by": "agent-7"}),
    ),
    _case(
        "deny_separation_of_powers_validate_own_output",
        DENY,
        {"separation_of_powers"},
        request("agent", "validate_output", resource_attributes={"created_by": "agent-7"}),
    ),
    # --- DENY, several principles; DENY wins over ESCALATE -------------------
    _case(
        "deny_lists_every_violated_principle",
        DENY,
        {"tenant_isolation", "role_permission", "priority_ceiling", "pii_purpose"},
        request(
            "viewer",
            "write",
            action_attributes={"priority": 9.0},
            resource_attributes={"contains_pii": True},
            principal={"tenant_id": "t2"},
        ),
    ),
    _case(
        "deny_high_impact_action_without_permission",
        DENY,
        {"role_permission"},
        request("viewer", "policy_change", action_attributes={"impact_score": 0.99}),
    ),
    _case(
        "deny_high_impact_action_across_tenants",
        DENY,
        {"tenant_isolation"},
        request("admin", "fund_transfer", resource={"tenant_id": "t2"}),
    ),
    _case(
        "deny_empty_input",
        DENY,
        {"tenant_isolation", "role_permission"},
        {},
    ),
    # --- ESCALATE ------------------------------------------------------------
    *(
        _case(f"escalate_{action}", ESCALATE, {"high_impact_action"}, request("admin", action))
        for action in HIGH_IMPACT_ACTIONS
    ),
    _case(
        "escalate_operator_credential_rotation",
        ESCALATE,
        {"high_impact_action"},
        request("operator", "credential_rotation"),
    ),
    _case(
        "escalate_impact_score_at_threshold",
        ESCALATE,
        {"high_impact_action"},
        request("agent", "execute", action_attributes={"impact_score": 0.8}),
    ),
    _case(
        "escalate_impact_score_above_threshold",
        ESCALATE,
        {"high_impact_action"},
        request("viewer", "read", action_attributes={"impact_score": 0.95}),
    ),
    _case(
        "escalate_impact_score_one_as_float",
        ESCALATE,
        {"high_impact_action"},
        request("operator", "write", action_attributes={"impact_score": 1.0}),
    ),
]
