# The constitution's unit tests: package acgs.constitution_test; every rule
# named test_* must evaluate to true.
#
# Most tests are cases in tables, one table per *_test.rego file, each
# written as JSON in a raw string (`tables contains json.unmarshal(...)`).
# test_cases checks every case of every table; when it fails, query
# data.acgs.constitution_test.failed_cases for the names of the failing
# cases.
#
# Why tables of JSON rather than one rule per test: the service compiles the
# test modules into the same regopy bundle as the constitution, and regopy
# 1.5.2 pays for the size of the whole bundle on every decision (it
# re-verifies every statement, and every built-in call copies a frame with a
# slot for every local of every rule). A string costs nothing there; each
# test rule, literal or helper costs every decision some time. (The previous
# suite of 56 test rules, which this constitution passes as well, added about
# 45 µs to each decision; these tables about 15 µs.) Keep helpers few and
# small.
#
# Tests call constitution.evaluate(request, policy data) instead of
# overriding input or data with `with`: regopy 1.5.2 aborts on `with` when the
# evaluated rule refers to other rules.
package acgs.constitution_test

import rego.v1

import data.acgs.constitution

policy_data := data.acgs.constitution_data

test_cases if failed_cases == set()

failed_cases := {c.name | some table in tables; some c in table; not case_holds(c)}

# A case is an object:
#   name        unique name, reported by failed_cases
#   patch       merged into base_request two levels deep: {"principal":
#               {"roles": [...]}} keeps the principal's id and tenant
#   remove      top-level keys removed from base_request (before patch)
#   request     the whole request instead (base_request and patch unused)
#   roles       merged into the named roles of the policy data
#   data        top-level keys of the policy data replaced
#   config      the whole policy data instead
#   effect      the expected effect
#   principles  the expected set of principles named by the violations
#   violations  (optional) the exact expected violations
#   count       (optional) the expected number of violations
#   messages    (optional) [[index, message], ...] expected messages
#   order       (optional) the expected principle of each violation, in order
# Every decision must also be well formed (see well_formed).
case_holds(c) if {
	d := constitution.evaluate(case_request(c), case_config(c))
	d.effect == c.effect
	{v.principle | some v in d.violations} == {p | some p in c.principles}
	well_formed(d)
	object.get(c, "violations", d.violations) == d.violations
	object.get(c, "count", count(d.violations)) == count(d.violations)
	object.get(c, "order", [v.principle | some v in d.violations]) == [v.principle | some v in d.violations]
	every m in object.get(c, "messages", []) {
		d.violations[m[0]].message == m[1]
	}
}

# A request every principle accepts: a viewer reading a document in its own
# tenant. Each case states only how its request differs from this one.
base_request := json.unmarshal(`{
	"tenant_id": "t1",
	"principal": {"id": "agent-7", "roles": ["viewer"], "tenant_id": "t1", "attributes": {}},
	"action": {"type": "read", "attributes": {}},
	"resource": {"type": "document", "id": "d1", "tenant_id": "t1", "attributes": {}},
	"context": {}
}`)

case_request(c) := object.get(c, "request", merge(object.remove(base_request, object.get(c, "remove", [])), object.get(c, "patch", {})))

case_config(c) := object.get(c, "config", object.union(object.union(policy_data, object.get(c, "data", {})), {"roles": {name: object.union(policy_data.roles[name], object.get(object.get(c, "roles", {}), name, {})) | some name in object.keys(policy_data.roles)}}))

# `old` with `patch` merged in, two levels deep: an object in `patch` is
# merged into the object at the same key of `old`, anything else replaces.
# (object.union merges recursively in OPA but only one level in regopy 1.5.2.)
merge(old, patch) := object.union(old, object.union(
	{key: value | some key; value := patch[key]; not is_object(value)},
	{key: object.union(object.get(old, key, {}), value) | some key; value := patch[key]; is_object(value)},
))

# Always an effect and a list of violations, each exactly a principle, a
# severity and a non-empty message, sorted by principle, then message, then
# severity; ALLOW exactly when there are no violations.
well_formed(d) if {
	object.keys(d) == {"effect", "violations"}
	d.effect in effects_for(d.violations)
	every v in d.violations {
		object.keys(v) == {"principle", "severity", "message"}
		v.severity in {"critical", "high", "medium", "low"}
		is_string(v.message)
		v.message != ""
	}
	order := [[x.principle, x.message, x.severity] | some x in d.violations]
	order == sort(order)
}

effects_for(violations) := {"ALLOW"} if {
	violations == []
} else := {"DENY", "ESCALATE"}
