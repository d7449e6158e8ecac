package acgs.constitution_test

import rego.v1


tables contains json.unmarshal(`[
{"name": "principal of another tenant", "patch": {"principal": {"tenant_id": "t2"}}, "effect": "DENY", "principles": ["tenant_isolation"], "violations": [{"principle": "tenant_isolation", "severity": "critical", "message": "principal of tenant 't2' may not act in tenant 't1' on a resource of tenant 't1'"}]},
{"name": "resource of another tenant", "patch": {"resource": {"tenant_id": "t2"}}, "effect": "DENY", "principles": ["tenant_isolation"]},
{"name": "request of another tenant", "patch": {"tenant_id": "t2"}, "effect": "DENY", "principles": ["tenant_isolation"]},
{"name": "missing request tenant", "remove": ["tenant_id"], "effect": "DENY", "principles": ["tenant_isolation"], "violations": [{"principle": "tenant_isolation", "severity": "critical", "message": "tenant_id is missing or empty"}]},
{"name": "empty principal tenant", "patch": {"principal": {"tenant_id": ""}}, "effect": "DENY", "principles": ["tenant_isolation"]},
{"name": "null resource tenant", "patch": {"resource": {"tenant_id": null}}, "effect": "DENY", "principles": ["tenant_isolation"]},
{"name": "all tenants empty", "patch": {"tenant_id": "", "principal": {"tenant_id": ""}, "resource": {"tenant_id": ""}}, "effect": "DENY", "principles": ["tenant_isolation"], "count": 3},
{"name": "tenants that are not strings", "patch": {"tenant_id": 1, "principal": {"tenant_id": 1}, "resource": {"tenant_id": 1}}, "effect": "DENY", "principles": ["tenant_isolation"], "count": 3},
{"name": "three different tenants", "patch": {"tenant_id": "t3", "principal": {"tenant_id": "t2"}}, "effect": "DENY", "principles": ["tenant_isolation"], "messages": [[0, "principal of tenant 't2' may not act in tenant 't3' on a resource of tenant 't1'"]]},
{"name": "missing and mismatched tenants", "patch": {"tenant_id": "", "principal": {"tenant_id": "t2"}}, "effect": "DENY", "principles": ["tenant_isolation"], "violations": [{"principle": "tenant_isolation", "severity": "critical", "message": "tenant_id is missing or empty"}]},
{"name": "high-impact action across tenants", "patch": {"principal": {"roles": ["admin"], "tenant_id": "t2"}, "action": {"type": "data_deletion"}}, "effect": "DENY", "principles": ["tenant_isolation"]}
]`)
