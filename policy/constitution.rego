# ACGS-2 constitution, constitutional hash cdd01ef066bc6cf2.
#
# Entrypoint: acgs/constitution/decision (data.acgs.constitution.decision).
#
# The constitution is written as a pure function, evaluate(request, cfg), of
# the input document and the policy data; `decision` only applies it to
# `input` and data.acgs.constitution_data. Tests call evaluate() directly
# rather than overriding input or data with `with`, which regopy 1.5.2
# cannot evaluate for rules like these (it aborts the process).
#
# facts.rego normalizes the input once; each principle in principles/ is a
# function from those facts to a set of violations. Every step tolerates
# missing or mistyped fields, so `decision` is always defined: doubt turns
# into a violation, never into an error or an undefined result.
package acgs.constitution

import rego.v1

default request := {}

request := input if is_object(input)

# Without policy data no role permits anything: fail closed.
default cfg := {}

cfg := data.acgs.constitution_data

decision := evaluate(request, cfg)

evaluate(req, config) := verdict(denials(f, config), escalations(f, config)) if {
	f := facts(req, config)
}

# Denials win over escalations, and escalations over ALLOW: an escalation
# never hides a DENY, and ALLOW is reached only when nothing objected and
# the explicit allow holds (see denials).
verdict(denied, escalated) := {"effect": "DENY", "violations": sorted_violations(denied)} if {
	count(denied) > 0
} else := {"effect": "ESCALATE", "violations": sorted_violations(escalated)} if {
	count(escalated) > 0
} else := {"effect": "ALLOW", "violations": []}

# The principles a request can break. When none objects but the explicit
# allow does not hold either, deny by default. deny_by_default is only ever
# named alone, so it never dilutes the principles that explain a denial.
denials(f, config) := broken if {
	broken := union({
		tenant_isolation(f),
		role_permission(f),
		priority_ceiling(f),
		pii_purpose(f),
		separation_of_powers(f, config),
	})
	count(broken) > 0
} else := {violation("deny_by_default", "high", "no rule of the constitution allows this request")} if {
	not allowed(f)
} else := set()

# Reasons a human must approve a request that no principle denies.
escalations(f, config) := high_impact_action(f, config)

# The explicit allow: an identified principal, acting in its own tenant, with
# a role that permits the action. Every other principle can only take away.
allowed(f) if {
	non_empty_string(f.principal_id)
	tenant_consistent(f.tenants)
	action_permitted(f)
}

# --- Shared helpers ---------------------------------------------------------

violation(principle, severity, message) := {
	"principle": principle,
	"severity": severity,
	"message": message,
}

# Sets have no contractual order, so sort explicitly by principle, then
# message, then severity. (Sorting the objects themselves would order them by
# message first: objects compare key by key, and "message" < "principle".)
sorted_violations(vs) := [v |
	some t in sort([[x.principle, x.message, x.severity] | some x in vs])
	v := violation(t[0], t[2], t[1])
]

non_empty_string(x) if {
	is_string(x)
	x != ""
}

# Strings in messages. regopy 1.5.2 differs from OPA in two ways that
# matter here:
#   - it writes strings into its output without JSON escaping, so a quote or
#     backslash from the input would corrupt the whole decision;
#   - sprintf prints some strings (results of concat, some function
#     arguments) with surrounding double quotes; trim_space returns a plain
#     copy. For the strings passed to plain() trim_space changes nothing.
plain(s) := trim_space(s)

# A value from the input, as it may appear in a message. Only short, plain
# identifiers are echoed (messages end up in logs, where arbitrary input
# should not be replayed). Numbers are not echoed: engines print floats
# differently, and messages should not depend on the engine.
shown(x) := sprintf("'%s'", [plain(x)]) if {
	is_string(x)
	regex.match(`^[A-Za-z0-9_.:@/+-]{1,64}$`, x)
} else := "(missing)" if {
	x == null
} else := "(empty)" if {
	x == ""
} else := "(not shown)"

# The principal's roles as readable text for messages.
roles_text(f) := plain(concat(", ", sort({shown(r) | some r in f.roles}))) if {
	count(f.roles) > 0
} else := "none"
