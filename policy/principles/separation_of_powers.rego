# Separation of powers: no principal validates or approves its own output.
# For the action types in data.acgs.constitution_data.self_review_actions
# (validate_output, approve), resource.attributes.created_by names the
# principal that produced the resource; if it is the acting principal, deny.
package acgs.constitution

import rego.v1

# The violations of a principal `p`, an action type `at` and resource
# attributes `ra` (any of them may be null or not an object).
separation_of_powers(p, at, ra, config) := [violation("separation_of_powers", "critical", concat("", [
	"principal ", shown(creator), " may not review its own output (action '", at, "')",
]))] if {
	creator := ra.created_by
	creator == p.id
	at in config.self_review_actions
	is_string(creator)
	not creator == ""
} else := []
