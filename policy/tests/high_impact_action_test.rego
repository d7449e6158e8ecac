package acgs.constitution_test

import rego.v1

high_impact_types := [
	"policy_change", "credential_rotation", "agent_termination",
	"security_override", "fund_transfer", "data_deletion",
]

# The data lists exactly the types the constitution names.
test_high_impact_types_come_from_data if {
	policy_data.high_impact_actions == high_impact_types
}

test_each_high_impact_type_escalates if {
	every t in high_impact_types {
		d := decide(as_role("admin", t))
		d.effect == "ESCALATE"
		d.violations == [{
			"principle": "high_impact_action",
			"severity": "high",
			"message": concat("", ["action '", t, "' is high-impact and needs human approval"]),
		}]
	}
}

test_impact_score_at_threshold_escalates if {
	is_decision(decide({"action": {"attributes": {"impact_score": 0.8}}}), "ESCALATE", {"high_impact_action"})
	is_decision(decide({"action": {"attributes": {"impact_score": 1}}}), "ESCALATE", {"high_impact_action"})
}

test_impact_score_below_threshold_allowed if {
	is_decision(decide({"action": {"attributes": {"impact_score": 0.79}}}), "ALLOW", set())
	is_decision(decide({"action": {"attributes": {"impact_score": 0}}}), "ALLOW", set())
}

test_unreadable_impact_score_escalates if {
	is_decision(decide({"action": {"attributes": {"impact_score": "low"}}}), "ESCALATE", {"high_impact_action"})
	is_decision(decide({"action": {"attributes": {"impact_score": null}}}), "ESCALATE", {"high_impact_action"})
}

test_type_and_score_both_reported if {
	d := decide({"principal": {"roles": ["admin"]}, "action": {"type": "fund_transfer", "attributes": {"impact_score": 0.9}}})
	is_decision(d, "ESCALATE", {"high_impact_action"})
	count(d.violations) == 2
}

test_threshold_comes_from_data if {
	d := decide_under({"action": {"attributes": {"impact_score": 0.5}}}, {}, {"impact_threshold": 0.5})
	is_decision(d, "ESCALATE", {"high_impact_action"})
}

test_high_impact_across_tenants_denied if {
	d := decide({"principal": {"roles": ["admin"], "tenant_id": "t2"}, "action": {"type": "data_deletion"}})
	is_decision(d, "DENY", {"tenant_isolation"})
}
