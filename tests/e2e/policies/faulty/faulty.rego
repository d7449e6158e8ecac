# A deliberately faulty constitution for tests: context.mode picks the fault.
package acgs.constitution

import rego.v1

ok := {"effect": "ALLOW", "violations": []}

# Slow: a comprehension over a large range; the size comes from the input so
# that nothing can be computed ahead of time.
decision := {"effect": "ALLOW", "violations": [], "n": n} if {
	input.context.mode == "slow"
	n := count([x | some x in numbers.range(1, input.context.size)])
}

# Error: to_number of a non-number raises an error under strict built-in errors.
decision := {"effect": "ALLOW", "violations": [], "n": to_number(input.context.value)} if {
	input.context.mode == "error"
}

# Malformed: a decision that is not of the contract's shape.
decision := {"effect": "MAYBE", "violations": []} if input.context.mode == "bad_shape"

decision := ok if input.context.mode == "allow"

# mode == "undefined" (or anything else): decision is undefined.
