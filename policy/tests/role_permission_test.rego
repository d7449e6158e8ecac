package acgs.constitution_test

import rego.v1

test_role_without_permission_denied if {
	d := decide({"action": {"type": "write"}})
	d.effect == "DENY"
	d.violations == [{
		"principle": "role_permission",
		"severity": "high",
		"message": "no role of the principal ('viewer') permits action 'write'",
	}]
}

test_unknown_role_permits_nothing if {
	is_decision(decide(as_role("superuser", "read")), "DENY", {"role_permission"})
}

test_no_usable_roles_permit_nothing if {
	is_decision(decide({"principal": {"roles": []}}), "DENY", {"role_permission"})
	is_decision(decide({"principal": {"roles": "admin"}}), "DENY", {"role_permission"})
	is_decision(decide({"principal": {"roles": [7, null]}}), "DENY", {"role_permission"})
}

test_missing_action_type_denied if {
	is_decision(decide({"action": {"type": ""}}), "DENY", {"role_permission"})
	is_decision(decide({"action": {"type": 3}}), "DENY", {"role_permission"})
}

# Permissions are the union over the principal's roles.
test_any_role_may_permit if {
	is_decision(decide({"principal": {"roles": ["viewer", "operator"]}, "action": {"type": "write"}}), "ALLOW", set())
	is_decision(decide({"principal": {"roles": ["bogus", "analyst"]}, "action": {"type": "analyze"}}), "ALLOW", set())
}

test_permissions_come_from_data if {
	d := decide_under({"action": {"type": "write"}}, {"viewer": {"actions": ["write"]}}, {})
	is_decision(d, "ALLOW", set())
}

# Every high-impact action type is permitted to some role, so a request that
# is otherwise allowed escalates instead of being denied.
test_high_impact_actions_permitted_to_some_role if {
	every t in policy_data.high_impact_actions {
		some role in policy_data.roles
		t in role.actions
	}
}
