# PII purpose limitation: personal data is handled only by a role allowed to
# handle it, for a purpose that role allows
# (data.acgs.constitution_data.roles[role].pii_purposes; an empty list means
# the role may not handle PII at all).
#
# PII is involved when resource.attributes.contains_pii or action.attributes.pii
# is present with any value other than false: a flag that cannot be read
# ("yes", null) counts as PII, so doubt fails closed. (`not x` holds exactly
# when x is absent or false.)
package acgs.constitution

import rego.v1

# The violations of a principal `p`, action attributes `aa` and resource
# attributes `ra` (any of them may be null or not an object).
pii_purpose(p, aa, ra, config) := [] if {
	not ra.contains_pii
	not aa.pii
} else := [] if {
	# Each role contributes only its own purposes, so "a PII role AND a
	# purpose of that role" holds exactly when some role lists the purpose.
	purpose := aa.purpose
	some r in p.roles
	purpose in config.roles[r].pii_purposes
	is_string(purpose)
	not purpose == ""
} else := [violation("pii_purpose", "high", pii_message(
	p, purpose_of(aa),
	{purpose | some r in p.roles; some purpose in config.roles[r].pii_purposes},
))]

pii_message(p, purpose, purposes) := concat("", ["no role of the principal (", roles_text(p), ") may handle PII"]) if {
	purposes == set()
} else := "PII access must state action.attributes.purpose" if {
	not non_empty_string(purpose)
} else := concat("", [
	"purpose ", shown(purpose), " is not allowed for PII to the principal's roles; allowed: ",
	trim_space(concat(", ", sort(purposes))),
])

# action.attributes.purpose; absent (or attributes not an object): null.
purpose_of(aa) := purpose if {
	purpose := aa.purpose
} else := null
