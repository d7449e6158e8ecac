# Shared fixtures for the constitution's unit tests. Tests live in package
# acgs.constitution_test; every rule named test_* must evaluate to true.
#
# Tests call constitution.evaluate(request, policy data) instead of
# overriding input or data with `with`: regopy 1.5.2 aborts on `with` when the
# evaluated rule refers to other rules.
package acgs.constitution_test

import rego.v1

import data.acgs.constitution

policy_data := data.acgs.constitution_data

# A request every principle accepts: a viewer reading a document in its own
# tenant. Each test states only how its request differs from this one.
base := {
	"tenant_id": "t1",
	"principal": {"id": "agent-7", "roles": ["viewer"], "tenant_id": "t1", "attributes": {}},
	"action": {"type": "read", "attributes": {}},
	"resource": {"type": "document", "id": "d1", "tenant_id": "t1", "attributes": {}},
	"context": {},
}

# The base request with `patch` merged in, two levels deep: a patch of
# {"principal": {"roles": [...]}} keeps the principal's id and tenant.
# (object.union merges recursively in OPA but only one level in regopy 1.5.2,
# so each top-level object is merged explicitly.)
request(patch) := {key: value |
	some key in object.keys(base) | object.keys(patch)
	value := merged(object.get(base, key, null), object.get(patch, key, null))
}

merged(old, new) := object.union(old, new) if {
	is_object(old)
	is_object(new)
} else := old if {
	new == null
} else := new

# The decision on the base request patched with `patch`.
decide(patch) := constitution.evaluate(request(patch), policy_data)

# The same, under policy data with `roles_patch` merged into each named role
# and the top-level keys of `data_patch` replaced.
decide_under(patch, roles_patch, data_patch) := constitution.evaluate(request(patch), cfg) if {
	roles := {name: role |
		some name in object.keys(policy_data.roles)
		role := object.union(policy_data.roles[name], object.get(roles_patch, name, {}))
	}
	cfg := object.union(object.union(policy_data, data_patch), {"roles": roles})
}

principles(d) := {v.principle | some v in d.violations}

# True when `d` has effect `effect` and names exactly the principles `ps`.
is_decision(d, effect, ps) if {
	d.effect == effect
	principles(d) == ps
}

as_role(role, action_type) := {"principal": {"roles": [role]}, "action": {"type": action_type}}
