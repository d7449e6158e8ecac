"""OPA's own conformance cases against regopy, as ACGS-2 configures it.

Each case is first loaded through the adapter's static checks (a case the
adapter refuses is "refused": it could never be activated), then its query
runs on regopy with strict built-in errors and is compared with OPA's
expectation. Every divergence must be listed, with a reason, in
opa_known_divergences.yaml; a listed case that now agrees must be removed.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import regopy
import yaml
from acgs.adapters.rego_source import check_modules, check_policy
from acgs.domain import canonical
from acgs.errors import PolicyError

REPO = Path(__file__).resolve().parents[2]
KNOWN = Path(__file__).with_name("opa_known_divergences.yaml")


@dataclass(frozen=True)
class Case:
    file: str  # relative to the conformance directory
    note: str
    occurrence: int  # 1 for the first case with this note in its file, 2 for the next...
    spec: dict[str, Any]

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.file, self.note, self.occurrence)


def conformance_dir() -> Path | None:
    configured = os.environ.get("ACGS_OPA_CONFORMANCE_DIR")
    path = Path(configured) if configured else REPO.parent / "shared" / "opa-conformance"
    return path if path.is_dir() else None


def load_cases(root: Path) -> Iterator[Case]:
    for path in sorted(root.rglob("*.yaml")):
        seen: Counter[str] = Counter()
        for spec in yaml.safe_load(path.read_text(encoding="utf-8"))["cases"]:
            seen[spec["note"]] += 1
            yield Case(path.relative_to(root).as_posix(), spec["note"], seen[spec["note"]], spec)


def outcome(case: Case) -> tuple[str, str]:
    """``("agree" | "refused" | "diverge", detail)`` for one case."""
    modules = {f"test-{i}.rego": src for i, src in enumerate(case.spec["modules"])}
    data_json = json.dumps(case.spec.get("data") or {})
    try:
        if check_modules(modules).entrypoints:
            check_policy(modules, data_json)
    except PolicyError as err:
        return "refused", str(err)
    got_error, got = evaluate(case.spec, modules, data_json)
    if "want_error" in case.spec or "want_error_code" in case.spec:
        return ("agree", "") if got_error else ("diverge", f"no error; got {got}")
    if got_error:
        return "diverge", f"error: {got}"
    want = bindings_multiset(case.spec.get("want_result") or [], case.spec)
    have = bindings_multiset(got, case.spec)
    return ("agree", "") if want == have else ("diverge", f"got {got}")


def evaluate(spec: dict[str, Any], modules: dict[str, str], data_json: str) -> tuple[bool, Any]:
    """Run the case's query: ``(False, [bindings...])`` or ``(True, error text)``."""
    interp = regopy.Interpreter()
    interp.log_level = regopy.LogLevel.NONE
    interp.strict_built_in_errors = True
    try:
        for name, source in modules.items():
            interp.add_module(name, source)
        interp.add_data_json(data_json)
        if "input_term" in spec:
            interp.set_input_term(spec["input_term"])
        elif "input" in spec:
            interp.set_input(regopy.Input(spec["input"]))
        output = interp.query(spec["query"])
        if not output.ok():
            return True, "not ok"
        return False, [r.bindings for r in output.results if r.expressions or r.bindings]
    except Exception as err:  # RegoError, or a malformed output regopy cannot parse
        return True, f"{type(err).__name__}: {err}"[:200]


def bindings_multiset(results: list[dict[str, Any]], spec: dict[str, Any]) -> Counter[str]:
    """Bindings as comparable text: 1 == 1.0; arrays sorted when the case asks for it."""
    out: Counter[str] = Counter()
    for binding in results:
        value = canonical.normalize(binding, max_depth=1000)
        if spec.get("sort_bindings"):
            value = {k: sorted(v, key=canonical.dumps) if isinstance(v, list) else v
                     for k, v in value.items()}
        out[canonical.dumps(value)] += 1
    return out


def test_regopy_agrees_with_opa_except_known_divergences() -> None:
    root = conformance_dir()
    if root is None:
        if os.environ.get("CI") == "true":
            pytest.fail("OPA conformance cases not found: set ACGS_OPA_CONFORMANCE_DIR")
        pytest.skip("OPA conformance cases not found (../shared/opa-conformance)")
    known = yaml.safe_load(KNOWN.read_text(encoding="utf-8"))
    listed = {(d["file"], d["note"], d.get("occurrence", 1)): d["reason"]
              for d in known["divergences"]}
    counts: Counter[str] = Counter()
    diverging: dict[tuple[str, str, int], str] = {}
    for case in load_cases(root):
        result, detail = outcome(case)
        counts[result] += 1
        if result == "diverge":
            diverging[case.key] = detail
    print(f"\nOPA conformance: {dict(counts)} of {sum(counts.values())} cases")
    new = {k: v for k, v in diverging.items() if k not in listed}
    fixed = sorted(k for k in listed if k not in diverging)
    assert not new, f"new divergences (fix, or list with a reason): {new}"
    assert not fixed, f"listed divergences that now agree (remove them): {fixed}"
    assert dict(counts) == known["expected_counts"]
