# Priority ceilings: action.attributes.priority may not exceed the highest
# priority_ceiling among the principal's known roles. An absent priority is 0;
# a priority that is present but not a number (null included) is refused,
# because it cannot be compared with a ceiling.
package acgs.constitution

import rego.v1

# The violations of a principal `p` and action attributes `aa` (either may be
# null or not an object: then the priority is absent).
priority_ceiling(p, aa, config) := [] if {
	not aa.priority
	not aa.priority == false
} else := [] if {
	within_ceiling(aa.priority, p, config)
} else := [violation("priority_ceiling", "medium", priority_message(aa.priority))]

# "Below the highest ceiling" is "below some role's ceiling"; stated that way
# it needs no max(), which regopy 1.5.2 computes by comparing numbers as text
# (max([3, 10, 7]) is 7 there). Protobuf Struct numbers arrive as floats (5 as
# 5.0); <= compares them numerically. No ceiling is below 0, and a principal
# without a known role has ceiling 0: a priority of 0 or less always passes.
within_ceiling(priority, _, _) if {
	is_number(priority)
	priority <= 0
}

within_ceiling(priority, p, config) if {
	is_number(priority)
	some r in p.roles
	priority <= config.roles[r].priority_ceiling
}

priority_message(priority) := "action priority exceeds the priority ceiling of every role of the principal" if {
	is_number(priority)
} else := concat("", ["action priority must be a number, got ", shown(priority)])
