"""A version must decide (issue 18): the decision rule is run on the manifest's examples and on
every input the Rego tests pass with ``with input as``, at upload, in the checker process."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from acgs import CONSTITUTIONAL_HASH
from acgs.adapters.policy_checker import SubprocessPolicyChecker, check_in_process
from acgs.adapters.policy_examples import inputs_of_tests, with_examples
from acgs.adapters.rego_source import bundle_from_parts, load_policy_dir
from acgs.entrypoints.policy_cli import read_policy_dir
from acgs.errors import PolicyError

POLICY_DIR = Path(__file__).resolve().parents[2] / "policy"
GOOD = """package t
import rego.v1
default decision := {"effect": "DENY", "violations": [{"principle": "p", "severity": "high",
  "message": "no"}]}
decision := {"effect": "ALLOW", "violations": []} if input.ok == true
"""
FALSE = "package t\nimport rego.v1\ndecision := false\n"


def manifest(**extra: object) -> str:
    return json.dumps({"name": "t", "version": "1", "constitutional_hash": CONSTITUTIONAL_HASH,
                       "decision": "t/decision", **extra})


def check(modules: dict[str, str], **extra: object) -> dict[str, object]:
    return check_in_process({"modules": modules, "data_json": "{}",
                             "manifest_json": manifest(**extra),
                             "constitutional_hash": CONSTITUTIONAL_HASH})


def test_a_decision_rule_that_yields_false_is_refused_naming_the_test_input() -> None:
    # (regopy 1.5.2 aborts on `with input as <rule>`; a literal naming a rule is fine)
    tests = ('package t_test\nimport rego.v1\nimport data.t\n'
             'probe := true\n'
             'test_runs if { t.decision == false with input as {"ok": probe} }\n')
    answer = check({"t.rego": FALSE, "t_test.rego": tests})
    assert answer["error"] == "examples"
    assert "input of test test_runs (t_test.rego:5)" in str(answer["message"])
    assert "decision is not an object: False" in str(answer["message"])


def test_a_decision_rule_that_yields_false_is_refused_on_an_example() -> None:
    answer = check({"t.rego": FALSE}, examples={"first": {"input": {}}})
    assert answer["error"] == "examples"
    assert "example first: not a well-formed decision" in str(answer["message"])


def test_an_example_whose_effect_differs_is_refused_naming_it() -> None:
    answer = check({"t.rego": GOOD}, examples={
        "allowed.json": {"input": {"ok": True}, "effect": "ALLOW"},
        "wrong.json": {"input": {"ok": False}, "effect": "ALLOW"}})
    assert answer["error"] == "examples"
    assert "example wrong.json: expected ALLOW, the decision is DENY (p)" in str(
        answer["message"])
    assert "allowed.json" not in str(answer["message"])


def test_a_malformed_example_is_refused() -> None:
    answer = check({"t.rego": GOOD}, examples={"x": {"input": {}, "effect": "MAYBE"}})
    assert answer["error"] == "policy" and "example x" in str(answer["message"])


def test_a_version_that_decides_on_every_example_passes() -> None:
    answer = check({"t.rego": GOOD}, examples={"a": {"input": {"ok": True}, "effect": "ALLOW"}})
    assert "error" not in answer, answer


def test_literal_inputs_are_extracted_with_their_rules_and_local_ones_skipped() -> None:
    tests = ('package t_test\nimport rego.v1\nimport data.t\n'
             'base := true\n'
             'test_literal if { t.decision.effect == "DENY" with input as {"ok": [1, "}"]} }\n'
             'test_rule if { t.decision.effect == "ALLOW" with input as {"ok": base} }\n'
             'test_local if { x := {"ok": true}; t.decision with input as x }\n')
    bundle = bundle_from_parts(modules={"t.rego": GOOD, "t_test.rego": tests}, data_json="{}",
                               manifest=json.loads(manifest()),
                               constitutional_hash=CONSTITUTIONAL_HASH)
    found = {e.label: e.input for e in inputs_of_tests(bundle)}
    assert found == {"input of test test_literal (t_test.rego:5)": {"ok": [1, "}"]},
                     "input of test test_rule (t_test.rego:6)": {"ok": True}}


def test_the_checker_process_refuses_with_the_example_named() -> None:
    checker = SubprocessPolicyChecker(constitutional_hash=CONSTITUTIONAL_HASH)
    with pytest.raises(PolicyError, match=r"example bad\.json: not a well-formed decision"):
        asyncio.run(checker.check(modules={"t.rego": FALSE}, data_json="{}",
                                  manifest_json=manifest(examples={"bad.json": {"input": {}}})))


def test_the_constitution_examples_are_folded_in_and_decide_as_expected() -> None:
    bundle = load_policy_dir(POLICY_DIR, constitutional_hash=CONSTITUTIONAL_HASH)
    examples = json.loads(bundle.manifest_json)["examples"]
    assert len(examples) >= 10 and all(k.startswith("examples/") for k in examples)
    upload = read_policy_dir(POLICY_DIR)  # the CLI folds them in the same way: same revision
    assert json.loads(upload.manifest_json)["examples"] == examples
    answer = check_in_process({"modules": dict(bundle.modules), "data_json": bundle.data_json,
                               "manifest_json": bundle.manifest_json,
                               "constitutional_hash": CONSTITUTIONAL_HASH})
    assert "error" not in answer, answer
    assert answer["revision"] == bundle.revision


def test_an_unreadable_example_file_names_it(tmp_path: Path) -> None:
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "broken.json").write_text("{not json")
    with pytest.raises(PolicyError, match=r"examples/broken\.json"):
        with_examples(tmp_path, {})
