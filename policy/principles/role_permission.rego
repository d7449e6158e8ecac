# Role permissions: some role of the principal must permit the action type,
# per data.acgs.constitution_data.roles[role].actions. Roles the data does not
# know (and principal.roles entries that are not strings) permit nothing, and
# an empty or missing action type nobody.
package acgs.constitution

import rego.v1

# The violations of a principal `p` and an action type `at` (either may be
# null).
role_permission(p, at, config) := [] if {
	some r in p.roles
	at in config.roles[r].actions
	is_string(at)
	not at == ""
} else := [violation("role_permission", "high", concat("", [
	"no role of the principal (", roles_text(p), ") permits action ", shown(at),
]))]
