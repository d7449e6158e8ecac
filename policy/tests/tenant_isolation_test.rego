package acgs.constitution_test

import rego.v1

import data.acgs.constitution

test_other_principal_tenant_denied if {
	d := decide({"principal": {"tenant_id": "t2"}})
	d.effect == "DENY"
	d.violations == [{
		"principle": "tenant_isolation",
		"severity": "critical",
		"message": "principal of tenant 't2' may not act in tenant 't1' on a resource of tenant 't1'",
	}]
}

test_other_resource_tenant_denied if {
	is_decision(decide({"resource": {"tenant_id": "t2"}}), "DENY", {"tenant_isolation"})
}

test_other_request_tenant_denied if {
	is_decision(decide({"tenant_id": "t2"}), "DENY", {"tenant_isolation"})
}

test_missing_tenant_denied if {
	is_decision(constitution.evaluate(object.remove(base, ["tenant_id"]), policy_data), "DENY", {"tenant_isolation"})
	is_decision(decide({"principal": {"tenant_id": ""}}), "DENY", {"tenant_isolation"})
	is_decision(decide({"resource": {"tenant_id": null}}), "DENY", {"tenant_isolation"})
}

# Three empty tenants are equal, but "no tenant" is never a tenant.
test_all_tenants_empty_denied if {
	d := decide({"tenant_id": "", "principal": {"tenant_id": ""}, "resource": {"tenant_id": ""}})
	is_decision(d, "DENY", {"tenant_isolation"})
	count(d.violations) == 3
}

test_non_string_tenant_denied if {
	d := decide({"tenant_id": 1, "principal": {"tenant_id": 1}, "resource": {"tenant_id": 1}})
	is_decision(d, "DENY", {"tenant_isolation"})
}
