# The input document, normalized once into the facts the principles read.
#
# Every field has a default, so a missing or malformed field yields a value
# that fails the relevant principle instead of an error or undefined:
#   - identifiers and names default to null, which no principle accepts
#     (null rather than "": regopy 1.5.2 prints a defaulted "" as '""');
#   - roles keep only strings; unknown roles are kept (for messages) but
#     have no role_configs entry, so they grant nothing;
#   - priority and impact_score default to 0, and are kept as given when
#     present, so a non-number can be refused (priority) or escalated (score);
#   - PII flags default to false; any other value counts as PII (fail closed).
package acgs.constitution

import rego.v1

facts(req, config) := {
	"principal_id": object.get(req, ["principal", "id"], null),
	"roles": roles,
	# Configuration (policy data) of each role the data knows; unknown roles grant nothing.
	"role_configs": [role |
		some r in roles
		role := object.get(config, ["roles", r], null)
		role != null
	],
	"tenants": {
		"tenant_id": object.get(req, "tenant_id", null),
		"principal.tenant_id": object.get(req, ["principal", "tenant_id"], null),
		"resource.tenant_id": object.get(req, ["resource", "tenant_id"], null),
	},
	"action_type": object.get(req, ["action", "type"], null),
	"priority": object.get(req, ["action", "attributes", "priority"], 0),
	"impact_score": object.get(req, ["action", "attributes", "impact_score"], 0),
	"purpose": object.get(req, ["action", "attributes", "purpose"], null),
	"pii_flags": [
		object.get(req, ["resource", "attributes", "contains_pii"], false),
		object.get(req, ["action", "attributes", "pii"], false),
	],
	"created_by": object.get(req, ["resource", "attributes", "created_by"], null),
} if {
	roles := {r | some r in object.get(req, ["principal", "roles"], []); is_string(r)}
}
