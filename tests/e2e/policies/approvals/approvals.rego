# A small constitution for the escalation tests: reads are allowed, fund
# transfers are escalated and need two distinct human approvals (the policy's
# required_approvals), everything else is denied.
package acgs.constitution

import rego.v1

default decision := {"effect": "DENY", "violations": [{
	"principle": "deny_by_default", "severity": "high",
	"message": "no rule of this test constitution allows this request",
}]}

decision := {"effect": "ALLOW", "violations": []} if input.action.type == "read"

decision := {
	"effect": "ESCALATE",
	"violations": [{
		"principle": "high_impact_action", "severity": "high",
		"message": "a fund transfer needs two human approvals",
	}],
	"required_approvals": 2,
} if input.action.type == "fund_transfer"
