"""A version must decide: its decision rule, run on known inputs, yields well-formed decisions.

Rego tests can pass while the manifest's ``decision`` rule yields ``false`` or
an object Decide cannot read; every live decision would then be a fail-safe
DENY. So the checker also evaluates the decision rule on

- the manifest's examples: ``"examples": {name: {"input": ..., "effect": ...}}``,
  where a policy directory's ``examples/*.json`` files are folded in (by
  :func:`with_examples`, for the upload and for the server's own directory
  alike, so both give the same revision) under ``examples/<file>``;
- every input a Rego test supplies with ``with input as <value>``, where the
  value is a literal or names a rule (a constant) of the policy: each is
  copied into a rule of its own module and evaluated (a value built from the
  test's local variables cannot be known without running the test: skipped).

Each result must pass :func:`~acgs.adapters.regopy_engine.parse_decision`, the
check Decide applies, and match the example's ``effect`` when it names one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import regopy

from acgs.adapters.rego_source import PolicyBundle, blank_literals, compile_policy
from acgs.adapters.regopy_calls import build_input, query_entrypoint
from acgs.adapters.regopy_engine import output_value, parse_decision
from acgs.errors import AcgsError, PolicyError

EXAMPLES_DIR = "examples"
_EFFECTS = frozenset({"ALLOW", "DENY", "ESCALATE"})
_WITH_INPUT = re.compile(r"\bwith\s+input\s+as\s+")
_REF = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_PACKAGE = re.compile(r"(?m)^\s*package\s+([A-Za-z_][\w.]*)")
_RULE_START = re.compile(r"(?m)^([A-Za-z_]\w*)")
_NOT_RULES = frozenset({"package", "import", "default"})
_SYNTHETIC = "acgs_example_input_"


@dataclass(frozen=True, slots=True)
class Example:
    """One input to decide: ``label`` names it in a refusal; ``effect`` "" = any."""

    label: str
    input: Any
    effect: str = ""


def with_examples(directory: Path, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """``manifest`` with ``directory/examples/*.json`` folded into its ``examples``.

    Raises PolicyError for an unreadable or non-JSON example file.
    """
    folder = directory / EXAMPLES_DIR
    out = dict(manifest)
    if not folder.is_dir():
        return out
    examples = dict(out.get("examples") or {}) if isinstance(out.get("examples"), dict) else {}
    for path in sorted(folder.glob("*.json")):
        try:
            examples[f"{EXAMPLES_DIR}/{path.name}"] = json.loads(path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise PolicyError(f"{EXAMPLES_DIR}/{path.name}: {err}") from err
    if examples:
        out["examples"] = examples
    return out


def manifest_examples(manifest: Mapping[str, Any]) -> list[Example]:
    """The manifest's examples; PolicyError naming one that is not ``{"input", "effect"?}``."""
    raw = manifest.get("examples", {})
    if not isinstance(raw, dict):
        raise PolicyError("manifest.json: 'examples' must be an object: name -> example")
    found = []
    for name, example in sorted(raw.items()):
        if not isinstance(example, dict) or "input" not in example:
            raise PolicyError(f"example {name}: expected an object with 'input'")
        effect = example.get("effect", "")
        if effect != "" and effect not in _EFFECTS:
            raise PolicyError(f"example {name}: effect must be one of ALLOW, DENY, ESCALATE")
        found.append(Example(label=f"example {name}", input=example["input"], effect=effect))
    return found


def decision_failures(bundle: PolicyBundle) -> tuple[int, list[str]]:
    """Evaluate the decision rule on every example and test input: ``(checked, failures)``.

    Each failure names its example (``example examples/x.json: ...``) or test
    (``input of test_x (tests/x_test.rego:12): ...``). Raises PolicyError for
    a malformed example list or when the bundle does not compile.
    """
    manifest = json.loads(bundle.manifest_json)
    examples = manifest_examples(manifest) + inputs_of_tests(bundle)
    if not examples:
        return 0, []
    interp, compiled = compile_policy(bundle.modules, bundle.data_json, bundle.entrypoints)
    failures = [f for f in (_failure(interp, compiled, bundle, e) for e in examples) if f]
    return len(examples), failures


def _failure(interp: Any, compiled: Any, bundle: PolicyBundle, example: Example) -> str:
    try:
        interp.set_input(build_input(example.input))
        output = query_entrypoint(interp, compiled, bundle.decision)
        defined, value = output_value(output, bundle.decision)
        if not defined:
            return f"{example.label}: decision {bundle.decision} is undefined"
        result = parse_decision(value, revision=bundle.revision)
    except AcgsError as err:
        return f"{example.label}: not a well-formed decision: {err}"
    except Exception as err:  # regopy's own exceptions, a bad input value
        return f"{example.label}: evaluation failed: {err}"
    if example.effect and result.effect.name != example.effect:
        principles = ", ".join(v.principle for v in result.violations) or "no violation"
        return (f"{example.label}: expected {example.effect}, the decision is "
                f"{result.effect.name} ({principles})")
    return ""


@dataclass(frozen=True, slots=True)
class _Site:
    module: str
    expr: str
    label: str


def inputs_of_tests(bundle: PolicyBundle) -> list[Example]:
    """The value of every ``with input as <literal or rule>`` of the bundle's modules."""
    sites = [s for name, source in bundle.modules for s in _sites(name, source)]
    if not sites:
        return []
    values = _evaluate_sites(bundle, sites)
    return [Example(label=site.label, input=values[i]) for i, site in enumerate(sites)
            if i in values]


def _sites(module: str, source: str) -> list[_Site]:
    blanked = blank_literals(source)
    found = []
    for m in _WITH_INPUT.finditer(blanked):
        start = m.end()
        end = _expr_end(blanked, start)
        if end <= start:
            continue
        expr = source[start:end]
        if expr.startswith("input"):
            continue  # derived from the test's own input: not a known value
        line = blanked.count("\n", 0, start) + 1
        rules = [r for r in _RULE_START.findall(blanked[:start]) if r not in _NOT_RULES]
        rule = rules[-1] if rules else "?"
        found.append(_Site(module, expr, f"input of test {rule} ({module}:{line})"))
    return found


def _expr_end(text: str, start: int) -> int:
    """End of the literal (balanced brackets) or reference starting at ``start``; else start."""
    if start < len(text) and text[start] in "{[":
        depth = 0
        for i in range(start, len(text)):
            depth += (text[i] in "{[(") - (text[i] in "}])")
            if depth == 0:
                return i + 1
        return start
    m = _REF.match(text, start)
    if m is None or text[m.end():m.end() + 1] in ("(", "["):
        return start  # a call or an indexed reference: not a plain constant
    return m.end()


def _evaluate_sites(bundle: PolicyBundle, sites: list[_Site]) -> dict[int, Any]:
    """Each site's value (by index); sites that do not compile (local variables) are left out."""
    try:
        return _evaluate_together(bundle, list(enumerate(sites)))
    except PolicyError:
        pass
    values: dict[int, Any] = {}
    for i, site in enumerate(sites):  # one at a time: skip only the sites that fail
        try:
            values.update(_evaluate_together(bundle, [(i, site)]))
        except PolicyError:
            continue
    return values


def _evaluate_together(bundle: PolicyBundle, sites: list[tuple[int, _Site]]) -> dict[int, Any]:
    sources = dict(bundle.modules)
    modules = dict(sources)
    entrypoints = set(bundle.entrypoints)
    wanted: dict[int, str] = {}
    for i, site in sites:
        package = _PACKAGE.search(blank_literals(sources[site.module]))
        if package is None:
            continue
        modules[site.module] += f"\n\n{_SYNTHETIC}{i} := {site.expr}\n"
        wanted[i] = f"{package.group(1).replace('.', '/')}/{_SYNTHETIC}{i}"
        entrypoints.add(wanted[i])
    _, compiled = compile_policy(tuple(sorted(modules.items())), bundle.data_json, entrypoints)
    values: dict[int, Any] = {}
    for i, entrypoint in wanted.items():
        interp = regopy.Interpreter()  # no input document: a constant needs none
        interp.log_level = regopy.LogLevel.NONE
        interp.strict_built_in_errors = True
        try:
            defined, value = output_value(interp.query_bundle_entrypoint(compiled, entrypoint),
                                          entrypoint)
        except Exception:  # a value we cannot know is skipped, not a refusal
            continue
        if defined:
            values[i] = value
    return values
