package acgs.constitution_test

import rego.v1

review(role, action_type, creator) := {
	"principal": {"roles": [role]},
	"action": {"type": action_type},
	"resource": {"type": "output", "attributes": {"created_by": creator}},
}

test_approving_own_output_denied if {
	d := decide(review("approver", "approve", "agent-7"))
	d.effect == "DENY"
	d.violations == [{
		"principle": "separation_of_powers",
		"severity": "critical",
		"message": "principal 'agent-7' may not review its own output (action 'approve')",
	}]
}

test_validating_own_output_denied if {
	is_decision(decide(review("agent", "validate_output", "agent-7")), "DENY", {"separation_of_powers"})
}

test_reviewing_another_principals_output_allowed if {
	is_decision(decide(review("approver", "approve", "agent-9")), "ALLOW", set())
	is_decision(decide(review("agent", "validate_output", "agent-9")), "ALLOW", set())
}

test_unknown_creator_is_not_self if {
	is_decision(decide({"principal": {"roles": ["approver"]}, "action": {"type": "approve"}}), "ALLOW", set())
}

# Only review actions are restricted; an agent may keep writing its own output.
test_other_actions_on_own_output_allowed if {
	is_decision(decide(review("agent", "write", "agent-7")), "ALLOW", set())
}

test_self_review_listed_with_other_denials if {
	d := decide(review("viewer", "approve", "agent-7"))
	is_decision(d, "DENY", {"separation_of_powers", "role_permission"})
}
