package acgs.constitution_test

import rego.v1


tables contains json.unmarshal(`[
{"name": "analyst with an allowed purpose", "patch": {"principal": {"roles": ["analyst"]}, "action": {"attributes": {"purpose": "fraud_investigation"}}, "resource": {"attributes": {"contains_pii": true}}}, "effect": "ALLOW", "principles": []},
{"name": "approver with an allowed purpose", "patch": {"principal": {"roles": ["approver"]}, "action": {"attributes": {"purpose": "compliance_audit"}}, "resource": {"attributes": {"contains_pii": true}}}, "effect": "ALLOW", "principles": []},
{"name": "role without PII rights", "patch": {"principal": {"roles": ["viewer"]}, "action": {"attributes": {"purpose": "fraud_investigation"}}, "resource": {"attributes": {"contains_pii": true}}}, "effect": "DENY", "principles": ["pii_purpose"], "violations": [{"principle": "pii_purpose", "severity": "high", "message": "no role of the principal ('viewer') may handle PII"}]},
{"name": "purpose not allowed", "patch": {"principal": {"roles": ["analyst"]}, "action": {"attributes": {"purpose": "marketing"}}, "resource": {"attributes": {"contains_pii": true}}}, "effect": "DENY", "principles": ["pii_purpose"], "messages": [[0, "purpose 'marketing' is not allowed for PII to the principal's roles; allowed: compliance_audit, fraud_investigation"]]},
{"name": "purpose of the wrong role", "patch": {"principal": {"roles": ["approver"]}, "action": {"attributes": {"purpose": "fraud_investigation"}}, "resource": {"attributes": {"contains_pii": true}}}, "effect": "DENY", "principles": ["pii_purpose"]},
{"name": "missing purpose", "patch": {"principal": {"roles": ["analyst"]}, "resource": {"attributes": {"contains_pii": true}}}, "effect": "DENY", "principles": ["pii_purpose"], "messages": [[0, "PII access must state action.attributes.purpose"]]},
{"name": "empty purpose", "patch": {"principal": {"roles": ["analyst"]}, "action": {"attributes": {"purpose": ""}}, "resource": {"attributes": {"contains_pii": true}}}, "effect": "DENY", "principles": ["pii_purpose"], "messages": [[0, "PII access must state action.attributes.purpose"]]},
{"name": "purpose not a string", "patch": {"principal": {"roles": ["analyst"]}, "action": {"attributes": {"purpose": 5}}, "resource": {"attributes": {"contains_pii": true}}}, "effect": "DENY", "principles": ["pii_purpose"]},
{"name": "PII flag on the action", "patch": {"action": {"attributes": {"pii": true}}}, "effect": "DENY", "principles": ["pii_purpose"]},
{"name": "PII flag on the action with an allowed purpose", "patch": {"principal": {"roles": ["analyst"]}, "action": {"attributes": {"pii": true, "purpose": "compliance_audit"}}}, "effect": "ALLOW", "principles": []},
{"name": "contains_pii false", "patch": {"resource": {"attributes": {"contains_pii": false}}}, "effect": "ALLOW", "principles": []},
{"name": "pii false", "patch": {"action": {"attributes": {"pii": false}}}, "effect": "ALLOW", "principles": []},
{"name": "unreadable PII flag", "patch": {"resource": {"attributes": {"contains_pii": "yes"}}}, "effect": "DENY", "principles": ["pii_purpose"]},
{"name": "null PII flag", "patch": {"resource": {"attributes": {"contains_pii": null}}}, "effect": "DENY", "principles": ["pii_purpose"]},
{"name": "zero PII flag", "patch": {"action": {"attributes": {"pii": 0}}}, "effect": "DENY", "principles": ["pii_purpose"]},
{"name": "purpose of a role the principal lacks", "patch": {"principal": {"roles": ["approver"]}, "action": {"attributes": {"purpose": "incident_response"}}, "resource": {"attributes": {"contains_pii": true}}}, "effect": "DENY", "principles": ["pii_purpose"]},
{"name": "purpose of another role of the principal", "patch": {"principal": {"roles": ["approver", "admin"]}, "action": {"attributes": {"purpose": "incident_response"}}, "resource": {"attributes": {"contains_pii": true}}}, "effect": "ALLOW", "principles": []},
{"name": "purpose of a role that does not permit the action", "patch": {"principal": {"roles": ["viewer", "analyst"]}, "action": {"type": "list", "attributes": {"purpose": "fraud_investigation", "pii": true}}}, "effect": "ALLOW", "principles": []}
]`)
