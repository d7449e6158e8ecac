# Role permissions: some role of the principal must permit the action type,
# per data.acgs.constitution_data.roles[role].actions. Roles the data does not
# know permit nothing, and an empty or missing action type nobody.
package acgs.constitution

import rego.v1

role_permission(f) := {violation("role_permission", "high", msg) |
	not action_permitted(f)
	msg := sprintf("no role of the principal (%s) permits action %s", [roles_text(f), shown(f.action_type)])
}

action_permitted(f) if {
	non_empty_string(f.action_type)
	some role in f.role_configs
	f.action_type in object.get(role, "actions", [])
}
