"""The floor under an evaluated decision: ``python3 -m bench.engine_floor [--calls N]``.

What the policy engine alone costs for the benchmark's Decide request (the one
``bench.cost``'s evaluated scenario sends, converted as the server converts it) on the
constitution in ``policy/`` (without its ``tests/``), with no server, no event loop, no
thread hop and no audit. Run it under ``taskset -c 1``. It prints CPU µs per decision,
best of ``--rounds``:

* regopy 1.5.2, step by step as ``RegopyEngine`` does them (``regopy_calls``: input built
  holding the GIL, ``set_input``, the bundle query, reading the output), and in all;
* OPA's own Go engine in-process (``opa-golib-python-bindings``, installed for the
  differential tests), ``eval_document`` of the same rule, when it is installed.

Issue 19 asks for 1,500 evaluated, audited decisions/s on one core: at most 667 µs of
server CPU each. Add this floor to a bare server's CPU per call (``bench.cost``'s first
two rows) and to the journal's (its ``acgs-journal`` row) to see what is left for the
rest of the decision path.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from acgs import CONSTITUTIONAL_HASH
from acgs.adapters.rego_source import compile_policy
from acgs.adapters.regopy_calls import build_input, query_entrypoint
from acgs.adapters.regopy_engine import output_value
from acgs.entrypoints.convert import decision_request

from bench.workloads import decide_request

POLICY = Path(__file__).resolve().parent.parent / "policy"
ENTRYPOINT = "acgs/constitution/decision"


def best_us(fn: Callable[[], Any], calls: int, rounds: int) -> float:
    """The lowest thread CPU µs per call of ``rounds`` rounds of ``calls`` calls."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.thread_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.thread_time() - t0) / calls * 1e6)
    return best


def policy_input() -> dict[str, Any]:
    msg = decide_request("r" * 16, "p" * 16, "d" * 16)
    return dict(decision_request(msg, metadata_hash=CONSTITUTIONAL_HASH,
                                 max_depth=32).policy_input)


def modules() -> list[tuple[str, str]]:
    return [(str(f.relative_to(POLICY)), f.read_text("utf-8"))
            for f in sorted(POLICY.rglob("*.rego")) if "tests" not in f.relative_to(POLICY).parts]


def regopy_rows(doc: dict[str, Any], calls: int, rounds: int) -> list[tuple[str, float]]:
    interp, bundle = compile_policy(modules(), (POLICY / "data.json").read_text("utf-8"),
                                    [ENTRYPOINT])
    built = build_input(doc)

    def decide() -> Any:
        interp.set_input(build_input(doc))
        return output_value(query_entrypoint(interp, bundle, ENTRYPOINT), ENTRYPOINT)

    effect = decide()[1]["effect"]
    return [
        ("regopy: build the input (regopy_calls.build_input)",
         best_us(lambda: build_input(doc), calls, rounds)),
        ("regopy: Interpreter.set_input", best_us(lambda: interp.set_input(built), calls, rounds)),
        ("regopy: query the bundle's entrypoint",
         best_us(lambda: query_entrypoint(interp, bundle, ENTRYPOINT), calls, rounds)),
        (f"regopy: the whole decision ({effect})", best_us(decide, calls, rounds)),
    ]


def opa_rows(doc: dict[str, Any], calls: int, rounds: int) -> list[tuple[str, float]]:
    try:
        from opa_bindings import OpaEngine  # installed for the differential tests only
    except ImportError:
        return []
    engine = OpaEngine()
    for name, source in modules():
        engine.add_policy(name, source)
    engine.add_data(json.loads((POLICY / "data.json").read_text("utf-8")))
    rule = ENTRYPOINT.replace("/", ".")
    effect = engine.eval_document(rule, doc)["effect"]
    return [(f"OPA (Go, in-process): eval_document, the whole decision ({effect})",
             best_us(lambda: engine.eval_document(rule, doc), calls, rounds))]


def main() -> None:
    p = argparse.ArgumentParser(prog="python3 -m bench.engine_floor",
                                description=(__doc__ or "").splitlines()[0])
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    doc = policy_input()
    print("| engine step, the benchmark's request | CPU µs per decision (best of "
          f"{args.rounds} x {args.calls}) |\n| --- | ---: |")
    for name, us in regopy_rows(doc, args.calls, args.rounds) + opa_rows(doc, args.calls,
                                                                          args.rounds):
        print(f"| {name} | {us:.0f} |", flush=True)


if __name__ == "__main__":
    main()
