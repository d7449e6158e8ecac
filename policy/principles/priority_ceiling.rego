# Priority ceilings: action.attributes.priority may not exceed the highest
# priority_ceiling among the principal's known roles. An absent priority is 0;
# a priority that is present but not a number (null included) is refused,
# because it cannot be compared with a ceiling.
package acgs.constitution

import rego.v1

priority_ceiling(f) := not_a_number | too_high if {
	not_a_number := {violation("priority_ceiling", "medium", msg) |
		not is_number(f.priority)
		msg := sprintf("action priority must be a number, got %s", [shown(f.priority)])
	}
	too_high := {violation("priority_ceiling", "medium", msg) |
		is_number(f.priority)
		not priority_within_ceiling(f)
		msg := "action priority exceeds the priority ceiling of every role of the principal"
	}
}

# "Below the highest ceiling" is "below some role's ceiling"; stated that way
# it needs no max(), which regopy 1.5.2 computes by comparing numbers as text
# (max([3, 10, 7]) is 7 there). Protobuf Struct numbers arrive as floats (5 as
# 5.0); <= compares them numerically.
priority_within_ceiling(f) if {
	some role in f.role_configs
	f.priority <= object.get(role, "priority_ceiling", 0)
}

# No ceiling is below 0, and a principal without a known role has ceiling 0:
# an absent (0) or negative priority always passes.
priority_within_ceiling(f) if f.priority <= 0
