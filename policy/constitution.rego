# ACGS-2 constitution, constitutional hash cdd01ef066bc6cf2.
#
# Entrypoint: acgs/constitution/decision (data.acgs.constitution.decision).
#
# The constitution is a function, evaluate(request, cfg), of the input
# document and the policy data; `decision` applies it to `input` and
# data.acgs.constitution_data. Tests call evaluate() directly rather than
# overriding input or data with `with`, which regopy 1.5.2 cannot evaluate
# for rules like these (it aborts the process).
#
# evaluate() decides in one of two ways, with the same answers:
#
#   - the common case first: a well-formed request that no principle objects
#     to (every field where the server puts it, an identified principal, one
#     tenant, a role that permits the action at its priority, no PII, no
#     self-review). These checks are sound but not complete: when they hold,
#     the request is allowed (or escalated, see allowed()); when they do not,
#     nothing is concluded from that.
#   - otherwise every principle in principles/ is checked in full. Each
#     returns the violations it finds (none, usually), in message order;
#     they are listed in principle order, so `violations` comes out sorted
#     by principle, then message, then severity without sorting.
#
# Every step tolerates missing or mistyped fields, so `decision` is always
# defined: doubt turns into a violation, never into an error or an undefined
# result.
#
# Written for regopy 1.5.2, whose cost model is unusual (see README.md):
# every decision pays for each statement of the whole bundle (test modules
# included), each object lookup compares keys as strings one by one, and
# each built-in call copies the interpreter's frame. Hence the plain refs
# and `not x == ""` rather than helper functions, object.get and `!=` on the
# common path, and as little code as the principles allow.
package acgs.constitution

import rego.v1

default request := {}

request := input if is_object(input)

# Without policy data no role permits anything: fail closed.
default cfg := {}

cfg := data.acgs.constitution_data

# evaluate(request, cfg), without the two rule calls on the common path.
decision := verdict if {
	is_object(input)
	verdict := evaluate(input, data.acgs.constitution_data)
} else := evaluate(request, cfg)

evaluate(req, config) := allowed(at, aa, config) if {
	# The common case: no principle objects and the explicit allow holds.
	p := req.principal
	t := req.tenant_id
	p.tenant_id == t
	res := req.resource
	res.tenant_id == t
	pid := p.id
	ra := res.attributes
	not ra.created_by == pid
	not ra.contains_pii
	a := req.action
	aa := a.attributes
	not aa.pii
	at := a.type
	not t == ""
	not pid == ""
	not at == ""
	is_string(t)
	is_string(pid)
	is_string(at)
	permitted(p.roles, at, aa, config)
} else := verdict(denied, p, at, aa, config) if {
	# Anything else: check every principle. (req is an object; missing
	# parts are null.)
	p := object.get(req, "principal", null)
	at := object.get(req, ["action", "type"], null)
	aa := object.get(req, ["action", "attributes"], null)
	ra := object.get(req, ["resource", "attributes"], null)
	denied := [v |
		some found in [
			pii_purpose(p, aa, ra, config),
			priority_ceiling(p, aa, config),
			role_permission(p, at, config),
			separation_of_powers(p, at, ra, config),
			tenant_isolation(req),
		]
		some v in found
	]
}

# Some role of the principal permits the action, at the requested priority
# (absent: 0) if there is one. Stricter than the principles (the permitting
# role must also have the ceiling), which is all the common case needs.
permitted(roles, at, aa, config) if {
	not aa.priority
	not aa.priority == false
	some r in roles
	at in config.roles[r].actions
} else := true if {
	priority := aa.priority
	is_number(priority)
	some r in roles
	role := config.roles[r]
	at in role.actions
	priority <= role.priority_ceiling
}

# Denials win over escalations, and escalations over ALLOW: an escalation
# never hides a DENY, and ALLOW is reached only when nothing objected and
# the explicit allow holds. When no principle is broken, the tenants agree
# and a role permits the action, so the explicit allow only lacks an
# identified principal: deny by default, and name deny_by_default alone.
verdict(denied, p, at, aa, config) := {"effect": "DENY", "violations": denied} if {
	not denied == []
} else := allowed(at, aa, config) if {
	non_empty_string(p.id)
} else := {"effect": "DENY", "violations": [violation("deny_by_default", "high", "no rule of the constitution allows this request")]}

# A request that no principle denies: ALLOW, or ESCALATE for the reasons in
# high_impact_action.rego. The common case (not a high-impact type, no
# impact score) is decided without building the reasons.
allowed(at, aa, config) := {"effect": "ALLOW", "violations": []} if {
	not at in config.high_impact_actions
	not aa.impact_score
	not aa.impact_score == false
	0 < config.impact_threshold
} else := escalated(high_impact_action(at, impact_score(aa), config))

escalated(violations) := {"effect": "ALLOW", "violations": []} if {
	violations == []
} else := {"effect": "ESCALATE", "violations": violations}

# --- Shared helpers ---------------------------------------------------------

violation(principle, severity, message) := {"principle": principle, "severity": severity, "message": message}

non_empty_string(x) if {
	is_string(x)
	not x == ""
}

# action.attributes.impact_score; absent (or attributes not an object): 0.
impact_score(aa) := score if {
	score := aa.impact_score
} else := 0

# A value from the input, as it may appear in a message. Only short, plain
# identifiers (^[A-Za-z0-9_.:@/+-]{1,64}$) are echoed: messages end up in
# logs, where arbitrary input should not be replayed, and regopy 1.5.2
# writes strings into its output without JSON escaping, so a quote or
# backslash from the input would corrupt the whole decision. Numbers are not
# echoed: engines print floats differently.
#
# Messages are built with concat, never sprintf: regopy 1.5.2's sprintf
# quotes some strings. The character test is trim() rather than
# regex.match (which compiles its pattern on every call, ~40 µs), behind a
# backslash check: regopy 1.5.2's trim() reads a backslash in an input
# string as the start of an escape sequence (it fails, or "\u0041" becomes
# "A").
shown(x) := concat("", ["'", x, "'"]) if {
	is_string(x)
	not x == ""
	substring(x, 64, -1) == ""
	not contains(x, backslash)
	trim(x, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:@/+-") == ""
} else := "(missing)" if {
	x == null
} else := "(empty)" if {
	x == ""
} else := "(not shown)"

# A backslash as regopy 1.5.2 compares it with input strings: in Rego source
# "\\" (and `\`) do not match the backslash of an input string.
backslash := base64.decode("XA==")

# The principal's roles (the strings among principal.roles) for messages,
# sorted and each shown once.
roles_text(p) := concat(", ", sort(texts)) if {
	texts := {shown(r) | some r in p.roles; is_string(r)}
	not texts == set()
} else := "none"
