# High-impact actions: allowed in principle, but not without a human. The
# action types in data.acgs.constitution_data.high_impact_actions, and any
# action whose action.attributes.impact_score reaches impact_threshold (0.8),
# are ESCALATED. These are escalations, not denials: a request that also
# breaks a principle is denied (see verdict in constitution.rego).
package acgs.constitution

import rego.v1

high_impact_action(f, config) := by_type | by_score if {
	by_type := {violation("high_impact_action", "high", msg) |
		f.action_type in object.get(config, "high_impact_actions", [])
		msg := sprintf("action '%s' is high-impact and needs human approval", [plain(f.action_type)])
	}
	by_score := impact_score_escalations(f.impact_score, object.get(config, "impact_threshold", 0.8))
}

impact_score_escalations(score, threshold) := {violation("high_impact_action", "high", msg)} if {
	is_number(score)
	score >= threshold
	msg := sprintf("impact score reaches the threshold %v and needs human approval", [threshold])
} else := set() if {
	is_number(score)
} else := {violation("high_impact_action", "high", msg)} if {
	# A score that cannot be read might be high: a human decides.
	msg := sprintf("impact score %s is not a number and needs human review", [shown(score)])
}
