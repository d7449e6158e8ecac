# Tenant isolation: a principal acts only in its own tenant, on resources of
# that tenant. The request's tenant, the principal's tenant and the resource's
# tenant must all be present, non-empty and equal. A missing tenant is not a
# wildcard: "no tenant" must never match "any tenant".
package acgs.constitution

import rego.v1

tenant_isolation(f) := missing | mismatched if {
	missing := {violation("tenant_isolation", "critical", msg) |
		# (regopy does not accept `some field, tid in ...` inside a comprehension.)
		some field
		tid := f.tenants[field]
		not non_empty_string(tid)
		msg := sprintf("%s is missing or empty", [field])
	}
	mismatched := {violation("tenant_isolation", "critical", msg) |
		tenants_present(f.tenants)
		not tenant_consistent(f.tenants)
		msg := sprintf(
			"principal of tenant %s may not act in tenant %s on a resource of tenant %s",
			[shown(f.tenants["principal.tenant_id"]), shown(f.tenants.tenant_id), shown(f.tenants["resource.tenant_id"])],
		)
	}
}

tenants_present(tenants) if {
	every tid in tenants {
		non_empty_string(tid)
	}
}

tenant_consistent(tenants) if {
	tenants_present(tenants)
	count({tid | some tid in tenants}) == 1
}
