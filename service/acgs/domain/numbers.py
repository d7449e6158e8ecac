"""Which numbers reach the policy engine unchanged.

rego-cpp (regopy 1.5) takes an input float as ``std::to_string(double)``, i.e.
``printf("%f")`` text with six decimals: 3.0000004 reaches the policy as 3 and
1e-9 as 0, so a priority just above a ceiling would be allowed. Its integers are
64-bit. The engine can take exact text instead (``regoSetInputTerm``), but that
parses the whole input document and costs about four times as much per decision
as the node-by-node build, so ACGS-2 keeps the fast build and refuses every number
it would change. The rule for callers (README, "Numbers"): an integer within the
signed 64-bit range, or a finite number whose value is unchanged when written with
six decimal places (float(f"{x:f}") == x: 2.5, 0.85, 1e300; not 3.0000004, 1e-9).
"""

from __future__ import annotations

import math
from decimal import Decimal

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1

RULE = ("the policy engine takes integers within 64 bits and finite numbers with at most "
        "six decimal places")


def float_problem(x: float) -> str | None:
    """Why the engine would not see ``x`` as sent; None when it would."""
    if not math.isfinite(x):
        return f"{x!r} is not a finite number"
    if float(f"{x:f}") != x:
        return f"{x!r} would reach the policy engine as {x:f} ({RULE})"
    return None


def int_problem(x: int) -> str | None:
    """Why the engine would not see the integer ``x`` as sent; None when it would."""
    if INT64_MIN <= x <= INT64_MAX:
        return None
    return f"{x} is outside the 64-bit integer range ({RULE})"


def text_problem(text: str) -> str | None:
    """Why a JSON number written as ``text`` would not reach the engine as written.

    Beyond :func:`float_problem`: the text must be what the double it parses to holds
    ("0.1" is, "3.00000000000000000001" is not: it would be read as 3.0), since an
    engine reading JSON as decimals (OPA) would see the difference.
    """
    value = float(text)
    problem = float_problem(value)
    if problem is None and Decimal(text) != Decimal(repr(value)):
        return f"{text} has more digits than a 64-bit float keeps ({RULE})"
    return problem
