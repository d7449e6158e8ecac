# High-impact actions: allowed in principle, but not without a human. The
# action types in data.acgs.constitution_data.high_impact_actions, and any
# action whose action.attributes.impact_score reaches impact_threshold (0.8),
# are ESCALATED. These are escalations, not denials: a request that also
# breaks a principle is denied (see verdict in constitution.rego).
package acgs.constitution

import rego.v1

# The reasons to escalate an action of type `at` with impact score `score`
# (absent: 0), in message order.
high_impact_action(at, score, config) := array.concat(
	[violation("high_impact_action", "high", concat("", ["action '", at, "' is high-impact and needs human approval"])) |
		at in config.high_impact_actions
	],
	impact_score_escalations(score, object.get(config, "impact_threshold", 0.8)),
)

impact_score_escalations(score, threshold) := [violation("high_impact_action", "high", sprintf("impact score reaches the threshold %v and needs human approval", [threshold]))] if {
	is_number(score)
	score >= threshold
} else := [] if {
	is_number(score)
} else := [violation("high_impact_action", "high", concat("", ["impact score ", shown(score), " is not a number and needs human review"]))]
