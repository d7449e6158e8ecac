# Tenant isolation: a principal acts only in its own tenant, on resources of
# that tenant. The request's tenant, the principal's tenant and the resource's
# tenant must all be present, non-empty strings and equal. A missing tenant
# is not a wildcard: "no tenant" must never match "any tenant".
package acgs.constitution

import rego.v1

# The violations of the request, an object (none, usually).
tenant_isolation(req) := [] if {
	t := req.tenant_id
	req.principal.tenant_id == t
	req.resource.tenant_id == t
	is_string(t)
	not t == ""
} else := tenant_violations(
	object.get(req, ["principal", "tenant_id"], null),
	object.get(req, "tenant_id", null),
	object.get(req, ["resource", "tenant_id"], null),
)

# Three tenants that are not all the same non-empty string: either all are
# present and they differ, or each missing one is named (in message order).
tenant_violations(principal, request, resource) := [violation("tenant_isolation", "critical", concat("", [
	"principal of tenant ", shown(principal), " may not act in tenant ", shown(request),
	" on a resource of tenant ", shown(resource),
]))] if {
	non_empty_string(principal)
	non_empty_string(request)
	non_empty_string(resource)
} else := [violation("tenant_isolation", "critical", concat("", [pair[0], " is missing or empty"])) |
	# (regopy does not accept `some field, tid in ...` inside a comprehension.)
	some pair in [["principal.tenant_id", principal], ["resource.tenant_id", resource], ["tenant_id", request]]
	not non_empty_string(pair[1])
]
