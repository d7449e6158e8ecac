package acgs.constitution_test

import rego.v1

# The data lists exactly the types the constitution names, and each is
# permitted to some role, so a request that is otherwise allowed escalates
# instead of being denied.
test_high_impact_types_come_from_data if {
	policy_data.high_impact_actions == json.unmarshal(`[
		"policy_change", "credential_rotation", "agent_termination",
		"security_override", "fund_transfer", "data_deletion"
	]`)
	every t in policy_data.high_impact_actions {
		some role in policy_data.roles
		t in role.actions
	}
}


tables contains json.unmarshal(`[
{"name": "policy_change escalates", "patch": {"principal": {"roles": ["admin"]}, "action": {"type": "policy_change"}}, "effect": "ESCALATE", "principles": ["high_impact_action"], "violations": [{"principle": "high_impact_action", "severity": "high", "message": "action 'policy_change' is high-impact and needs human approval"}]},
{"name": "credential_rotation escalates", "patch": {"principal": {"roles": ["admin"]}, "action": {"type": "credential_rotation"}}, "effect": "ESCALATE", "principles": ["high_impact_action"], "violations": [{"principle": "high_impact_action", "severity": "high", "message": "action 'credential_rotation' is high-impact and needs human approval"}]},
{"name": "agent_termination escalates", "patch": {"principal": {"roles": ["admin"]}, "action": {"type": "agent_termination"}}, "effect": "ESCALATE", "principles": ["high_impact_action"], "violations": [{"principle": "high_impact_action", "severity": "high", "message": "action 'agent_termination' is high-impact and needs human approval"}]},
{"name": "security_override escalates", "patch": {"principal": {"roles": ["admin"]}, "action": {"type": "security_override"}}, "effect": "ESCALATE", "principles": ["high_impact_action"], "violations": [{"principle": "high_impact_action", "severity": "high", "message": "action 'security_override' is high-impact and needs human approval"}]},
{"name": "fund_transfer escalates", "patch": {"principal": {"roles": ["admin"]}, "action": {"type": "fund_transfer"}}, "effect": "ESCALATE", "principles": ["high_impact_action"], "violations": [{"principle": "high_impact_action", "severity": "high", "message": "action 'fund_transfer' is high-impact and needs human approval"}]},
{"name": "data_deletion escalates", "patch": {"principal": {"roles": ["admin"]}, "action": {"type": "data_deletion"}}, "effect": "ESCALATE", "principles": ["high_impact_action"], "violations": [{"principle": "high_impact_action", "severity": "high", "message": "action 'data_deletion' is high-impact and needs human approval"}]},
{"name": "impact score at the threshold", "patch": {"action": {"attributes": {"impact_score": 0.8}}}, "effect": "ESCALATE", "principles": ["high_impact_action"], "violations": [{"principle": "high_impact_action", "severity": "high", "message": "impact score reaches the threshold 0.8 and needs human approval"}]},
{"name": "impact score one", "patch": {"action": {"attributes": {"impact_score": 1}}}, "effect": "ESCALATE", "principles": ["high_impact_action"]},
{"name": "impact score just below the threshold", "patch": {"action": {"attributes": {"impact_score": 0.79}}}, "effect": "ALLOW", "principles": []},
{"name": "impact score zero", "patch": {"action": {"attributes": {"impact_score": 0}}}, "effect": "ALLOW", "principles": []},
{"name": "unreadable impact score", "patch": {"action": {"attributes": {"impact_score": "low"}}}, "effect": "ESCALATE", "principles": ["high_impact_action"], "messages": [[0, "impact score 'low' is not a number and needs human review"]]},
{"name": "null impact score", "patch": {"action": {"attributes": {"impact_score": null}}}, "effect": "ESCALATE", "principles": ["high_impact_action"], "messages": [[0, "impact score (missing) is not a number and needs human review"]]},
{"name": "false impact score", "patch": {"action": {"attributes": {"impact_score": false}}}, "effect": "ESCALATE", "principles": ["high_impact_action"]},
{"name": "type and score both reported", "patch": {"principal": {"roles": ["admin"]}, "action": {"type": "fund_transfer", "attributes": {"impact_score": 0.9}}}, "effect": "ESCALATE", "principles": ["high_impact_action"], "count": 2},
{"name": "threshold comes from data", "patch": {"action": {"attributes": {"impact_score": 0.5}}}, "data": {"impact_threshold": 0.5}, "effect": "ESCALATE", "principles": ["high_impact_action"], "messages": [[0, "impact score reaches the threshold 0.5 and needs human approval"]]},
{"name": "absent score with a threshold of zero", "data": {"impact_threshold": 0}, "effect": "ESCALATE", "principles": ["high_impact_action"]},
{"name": "without a threshold in data", "patch": {"action": {"attributes": {"impact_score": 0.85}}}, "config": {"roles": {"viewer": {"actions": ["read"], "priority_ceiling": 1, "pii_purposes": []}}}, "effect": "ESCALATE", "principles": ["high_impact_action"], "messages": [[0, "impact score reaches the threshold 0.8 and needs human approval"]]},
{"name": "high-impact action across tenants is denied", "patch": {"principal": {"roles": ["admin"], "tenant_id": "t2"}, "action": {"type": "data_deletion"}}, "effect": "DENY", "principles": ["tenant_isolation"]},
{"name": "high-impact action without permission is denied", "patch": {"action": {"type": "policy_change", "attributes": {"impact_score": 0.99}}}, "effect": "DENY", "principles": ["role_permission"]}
]`)
