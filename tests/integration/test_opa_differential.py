"""Decide's answers on the constitution (policy/) against OPA's own, in-process.

Hypothesis draws a seed per request; each request is drawn around every branch of the
constitution (every role and action of data.json, numbers at and near every ceiling and
the impact threshold, fractional and huge numbers, missing and mistyped attributes, odd
strings: see acgs.entrypoints.opa_requests) and goes through Decide's conversion and
RegopyEngine and through OPA (opa_bindings). Every answer must equal OPA's (effect and
violations), be a fail-safe DENY, or be refused as INVALID_ARGUMENT; one more permissive
than OPA's fails the build. 10,000 requests under CI=true (100 examples of 100), 1,000
locally.

OPA's engine comes from PyPI ``opa-golib-python-bindings==0.4.4``, installed by .ci/run
with --no-deps --ignore-requires-python (its metadata asks for Python 3.14; the wheel
runs on 3.11). Under CI=true its absence fails the test; elsewhere it skips.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from acgs import CONSTITUTIONAL_HASH
from acgs.adapters.rego_source import load_policy_dir
from acgs.domain.model import Effect, EngineResult, Severity, Violation
from acgs.entrypoints import cli, opa_diff, opa_requests
from hypothesis import given
from hypothesis import strategies as st

from tests.constitution_cases import request
from tests.fuzz_support import fuzz

REPO = Path(__file__).resolve().parents[2]
BATCH = 100
CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="module")
def differential() -> Iterator[opa_diff.Differential]:
    try:
        import opa_bindings  # noqa: F401
    except ImportError:
        if CI:
            pytest.fail(opa_diff.MISSING_PACKAGE)
        pytest.skip(opa_diff.MISSING_PACKAGE)
    bundle = load_policy_dir(REPO / "policy", constitutional_hash=CONSTITUTIONAL_HASH)
    diff = opa_diff.Differential(bundle, max_depth=32)
    yield diff
    diff.close()


@pytest.fixture(scope="module")
def vocab() -> opa_requests.Vocabulary:
    bundle = load_policy_dir(REPO / "policy", constitutional_hash=CONSTITUTIONAL_HASH)
    return opa_requests.vocabulary(bundle)


def test_decide_agrees_with_opa_or_fails_safe(differential: opa_diff.Differential,
                                              vocab: opa_requests.Vocabulary,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    # Each request is drawn from its own seed: drawing every choice through Hypothesis
    # measured ~80 ms per request (100 s for 1,000), this ~2 ms; a failing batch still
    # shrinks (to seeds) and its assertion shows the diverging requests.
    @fuzz(ci=10_000 // BATCH, local=10)
    @given(st.lists(st.integers(0, 2**64 - 1), min_size=BATCH, max_size=BATCH))
    def check(seeds: list[int]) -> None:
        docs = (opa_requests.random_request(random.Random(seed).choice, vocab) for seed in seeds)
        batch = differential.check(docs)
        assert batch.ok, "\n".join(batch.divergences)

    try:
        check()
    finally:
        with capsys.disabled():
            print(f"\nDecide against OPA: {differential.report.summary()}")
    report = differential.report
    assert sum(report.outcomes.values()) >= (10_000 if CI else 1_000)
    # Every effect occurs, on both sides, and most requests reach the engines.
    for effect in ("ALLOW/ALLOW", "DENY/DENY", "ESCALATE/ESCALATE"):
        assert report.effects[effect] > 0, report.summary()
    assert report.outcomes["agree"] > report.outcomes["refused"]


@pytest.mark.parametrize(("priority", "effect"), [
    (3, "ALLOW"), (3.0, "ALLOW"), (2.999999, "ALLOW"), (3.000001, "DENY"), (-0.5, "ALLOW"),
])
def test_ceiling_neighbours_agree(differential: opa_diff.Differential, priority: float,
                                  effect: str) -> None:
    doc = request("analyst", "read", action_attributes={"priority": priority})
    batch = differential.check([doc])
    assert batch.outcomes == {"agree": 1}, batch.divergences
    assert batch.effects == {f"{effect}/{effect}": 1}


def test_a_priority_six_decimals_would_change_is_refused(
        differential: opa_diff.Differential) -> None:
    """Issue 18: 3.0000004 reached regopy as 3 (ALLOW) while OPA denies it."""
    doc = request("analyst", "read", action_attributes={"priority": 3.0000004})
    assert differential.check([doc]).outcomes == {"refused": 1}


def test_a_more_permissive_answer_is_reported(differential: opa_diff.Differential) -> None:
    """The classification itself: a service ALLOW where OPA has DENY is the failing kind."""
    report = opa_diff.Report()
    allow = EngineResult(effect=Effect.ALLOW, violations=(), policy_revision="r")
    deny = EngineResult(effect=Effect.DENY, policy_revision="r",
                        violations=(Violation("p", Severity.HIGH, "m"),))
    opa_diff._classify(report, {}, allow, deny)
    opa_diff._classify(report, {}, deny, allow)
    opa_diff._classify(report, {}, RuntimeError("engine"), allow)
    opa_diff._classify(report, {}, deny, None)  # OPA has no decision: DENY is the safe answer
    opa_diff._classify(report, {}, allow, None)
    assert report.outcomes == {"MORE PERMISSIVE": 2, "DIFFERENT": 1, "fail-safe": 1,
                               "OPA undecided": 1}
    assert not report.ok
    assert len(report.divergences) == 3


# --- acgs policy test --against-opa -------------------------------------------------------

LENIENT = """package acgs.constitution

import rego.v1

# regopy 1.5 reads a backslash in an input string as an escape inside trim(): for the
# six characters \\u0041 it answers "" (ALLOW) where OPA answers DENY.
default decision := {"effect": "DENY", "violations": [{"principle": "p", "severity": "high",
	"message": "no"}]}

decision := {"effect": "ALLOW", "violations": []} if trim(input.action.type, "A") == ""
"""


def lenient_policy(directory: Path) -> Path:
    directory.mkdir()
    (directory / "decision.rego").write_text(LENIENT)
    (directory / "data.json").write_text(json.dumps({"acgs": {"types": ["\\u0041", "A"]}}))
    (directory / "manifest.json").write_text(json.dumps({
        "name": "lenient", "version": "1", "constitutional_hash": CONSTITUTIONAL_HASH,
        "decision": "acgs/constitution/decision"}))
    return directory


def test_cli_passes_the_constitution(differential: opa_diff.Differential,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["policy", "test", "--against-opa", str(REPO / "policy"),
                     "--samples", "400", "--seed", "7"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "against OPA: 400 inputs: agree " in out and "MORE PERMISSIVE 0" in out


def test_cli_fails_a_policy_more_permissive_than_opa(
        differential: opa_diff.Differential, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["policy", "test", "--against-opa", str(lenient_policy(tmp_path / "p")),
                     "--samples", "200"])
    captured = capsys.readouterr()
    assert code == 1, captured.out
    assert "MORE PERMISSIVE 0" not in captured.out
    assert "service ALLOW" in captured.err and "OPA DENY" in captured.err
    assert "do not activate it" in captured.err


def test_cli_says_how_to_install_opa_when_missing(tmp_path: Path) -> None:
    script = ("import sys; sys.modules['opa_bindings'] = None\n"
              "from acgs.entrypoints.cli import main\n"
              f"sys.exit(main(['policy', 'test', '--against-opa', {str(REPO / 'policy')!r}]))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO / "service")},
                          timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "opa-golib-python-bindings==0.4.4" in done.stderr
