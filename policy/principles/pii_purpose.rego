# PII purpose limitation: personal data is handled only by a role allowed to
# handle it, for a purpose that role allows
# (data.acgs.constitution_data.roles[role].pii_purposes; an empty list means
# the role may not handle PII at all).
#
# PII is involved when resource.attributes.contains_pii or action.attributes.pii
# is present with any value other than false: a flag that cannot be read
# ("yes", null) counts as PII, so doubt fails closed.
package acgs.constitution

import rego.v1

pii_purpose(f) := {violation("pii_purpose", "high", msg) |
	pii_involved(f)
	purposes := pii_purposes(f)
	not purpose_allowed(f.purpose, purposes)
	msg := pii_denial_message(f, purposes)
}

pii_involved(f) if {
	some flag in f.pii_flags
	flag != false
}

# Purposes allowed over the principal's known roles. Each role contributes
# only its own purposes, so "a PII role AND a purpose of that role" holds
# exactly when the stated purpose is in this union.
pii_purposes(f) := {p |
	some role in f.role_configs
	some p in object.get(role, "pii_purposes", [])
}

purpose_allowed(purpose, purposes) if {
	non_empty_string(purpose)
	purpose in purposes
}

pii_denial_message(f, purposes) := sprintf("no role of the principal (%s) may handle PII", [roles_text(f)]) if {
	count(purposes) == 0
} else := "PII access must state action.attributes.purpose" if {
	not non_empty_string(f.purpose)
} else := sprintf(
	"purpose %s is not allowed for PII to the principal's roles; allowed: %s",
	[shown(f.purpose), plain(concat(", ", sort(purposes)))],
)
