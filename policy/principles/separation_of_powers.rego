# Separation of powers: no principal validates or approves its own output.
# For the action types in data.acgs.constitution_data.self_review_actions
# (validate_output, approve), resource.attributes.created_by names the
# principal that produced the resource; if it is the acting principal, deny.
package acgs.constitution

import rego.v1

separation_of_powers(f, config) := {violation("separation_of_powers", "critical", msg) |
	f.action_type in object.get(config, "self_review_actions", [])
	non_empty_string(f.created_by)
	f.created_by == f.principal_id
	msg := sprintf("principal %s may not review its own output (action '%s')", [shown(f.principal_id), plain(f.action_type)])
}
