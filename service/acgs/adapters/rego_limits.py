"""Constructs OPA accepts and regopy (rego-cpp 1.5.2) cannot parse: name them, say whose
limitation it is, and give the rewrite that works.

regopy reports these with its parser's own words ("Invalid collection"), which
sends an author looking for a bug in a policy that OPA runs. Each entry is
found by what the source holds at the error's offset, not by the message alone.
"""

from __future__ import annotations

import re
from typing import NamedTuple


class Limitation(NamedTuple):
    engine_message: str  # regopy's message at the error
    construct: re.Pattern[str]  # matched at the error's offset in the source
    explanation: str


_COMPREHENSION_SOME_KV = re.compile(
    r"[\[{][^|\[\]{}]*\|\s*some\s+(\w+)\s*,\s*(\w+)\s+in\b\s*([\w.]+(?:\[[^\]]*\])*)?")

LIMITATIONS: tuple[Limitation, ...] = (
    Limitation(
        "Invalid collection", _COMPREHENSION_SOME_KV,
        "`some {0}, {1} in {2}` inside an array or set comprehension is an engine "
        "limitation (regopy/rego-cpp cannot parse it; OPA accepts it). Rewrite it as "
        "`some {0}; {1} := {2}[{0}]` (an object comprehension, or the same `some` in a "
        "rule body, works as written)"),
)


def explain(message: str, source: str, offset: int) -> str | None:
    """The explanation for a regopy error ``message`` at ``offset`` of ``source``, if it
    is a known engine limitation; else None."""
    for limitation in LIMITATIONS:
        if message.strip() != limitation.engine_message:
            continue
        found = limitation.construct.match(source, offset)
        if found:
            # A literal collection is shown as `obj`: the rewrite needs a name for it.
            return limitation.explanation.format(*(g or "obj" for g in found.groups()))
    return None
