# The decision contract: always defined, DENY over ESCALATE over ALLOW,
# deny by default, violations sorted.
package acgs.constitution_test

import rego.v1

import data.acgs.constitution

# `decision` is evaluate() applied to input and the policy data. It is
# defined even without any input (then it is a DENY).
test_decision_is_evaluate_of_input_and_data if {
	constitution.cfg == policy_data
	constitution.decision == constitution.evaluate(constitution.request, policy_data)
	constitution.decision.effect in {"ALLOW", "DENY", "ESCALATE"}
	well_formed(constitution.decision)
}


tables contains json.unmarshal(`[
{"name": "base request is allowed", "patch": {}, "effect": "ALLOW", "principles": [], "violations": []},
{"name": "empty input", "request": {}, "effect": "DENY", "principles": ["tenant_isolation", "role_permission"]},
{"name": "malformed input", "request": {"tenant_id": 3, "principal": "agent-7", "action": 5, "resource": []}, "effect": "DENY", "principles": ["tenant_isolation", "role_permission"]},
{"name": "null fields", "request": {"tenant_id": null, "principal": null, "action": null, "resource": null}, "effect": "DENY", "principles": ["tenant_isolation", "role_permission"]},
{"name": "non-object parts", "request": {"tenant_id": "t1", "principal": ["agent-7"], "action": "read", "resource": "d1"}, "effect": "DENY", "principles": ["tenant_isolation", "role_permission"]},
{"name": "unidentified principal is denied by default, alone", "patch": {"principal": {"id": ""}}, "effect": "DENY", "principles": ["deny_by_default"], "violations": [{"principle": "deny_by_default", "severity": "high", "message": "no rule of the constitution allows this request"}]},
{"name": "principal without id is denied by default", "patch": {"principal": {"id": null}}, "effect": "DENY", "principles": ["deny_by_default"]},
{"name": "principal id must be a string", "patch": {"principal": {"id": 7}}, "effect": "DENY", "principles": ["deny_by_default"]},
{"name": "no principal at all", "remove": ["principal"], "effect": "DENY", "principles": ["tenant_isolation", "role_permission"]},
{"name": "deny_by_default is not listed with principles", "patch": {"principal": {"id": ""}, "action": {"type": "write"}}, "effect": "DENY", "principles": ["role_permission"]},
{"name": "deny_by_default is not escalated", "patch": {"principal": {"id": 42, "roles": ["admin"]}, "action": {"type": "policy_change"}}, "effect": "DENY", "principles": ["deny_by_default"]},
{"name": "deny is never hidden by escalation", "patch": {"action": {"type": "policy_change", "attributes": {"impact_score": 0.99}}}, "effect": "DENY", "principles": ["role_permission"]},
{"name": "every deny violation is listed", "patch": {"principal": {"tenant_id": "t2"}, "action": {"type": "write", "attributes": {"priority": 9}}, "resource": {"attributes": {"contains_pii": true}}}, "effect": "DENY", "principles": ["tenant_isolation", "role_permission", "priority_ceiling", "pii_purpose"]},
{"name": "violations sorted by principle then message", "patch": {"tenant_id": "", "principal": {"tenant_id": ""}, "action": {"type": "write", "attributes": {"priority": 9}}}, "effect": "DENY", "principles": ["priority_ceiling", "role_permission", "tenant_isolation"], "order": ["priority_ceiling", "role_permission", "tenant_isolation", "tenant_isolation"], "messages": [[2, "principal.tenant_id is missing or empty"], [3, "tenant_id is missing or empty"]]},
{"name": "violations have severity and message", "patch": {"principal": {"tenant_id": "t2"}, "action": {"type": "write", "attributes": {"priority": "x"}}}, "effect": "DENY", "principles": ["tenant_isolation", "role_permission", "priority_ceiling"], "count": 3},
{"name": "without policy data nothing is permitted", "config": {}, "effect": "DENY", "principles": ["role_permission"]},
{"name": "unknown top-level and context fields are ignored", "patch": {"context": {"ip": "10.0.0.1"}, "extra": {"a": 1}}, "effect": "ALLOW", "principles": []},
{"name": "attributes that are not objects count as absent", "patch": {"action": {"attributes": "x"}, "resource": {"attributes": [1]}}, "effect": "ALLOW", "principles": []},
{"name": "missing attributes count as absent", "request": {"tenant_id": "t1", "principal": {"id": "agent-7", "roles": ["viewer"], "tenant_id": "t1"}, "action": {"type": "read"}, "resource": {"tenant_id": "t1"}}, "effect": "ALLOW", "principles": []},
{"name": "unsafe values are not echoed", "patch": {"principal": {"tenant_id": "t\"2"}, "resource": {"tenant_id": "t 3"}}, "effect": "DENY", "principles": ["tenant_isolation"], "messages": [[0, "principal of tenant (not shown) may not act in tenant 't1' on a resource of tenant (not shown)"]]},
{"name": "long values are not echoed", "patch": {"tenant_id": "a234567890123456789012345678901234567890123456789012345678901234", "resource": {"tenant_id": "a2345678901234567890123456789012345678901234567890123456789012345"}}, "effect": "DENY", "principles": ["tenant_isolation"], "messages": [[0, "principal of tenant 't1' may not act in tenant 'a234567890123456789012345678901234567890123456789012345678901234' on a resource of tenant (not shown)"]]},
{"name": "roles are listed sorted, once each", "patch": {"principal": {"roles": ["viewer", "agent", "viewer", 7, "no such role", ""]}, "action": {"type": "deploy"}}, "effect": "DENY", "principles": ["role_permission"], "messages": [[0, "no role of the principal ('agent', 'viewer', (empty), (not shown)) permits action 'deploy'"]]}
]`)
