package acgs.constitution_test

import rego.v1


tables contains json.unmarshal(`[
{"name": "priority at the ceiling", "patch": {"action": {"attributes": {"priority": 1}}}, "effect": "ALLOW", "principles": []},
{"name": "priority at the ceiling as a float", "patch": {"action": {"attributes": {"priority": 1.0}}}, "effect": "ALLOW", "principles": []},
{"name": "priority above the ceiling", "patch": {"action": {"attributes": {"priority": 1.5}}}, "effect": "DENY", "principles": ["priority_ceiling"], "violations": [{"principle": "priority_ceiling", "severity": "medium", "message": "action priority exceeds the priority ceiling of every role of the principal"}]},
{"name": "absent priority is zero", "patch": {}, "effect": "ALLOW", "principles": []},
{"name": "absent priority with an unknown role", "patch": {"principal": {"roles": ["superuser"]}, "action": {"type": "read"}}, "effect": "DENY", "principles": ["role_permission"]},
{"name": "priority not a number", "patch": {"action": {"attributes": {"priority": "urgent"}}}, "effect": "DENY", "principles": ["priority_ceiling"], "messages": [[0, "action priority must be a number, got 'urgent'"]]},
{"name": "priority null", "patch": {"action": {"attributes": {"priority": null}}}, "effect": "DENY", "principles": ["priority_ceiling"], "messages": [[0, "action priority must be a number, got (missing)"]]},
{"name": "priority false", "patch": {"action": {"attributes": {"priority": false}}}, "effect": "DENY", "principles": ["priority_ceiling"], "messages": [[0, "action priority must be a number, got (not shown)"]]},
{"name": "priority a list", "patch": {"action": {"attributes": {"priority": [1]}}}, "effect": "DENY", "principles": ["priority_ceiling"]},
{"name": "ceiling is the max over roles", "patch": {"principal": {"roles": ["viewer", "approver"]}, "action": {"attributes": {"priority": 7.0}}}, "effect": "ALLOW", "principles": []},
{"name": "above the max over roles", "patch": {"principal": {"roles": ["viewer", "approver"]}, "action": {"attributes": {"priority": 7.5}}}, "effect": "DENY", "principles": ["priority_ceiling"]},
{"name": "ceiling of another permitted role", "patch": {"principal": {"roles": ["viewer", "approver"]}, "action": {"type": "read", "attributes": {"priority": 5}}}, "effect": "ALLOW", "principles": []},
{"name": "ceiling of a role that does not permit the action", "patch": {"principal": {"roles": ["viewer", "operator"]}, "action": {"type": "read", "attributes": {"priority": 4}}}, "effect": "ALLOW", "principles": []},
{"name": "ceiling of ten beats seven", "patch": {"principal": {"roles": ["approver", "admin", "analyst"]}, "action": {"attributes": {"priority": 10.0}}}, "effect": "ALLOW", "principles": []},
{"name": "above ten", "patch": {"principal": {"roles": ["approver", "admin", "analyst"]}, "action": {"attributes": {"priority": 10.5}}}, "effect": "DENY", "principles": ["priority_ceiling"]},
{"name": "negative priority", "patch": {"action": {"attributes": {"priority": -1}}}, "effect": "ALLOW", "principles": []},
{"name": "zero priority", "patch": {"action": {"attributes": {"priority": 0}}}, "effect": "ALLOW", "principles": []},
{"name": "unknown roles have ceiling zero", "patch": {"principal": {"roles": ["superuser"]}, "action": {"attributes": {"priority": 1}}}, "effect": "DENY", "principles": ["role_permission", "priority_ceiling"]},
{"name": "ceilings come from data", "patch": {"action": {"attributes": {"priority": 4}}}, "roles": {"viewer": {"priority_ceiling": 4}}, "effect": "ALLOW", "principles": []}
]`)
