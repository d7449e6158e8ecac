# The decision contract: always defined, DENY over ESCALATE over ALLOW,
# deny by default, violations sorted.
package acgs.constitution_test

import rego.v1

import data.acgs.constitution

test_base_request_is_allowed if {
	decide({}) == {"effect": "ALLOW", "violations": []}
}

# `decision` is evaluate() applied to input and the policy data. It is
# defined even without any input (then it is a DENY).
test_decision_is_evaluate_of_input_and_data if {
	constitution.cfg == policy_data
	constitution.decision == constitution.evaluate(constitution.request, policy_data)
	constitution.decision.effect in {"ALLOW", "DENY", "ESCALATE"}
}

test_decision_defined_for_empty_input if {
	d := constitution.evaluate({}, policy_data)
	is_decision(d, "DENY", {"tenant_isolation", "role_permission"})
}

# Fields of the wrong type must neither error nor leave the decision undefined.
test_decision_defined_for_malformed_input if {
	d := constitution.evaluate({"tenant_id": 3, "principal": "agent-7", "action": 5, "resource": []}, policy_data)
	is_decision(d, "DENY", {"tenant_isolation", "role_permission"})
}

test_decision_defined_for_null_fields if {
	d := constitution.evaluate({"tenant_id": null, "principal": null, "action": null, "resource": null}, policy_data)
	is_decision(d, "DENY", {"tenant_isolation", "role_permission"})
}

# Nothing objects, yet nothing allows an unidentified principal: deny by default, alone.
test_deny_by_default_for_unidentified_principal if {
	d := decide({"principal": {"id": ""}})
	d == {"effect": "DENY", "violations": [{
		"principle": "deny_by_default",
		"severity": "high",
		"message": "no rule of the constitution allows this request",
	}]}
	d2 := constitution.evaluate(object.remove(base, ["principal"]), policy_data)
	is_decision(d2, "DENY", {"tenant_isolation", "role_permission"})
}

# deny_by_default never joins a denial that a principle already explains.
test_deny_by_default_not_listed_with_principles if {
	is_decision(decide({"principal": {"id": ""}, "action": {"type": "write"}}), "DENY", {"role_permission"})
}

# deny_by_default also holds an unidentified principal's high-impact action:
# no escalation to a human for a request nobody could allow.
test_deny_by_default_is_not_escalated if {
	d := decide({"principal": {"id": 42, "roles": ["admin"]}, "action": {"type": "policy_change"}})
	is_decision(d, "DENY", {"deny_by_default"})
}

# A high-impact action that also breaks a principle is denied, not escalated.
test_deny_is_never_hidden_by_escalation if {
	d := decide({"action": {"type": "policy_change", "attributes": {"impact_score": 0.99}}})
	is_decision(d, "DENY", {"role_permission"})
}

test_every_deny_violation_is_listed if {
	d := decide({
		"principal": {"tenant_id": "t2"},
		"action": {"type": "write", "attributes": {"priority": 9}},
		"resource": {"attributes": {"contains_pii": true}},
	})
	is_decision(d, "DENY", {"tenant_isolation", "role_permission", "priority_ceiling", "pii_purpose"})
}

test_violations_sorted_by_principle_then_message if {
	d := decide({
		"tenant_id": "",
		"principal": {"tenant_id": ""},
		"action": {"type": "write", "attributes": {"priority": 9}},
	})
	[v.principle | some v in d.violations] == ["priority_ceiling", "role_permission", "tenant_isolation", "tenant_isolation"]
	d.violations[2].message == "principal.tenant_id is missing or empty"
	d.violations[3].message == "tenant_id is missing or empty"
}

test_violations_have_severity_and_message if {
	d := decide({"principal": {"tenant_id": "t2"}, "action": {"type": "write", "attributes": {"priority": "x"}}})
	count(d.violations) == 3
	every v in d.violations {
		v.severity in {"critical", "high", "medium", "low"}
		count(v.message) > 0
	}
}

# Without policy data nothing is permitted: fail closed.
test_missing_policy_data_denies if {
	is_decision(constitution.evaluate(base, {}), "DENY", {"role_permission"})
}
