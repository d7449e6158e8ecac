package acgs.constitution_test

import rego.v1

pii_read(role, purpose) := {
	"principal": {"roles": [role]},
	"action": {"attributes": {"purpose": purpose}},
	"resource": {"attributes": {"contains_pii": true}},
}

test_pii_with_allowed_role_and_purpose if {
	is_decision(decide(pii_read("analyst", "fraud_investigation")), "ALLOW", set())
	is_decision(decide(pii_read("approver", "compliance_audit")), "ALLOW", set())
}

test_pii_role_without_pii_rights_denied if {
	d := decide(pii_read("viewer", "fraud_investigation"))
	d.effect == "DENY"
	d.violations == [{
		"principle": "pii_purpose",
		"severity": "high",
		"message": "no role of the principal ('viewer') may handle PII",
	}]
}

test_pii_wrong_purpose_denied if {
	is_decision(decide(pii_read("analyst", "marketing")), "DENY", {"pii_purpose"})

	# approver may handle PII, but not for fraud investigations.
	is_decision(decide(pii_read("approver", "fraud_investigation")), "DENY", {"pii_purpose"})
}

test_pii_without_purpose_denied if {
	d := decide({"principal": {"roles": ["analyst"]}, "resource": {"attributes": {"contains_pii": true}}})
	d.violations[0].message == "PII access must state action.attributes.purpose"
	is_decision(d, "DENY", {"pii_purpose"})
	is_decision(decide(pii_read("analyst", "")), "DENY", {"pii_purpose"})
	is_decision(decide(pii_read("analyst", 5)), "DENY", {"pii_purpose"})
}

test_pii_flag_on_action if {
	is_decision(decide({"action": {"attributes": {"pii": true}}}), "DENY", {"pii_purpose"})
	d := decide({"principal": {"roles": ["analyst"]}, "action": {"attributes": {"pii": true, "purpose": "compliance_audit"}}})
	is_decision(d, "ALLOW", set())
}

# Only an explicit false (or no flag) means "no PII"; an unreadable flag fails closed.
test_pii_flag_values if {
	is_decision(decide({"resource": {"attributes": {"contains_pii": false}}}), "ALLOW", set())
	is_decision(decide({"action": {"attributes": {"pii": false}}}), "ALLOW", set())
	is_decision(decide({"resource": {"attributes": {"contains_pii": "yes"}}}), "DENY", {"pii_purpose"})
	is_decision(decide({"resource": {"attributes": {"contains_pii": null}}}), "DENY", {"pii_purpose"})
}

# The purpose must belong to a role the principal holds.
test_purpose_of_another_role_does_not_count if {
	is_decision(decide(pii_read("approver", "incident_response")), "DENY", {"pii_purpose"})
	d := decide({
		"principal": {"roles": ["approver", "admin"]},
		"action": {"attributes": {"purpose": "incident_response"}},
		"resource": {"attributes": {"contains_pii": true}},
	})
	is_decision(d, "ALLOW", set())
}
