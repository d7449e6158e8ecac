"""What checking numbers costs per decision, and what exact number text would cost.

``python3 bench/number_check.py`` (from the repository, PYTHONPATH=service) prints µs per
call, the best of several rounds of CPU time, for a Decide request with five numbers:

- ``convert.decision_request`` (which now refuses floats six decimals would change),
  against the same conversion without that check;
- ``build_input`` (which refuses them too) against regopy's own ``Input`` builder;
- ``set_input_term(json.dumps(...))``: rego-cpp's only route for exact number text,
  which parses the whole document.
"""

from __future__ import annotations

import json
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "service"), str(ROOT)]

import regopy  # noqa: E402
from acgs.adapters.regopy_calls import build_input  # noqa: E402
from acgs.entrypoints import convert  # noqa: E402

from tests.client import allow_input, decide_request  # noqa: E402

DOC = allow_input(
    action={"type": "analyze", "attributes": {"priority": 2.5, "impact_score": 0.35}},
    principal={"id": "u", "roles": ["analyst"], "tenant_id": "t1",
               "attributes": {"clearance": 3, "score": 0.75, "dept": "x"}},
    context={"session": {"ip": "1.2.3.4", "risk": 0.125}})


def best_us(fn: Callable[[], Any], number: int = 5_000, rounds: int = 7) -> float:
    return min(timeit.repeat(fn, number=number, repeat=rounds, timer=time.process_time)
               ) / number * 1e6


def main() -> None:
    msg = decide_request(DOC)
    policy_input = convert.decision_request(msg, metadata_hash="", max_depth=16).policy_input
    interp = regopy.Interpreter()
    rows = {
        "convert.decision_request (with the check)":
            lambda: convert.decision_request(msg, metadata_hash="", max_depth=16),
        "the check alone, per float": lambda: float(f"{0.35:f}") != 0.35,
        "build_input + set_input (with the check)":
            lambda: interp.set_input(build_input(policy_input)),
        "regopy.Input + set_input (no check)":
            lambda: interp.set_input(regopy.Input(policy_input)),
        "set_input_term(json.dumps) (exact text)":
            lambda: interp.set_input_term(json.dumps(policy_input)),
    }
    for name, fn in rows.items():
        print(f"{name:45} {best_us(fn):8.2f} µs")


if __name__ == "__main__":
    main()
