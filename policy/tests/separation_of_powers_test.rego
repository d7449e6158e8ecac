package acgs.constitution_test

import rego.v1


tables contains json.unmarshal(`[
{"name": "approving own output", "patch": {"principal": {"roles": ["approver"]}, "action": {"type": "approve"}, "resource": {"type": "output", "attributes": {"created_by": "agent-7"}}}, "effect": "DENY", "principles": ["separation_of_powers"], "violations": [{"principle": "separation_of_powers", "severity": "critical", "message": "principal 'agent-7' may not review its own output (action 'approve')"}]},
{"name": "validating own output", "patch": {"principal": {"roles": ["agent"]}, "action": {"type": "validate_output"}, "resource": {"type": "output", "attributes": {"created_by": "agent-7"}}}, "effect": "DENY", "principles": ["separation_of_powers"]},
{"name": "approving another principal's output", "patch": {"principal": {"roles": ["approver"]}, "action": {"type": "approve"}, "resource": {"type": "output", "attributes": {"created_by": "agent-9"}}}, "effect": "ALLOW", "principles": []},
{"name": "validating another principal's output", "patch": {"principal": {"roles": ["agent"]}, "action": {"type": "validate_output"}, "resource": {"type": "output", "attributes": {"created_by": "agent-9"}}}, "effect": "ALLOW", "principles": []},
{"name": "unknown creator is not self", "patch": {"principal": {"roles": ["approver"]}, "action": {"type": "approve"}}, "effect": "ALLOW", "principles": []},
{"name": "other actions on own output", "patch": {"principal": {"roles": ["agent"]}, "action": {"type": "write"}, "resource": {"type": "output", "attributes": {"created_by": "agent-7"}}}, "effect": "ALLOW", "principles": []},
{"name": "self-review listed with other denials", "patch": {"principal": {"roles": ["viewer"]}, "action": {"type": "approve"}, "resource": {"type": "output", "attributes": {"created_by": "agent-7"}}}, "effect": "DENY", "principles": ["separation_of_powers", "role_permission"]},
{"name": "empty creator and empty principal", "patch": {"principal": {"id": "", "roles": ["approver"]}, "action": {"type": "approve"}, "resource": {"attributes": {"created_by": ""}}}, "effect": "DENY", "principles": ["deny_by_default"]},
{"name": "creator that is not a string", "patch": {"principal": {"id": 7, "roles": ["approver"]}, "action": {"type": "approve"}, "resource": {"attributes": {"created_by": 7}}}, "effect": "DENY", "principles": ["deny_by_default"]},
{"name": "unsafe creator is not echoed", "patch": {"principal": {"id": "a b", "roles": ["approver"]}, "action": {"type": "approve"}, "resource": {"attributes": {"created_by": "a b"}}}, "effect": "DENY", "principles": ["separation_of_powers"], "messages": [[0, "principal (not shown) may not review its own output (action 'approve')"]]}
]`)
