"""The `opa test`-like runner: pass, fail, undefined, error, no tests, load errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

from acgs.adapters.rego_tests import run_policy_tests

HASH = "cdd01ef066bc6cf2"
MANIFEST = {"name": "t", "version": "1", "constitutional_hash": HASH,
            "decision": "acgs/constitution/decision"}
POLICY = """package acgs.constitution

import rego.v1

decision := {"effect": "ALLOW", "violations": []} if input.ok
"""


def policy_dir(root: Path, tests: str) -> Path:
    (root / "manifest.json").write_text(json.dumps(MANIFEST))
    (root / "constitution.rego").write_text(POLICY)
    (root / "tests").mkdir()
    (root / "tests" / "decision_test.rego").write_text(tests)
    return root


def run(root: Path, *, verbose: bool = False) -> tuple[int, str]:
    out = io.StringIO()
    code = run_policy_tests(root, out=out, verbose=verbose)
    return code, out.getvalue()


PASSING = """package acgs.constitution_test

import rego.v1

import data.acgs.constitution

test_allows_ok if constitution.decision.effect == "ALLOW" with input as {"ok": true}

# rego-cpp needs braces around `not ... with ...` (a syntax error without them).
test_undefined_without_ok if {
	not constitution.decision with input as {}
}
"""


def test_all_passing(tmp_path: Path) -> None:
    code, text = run(policy_dir(tmp_path, PASSING), verbose=True)
    assert code == 0
    assert "data.acgs.constitution_test.test_allows_ok: PASS (" in text
    assert "data.acgs.constitution_test.test_undefined_without_ok: PASS (" in text
    assert text.rstrip().endswith("PASS: 2/2")
    assert "FAIL" not in text


def test_false_undefined_and_error_fail(tmp_path: Path) -> None:
    tests = PASSING + """
test_false if false

test_undefined if input.never

test_error := 1 / 0
"""
    code, text = run(policy_dir(tmp_path, tests))
    assert code == 1
    assert "test_false: FAIL" in text
    assert "test_undefined: FAIL" in text and "(undefined)" in text
    assert "test_error: ERROR" in text and "divide by zero" in text
    assert "test_allows_ok" not in text  # passing tests are listed only with verbose
    assert "PASS: 2/5" in text and "FAIL: 3/5" in text


def test_no_tests_is_a_failure(tmp_path: Path) -> None:
    code, text = run(policy_dir(tmp_path, "package acgs.other\n\nx := 1\n"))
    assert code == 1
    assert "no tests" in text


def test_load_error_returns_2(tmp_path: Path) -> None:
    code, text = run(policy_dir(tmp_path, "package acgs.t\n\ntest_x := opa.runtime()\n"))
    assert code == 2
    assert "tests/decision_test.rego:3:11: call to opa.runtime() refused" in text
