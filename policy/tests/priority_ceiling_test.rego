package acgs.constitution_test

import rego.v1

test_priority_at_ceiling_allowed if {
	# viewer's ceiling is 1; protobuf Struct sends 1 as 1.0.
	is_decision(decide({"action": {"attributes": {"priority": 1}}}), "ALLOW", set())
	is_decision(decide({"action": {"attributes": {"priority": 1.0}}}), "ALLOW", set())
}

test_priority_above_ceiling_denied if {
	d := decide({"action": {"attributes": {"priority": 1.5}}})
	d.effect == "DENY"
	d.violations == [{
		"principle": "priority_ceiling",
		"severity": "medium",
		"message": "action priority exceeds the priority ceiling of every role of the principal",
	}]
}

# An absent priority is 0, which even the ceiling of no known role (0) admits.
test_absent_priority_is_zero if {
	is_decision(decide({}), "ALLOW", set())
	is_decision(decide(as_role("superuser", "read")), "DENY", {"role_permission"})
}

test_priority_must_be_a_number if {
	is_decision(decide({"action": {"attributes": {"priority": "urgent"}}}), "DENY", {"priority_ceiling"})
	is_decision(decide({"action": {"attributes": {"priority": null}}}), "DENY", {"priority_ceiling"})
}

test_ceiling_is_max_over_roles if {
	roles := {"roles": ["viewer", "approver"]}
	is_decision(decide({"principal": roles, "action": {"attributes": {"priority": 7.0}}}), "ALLOW", set())
	is_decision(decide({"principal": roles, "action": {"attributes": {"priority": 7.5}}}), "DENY", {"priority_ceiling"})
}

# Ceilings compare as numbers, not as text (10 > 7 although "10" < "7").
test_ceiling_of_ten_beats_seven if {
	roles := {"roles": ["approver", "admin", "analyst"]}
	is_decision(decide({"principal": roles, "action": {"attributes": {"priority": 10.0}}}), "ALLOW", set())
	is_decision(decide({"principal": roles, "action": {"attributes": {"priority": 10.5}}}), "DENY", {"priority_ceiling"})
}

test_negative_priority_allowed if {
	is_decision(decide({"action": {"attributes": {"priority": -1}}}), "ALLOW", set())
}

test_unknown_roles_have_ceiling_zero if {
	d := decide({"principal": {"roles": ["superuser"]}, "action": {"attributes": {"priority": 1}}})
	is_decision(d, "DENY", {"role_permission", "priority_ceiling"})
}

test_ceilings_come_from_data if {
	d := decide_under({"action": {"attributes": {"priority": 4}}}, {"viewer": {"priority_ceiling": 4}}, {})
	is_decision(d, "ALLOW", set())
}
