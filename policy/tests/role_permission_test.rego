package acgs.constitution_test

import rego.v1


tables contains json.unmarshal(`[
{"name": "role without the permission", "patch": {"action": {"type": "write"}}, "effect": "DENY", "principles": ["role_permission"], "violations": [{"principle": "role_permission", "severity": "high", "message": "no role of the principal ('viewer') permits action 'write'"}]},
{"name": "unknown role permits nothing", "patch": {"principal": {"roles": ["superuser"]}, "action": {"type": "read"}}, "effect": "DENY", "principles": ["role_permission"]},
{"name": "no roles", "patch": {"principal": {"roles": []}}, "effect": "DENY", "principles": ["role_permission"], "messages": [[0, "no role of the principal (none) permits action 'read'"]]},
{"name": "roles not a list", "patch": {"principal": {"roles": "admin"}}, "effect": "DENY", "principles": ["role_permission"]},
{"name": "roles that are not strings", "patch": {"principal": {"roles": [7, null]}}, "effect": "DENY", "principles": ["role_permission"], "messages": [[0, "no role of the principal (none) permits action 'read'"]]},
{"name": "empty action type", "patch": {"action": {"type": ""}}, "effect": "DENY", "principles": ["role_permission"], "messages": [[0, "no role of the principal ('viewer') permits action (empty)"]]},
{"name": "action type not a string", "patch": {"action": {"type": 3}}, "effect": "DENY", "principles": ["role_permission"], "messages": [[0, "no role of the principal ('viewer') permits action (not shown)"]]},
{"name": "missing action type", "patch": {"action": {"type": null}}, "effect": "DENY", "principles": ["role_permission"], "messages": [[0, "no role of the principal ('viewer') permits action (missing)"]]},
{"name": "any role may permit", "patch": {"principal": {"roles": ["viewer", "operator"]}, "action": {"type": "write"}}, "effect": "ALLOW", "principles": []},
{"name": "unknown roles are ignored", "patch": {"principal": {"roles": ["bogus", "analyst"]}, "action": {"type": "analyze"}}, "effect": "ALLOW", "principles": []},
{"name": "roles as an object", "patch": {"principal": {"roles": {"a": "operator"}}, "action": {"type": "write"}}, "effect": "ALLOW", "principles": []},
{"name": "permissions come from data", "patch": {"action": {"type": "write"}}, "roles": {"viewer": {"actions": ["write"]}}, "effect": "ALLOW", "principles": []},
{"name": "unknown action of an unknown role", "patch": {"principal": {"roles": ["ghost"]}, "action": {"type": "haunt"}}, "effect": "DENY", "principles": ["role_permission"], "messages": [[0, "no role of the principal ('ghost') permits action 'haunt'"]]}
]`)
