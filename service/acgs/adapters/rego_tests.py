"""Run a policy's Rego unit tests, like ``opa test``: every rule named ``test_*``.

The policy directory is loaded exactly as the server loads it (same static
checks, same compiler), test modules (``*_test.rego``) included. A test
passes only when its value is ``true``; false, undefined or an error fail.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, TextIO

import regopy

from acgs import CONSTITUTIONAL_HASH
from acgs.adapters.rego_source import PolicyBundle, compile_policy, load_policy_dir
from acgs.adapters.regopy_engine import output_value
from acgs.errors import AcgsError

_RULE = "-" * 80


def run_policy_tests(
    policy_dir: Path, *, out: TextIO, verbose: bool = False,
    constitutional_hash: str = CONSTITUTIONAL_HASH,
) -> int:
    """Run every ``test_*`` rule of ``policy_dir`` with no input; report on ``out``.

    Prints ``data.pkg.test_x: PASS (12µs)`` per test (only failures unless
    ``verbose``), then ``PASS: n/m`` and, if any failed, ``FAIL: k/m``.
    Returns 0 when at least one test ran and all passed, 1 otherwise, and 2
    when the policy does not load (the error is printed).
    """
    try:
        bundle = load_policy_dir(policy_dir, constitutional_hash=constitutional_hash)
        _, compiled = compile_policy(bundle.modules, bundle.data_json, bundle.entrypoints)
    except AcgsError as err:
        print(f"{policy_dir}: {err}", file=out)
        return 2
    if not bundle.tests:
        print(f"{policy_dir}: no tests found (rules named test_*)", file=out)
        return 1
    failed = 0
    for entrypoint in bundle.tests:
        status, detail, elapsed_s = _run_one(compiled, entrypoint)
        failed += status != "PASS"
        if verbose or status != "PASS":
            name = "data." + entrypoint.replace("/", ".")
            print(f"{name}: {status} ({_duration(elapsed_s)}){detail}", file=out)
    total = len(bundle.tests)
    print(_RULE, file=out)
    print(f"PASS: {total - failed}/{total}", file=out)
    if failed:
        print(f"FAIL: {failed}/{total}", file=out)
    return 1 if failed else 0


def failing_tests(bundle: PolicyBundle) -> tuple[int, list[str]]:
    """Run every ``test_*`` rule of ``bundle``: ``(passed, failures)``.

    Each failure reads ``data.pkg.test_x: FAIL`` (or ``ERROR: message``).
    Raises PolicyError when the bundle does not compile.
    """
    _, compiled = compile_policy(bundle.modules, bundle.data_json, bundle.entrypoints)
    failures = []
    for entrypoint in bundle.tests:
        status, detail, _ = _run_one(compiled, entrypoint)
        if status != "PASS":
            name = "data." + entrypoint.replace("/", ".")
            failures.append(f"{name}: {status}{' ' + detail.strip() if detail else ''}")
    return len(bundle.tests) - len(failures), failures


def _run_one(compiled: Any, entrypoint: str) -> tuple[str, str, float]:
    """Evaluate one test rule without input: ``(status, detail, seconds)``."""
    interp = regopy.Interpreter()  # fresh: no input document, as opa test runs them
    interp.log_level = regopy.LogLevel.NONE
    interp.strict_built_in_errors = True
    start = time.perf_counter()
    try:
        output = interp.query_bundle_entrypoint(compiled, entrypoint)
        elapsed = time.perf_counter() - start
        defined, value = output_value(output, entrypoint)
    except AcgsError as err:
        return "ERROR", f"\n  {err}", time.perf_counter() - start
    except Exception as err:  # regopy's own exceptions: report, never crash the run
        return "ERROR", f"\n  {entrypoint}: {err}", time.perf_counter() - start
    if value is True:
        return "PASS", "", elapsed
    return "FAIL", "" if defined else " (undefined)", elapsed


def _duration(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f}µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f}ms"
    return f"{seconds:.2f}s"
