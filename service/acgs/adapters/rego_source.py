"""Policy sources: a policy directory (or its parts) as one immutable, checked value.

A :class:`PolicyBundle` holds the Rego modules, the data document and the
manifest of one policy version, its content-derived ``revision`` and the
entrypoints the engine may query. Building one runs every static check the
engine relies on, so a bundle that exists is one the engine can serve:

- the manifest names the constitution in force (else ``ConstitutionMismatch``);
- the modules compile with regopy (else ``PolicyError`` naming file:line);
- every call in the engine's compiled plan names a rule of the policy or a
  built-in that regopy implements and we allow (else ``UnsupportedBuiltin``,
  see :mod:`acgs.adapters.rego_plan`): regopy evaluates an unknown built-in to
  undefined, which could silently switch a deny off.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import regopy

from acgs.adapters.rego_limits import explain
from acgs.adapters.rego_plan import REFUSED_BUILTINS, DoesNotCompile, refuse_calls
from acgs.domain import canonical
from acgs.errors import ConstitutionMismatch, InvalidRequest, PolicyError

__all__ = ["REFUSED_BUILTINS", "PolicyBundle", "bundle_from_parts", "check_modules", "check_policy",
           "compile_policy", "load_policy_dir"]

_NAME = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_PACKAGE = re.compile(rf"package\s+({_NAME})")
_IMPORT = re.compile(rf"import\s+data\.({_NAME})(?:\s+as\s+([A-Za-z_]\w*))?")
# Matched on the original text: a head may name a string key, as in `foo["bar"](x) := ...`.
_HEAD = re.compile(r"(?:default\s+)?([A-Za-z_]\w*(?:\.[A-Za-z_]\w*|\[\"[A-Za-z_]\w*\"\])*)"
                   r"[ \t]*(\(|\[|:=|=(?!=)|\{|if\b|contains\b)")
_CONTINUES = frozenset({"if", "else", "contains", "in", "not", "some", "every", "with", "as",
                        "default"})
# ``set()`` is the empty-set literal, not a call.
_KEYWORDS = _CONTINUES | {"package", "import", "true", "false", "null", "set"}
_ENTRYPOINT = re.compile(r"[A-Za-z_]\w*(?:/[A-Za-z_]\w*)+")
_ERROR_SPLIT = re.compile(rb"\(error\s")
_ERROR_LOC = re.compile(rb"(\d+):([^|\s]*)\|(\d+)\|(\d+)")
_ERROR_MSG = re.compile(rb"\(errormsg (\d+):")


@dataclass(frozen=True, slots=True)
class RegoOutline:
    """What the static scan learned: queryable rules and every callable name."""

    entrypoints: frozenset[str]  # "pkg/path/rule"
    callables: frozenset[str]  # "pkg.path.name" of every rule and function


@dataclass(frozen=True, slots=True)
class PolicyBundle:
    """One checked policy version, built by :func:`load_policy_dir` or :func:`bundle_from_parts`."""

    name: str
    version: str
    constitutional_hash: str
    decision: str  # the entrypoint of the decision, e.g. "acgs/constitution/decision"
    modules: tuple[tuple[str, str], ...]  # (module name, source), sorted by name
    data_json: str  # canonical JSON of the data document
    manifest_json: str  # canonical JSON of the manifest
    entrypoints: frozenset[str]
    revision: str
    data_revision: str

    @property
    def tests(self) -> tuple[str, ...]:
        """The entrypoints of test rules (named ``test_*``), sorted."""
        return tuple(sorted(e for e in self.entrypoints if "/test_" in e))


def load_policy_dir(path: Path, *, constitutional_hash: str) -> PolicyBundle:
    """Load manifest.json, every ``*.rego`` below ``path`` and data.json (optional, ``{}``).

    ``examples/*.json`` are folded into the manifest's ``examples`` (see
    :mod:`acgs.adapters.policy_examples`).

    Module names are paths relative to ``path`` (``principles/x.rego``).
    Raises PolicyError (unreadable file, bad JSON, failed check),
    UnsupportedBuiltin, or ConstitutionMismatch (``what="policy"``).
    """
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        data_path = path / "data.json"
        data_json = data_path.read_text(encoding="utf-8") if data_path.exists() else "{}"
        modules = {
            f.relative_to(path).as_posix(): f.read_text(encoding="utf-8")
            for f in sorted(path.rglob("*.rego"))
            if not any(p.startswith(".") for p in f.relative_to(path).parts)
        }
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise PolicyError(f"cannot read policy directory {path}: {err}") from err
    if not isinstance(manifest, dict):
        raise PolicyError(f"{path / 'manifest.json'}: expected a JSON object")
    from acgs.adapters.policy_examples import with_examples  # it imports this module

    manifest = with_examples(path, manifest)
    return bundle_from_parts(modules=modules, data_json=data_json, manifest=manifest,
                             constitutional_hash=constitutional_hash)


def bundle_from_parts(
    *, modules: Mapping[str, str], data_json: str, manifest: Mapping[str, Any],
    constitutional_hash: str,
) -> PolicyBundle:
    """Check and seal a policy given in memory (e.g. a version stored in PostgreSQL).

    Raises the errors of :func:`load_policy_dir`.
    """
    name, version, decision = _check_manifest(manifest, constitutional_hash)
    data_text = _canonical_data(data_json)
    ordered = tuple(sorted(modules.items()))
    outline = check_policy(modules, data_text)
    _check_entrypoints(manifest, decision, outline)
    manifest_text = canonical.dumps(canonical.normalize(dict(manifest), max_depth=16))
    parts = [part for pair in ordered for part in pair]
    revision = canonical.digest("modules", *parts, "data", data_text, "manifest", manifest_text)
    return PolicyBundle(
        name=name, version=version, constitutional_hash=constitutional_hash, decision=decision,
        modules=ordered, data_json=data_text, manifest_json=manifest_text,
        entrypoints=outline.entrypoints, revision=revision[:16],
        data_revision=canonical.digest(data_text)[:16],
    )


def check_policy(modules: Mapping[str, str], data_json: str = "{}") -> RegoOutline:
    """Outline, compile and refuse what the compiled plan calls (see module docstring).

    Raises PolicyError (syntax error as file:line:column) or UnsupportedBuiltin.
    """
    outline = check_modules(modules)
    ordered = tuple(sorted(modules.items()))
    if not outline.entrypoints:
        raise PolicyError("the policy defines no rule")
    try:
        refuse_calls(ordered, data_json, outline.entrypoints)  # compiles, under plain names
    except DoesNotCompile as err:
        compile_policy(ordered, data_json, outline.entrypoints)  # the errors, with real names
        raise PolicyError(f"the policy does not compile: {err}") from err
    return outline


def compile_policy(
    modules: Iterable[tuple[str, str]], data_json: str, entrypoints: Iterable[str]
) -> tuple[Any, Any]:
    """Compile into a fresh regopy interpreter; return ``(interpreter, bundle)``.

    The interpreter has ``strict_built_in_errors`` on. Raises PolicyError
    naming file:line:column and regopy's message.
    """
    sources = dict(modules)
    wanted = sorted(entrypoints)
    if not wanted:
        raise PolicyError("the policy defines no rule")
    interp = regopy.Interpreter()
    interp.log_level = regopy.LogLevel.NONE  # errors are reported by us, not printed
    interp.strict_built_in_errors = True
    try:
        for name, source in sources.items():
            interp.add_module(name, source)
        interp.add_data_json(data_json)
        bundle = interp.build(None, wanted)
    except regopy.RegoError as err:
        raise PolicyError(describe_rego_error(str(err), sources)) from err
    if not bundle.ok():
        raise PolicyError("regopy could not build the policy")
    return interp, bundle


def describe_rego_error(text: str, sources: Mapping[str, str]) -> str:
    """Turn regopy's error tree (``(error 6:b.rego|30|2 ...``) into ``b.rego:3:4: message``.

    regopy locates errors by module name and byte offset; we convert that to a
    line and column. Text that does not parse is returned as its first line.
    """
    raw = text.encode("utf-8", "replace")
    found: list[str] = []
    for chunk in _ERROR_SPLIT.split(raw)[1:]:
        where, source, offset = "", "", -1
        loc = _ERROR_LOC.match(chunk)
        if loc and int(loc.group(1)) == len(loc.group(2)):
            name = loc.group(2).decode("utf-8", "replace")
            source = sources.get(name, "")
            offset = len(source.encode("utf-8")[:int(loc.group(3))].decode("utf-8", "replace"))
            where = _where(name, source, offset) + ": "
        msg = _ERROR_MSG.search(chunk)
        if msg:
            start = msg.end()
            message = chunk[start:start + int(msg.group(1))].decode("utf-8", "replace")
            known = explain(message, source, offset) if offset >= 0 else None
            found.append(where + (known or message))
    if not found:
        return text.strip().splitlines()[0] if text.strip() else "regopy failed"
    return "; ".join(dict.fromkeys(found))  # one construct can raise the same error twice


def _where(name: str, source: str, offset: int) -> str:
    """``name:line:column`` of a character offset into ``source``."""
    line_start = source.rfind("\n", 0, offset) + 1
    return f"{name}:{source.count(chr(10), 0, offset) + 1}:{offset - line_start + 1}"


def check_modules(modules: Mapping[str, str]) -> RegoOutline:
    """Scan the modules: collect their rules (what calls what is read from the plan).

    Raises PolicyError (a module without a package).
    """
    blanked = {name: blank_literals(source) for name, source in modules.items()}
    parsed = {name: _outline_module(name, modules[name], text) for name, text in blanked.items()}
    entrypoints = frozenset(e for _, eps, _, _ in parsed.values() for e in eps)
    callables = frozenset(c for _, _, cs, _ in parsed.values() for c in cs)
    return RegoOutline(entrypoints=entrypoints, callables=callables)


def blank_literals(source: str) -> str:
    """Return ``source`` with comments and string contents replaced by spaces.

    Offsets and newlines are kept, so positions still map to file:line. The
    expressions inside template strings (``$"{expr}"``) stay visible.
    """
    out = list(source)
    _blank_from(source, 0, out, in_template=False)
    return "".join(out)


def _blank_from(src: str, i: int, out: list[str], *, in_template: bool) -> int:
    depth = 0
    while i < len(src):
        c = src[i]
        if c == "#":
            end = src.find("\n", i)
            i = _fill(out, i, len(src) if end < 0 else end)
        elif c in "\"`":
            i = _skip_string(src, i, out, template=False)
        elif c == "$" and src[i + 1:i + 2] in ('"', "`"):
            i = _skip_string(src, i + 1, out, template=True)
        else:
            depth += (c == "{") - (c == "}")
            if in_template and depth < 0:
                return i
            i += 1
    return i


def _skip_string(src: str, i: int, out: list[str], *, template: bool) -> int:
    quote, j = src[i], i + 1
    while j < len(src) and src[j] != quote:
        if template and src[j] == "{":
            j = _blank_from(src, j + 1, out, in_template=True) + 1
            continue
        step = 2 if quote == '"' and src[j] == "\\" else 1
        _fill(out, j, min(j + step, len(src)))
        j += step
    return j + 1


def _fill(out: list[str], start: int, end: int) -> int:
    for k in range(start, end):
        if out[k] != "\n":
            out[k] = " "
    return end


def _outline_module(
    name: str, source: str, text: str
) -> tuple[str, set[str], set[str], dict[str, str]]:
    package = ""
    entrypoints: set[str] = set()
    callables: set[str] = set()
    imports: dict[str, str] = {}
    for pos in _statement_starts(text):
        if m := _PACKAGE.match(text, pos):
            package = m.group(1)
        elif m := _IMPORT.match(text, pos):
            imports[m.group(2) or m.group(1).rsplit(".", 1)[-1]] = m.group(1)
        elif (m := _HEAD.match(source, pos)) and m.group(1).split(".")[0] not in _KEYWORDS:
            if not package:
                raise PolicyError(f"{name}:1:1: the module declares no package")
            head = re.sub(r'\["(\w+)"\]', r".\1", m.group(1))
            callables.add(f"{package}.{head}")
            if m.group(2) != "(":  # a function is called, never queried
                base = package.replace(".", "/")
                entrypoints.add(f"{base}/{head.split('.')[0]}")
                entrypoints.add(f"{base}/{head.replace('.', '/')}")
    if not package:
        raise PolicyError(f"{name}:1:1: the module declares no package")
    return package, entrypoints, callables, imports


def _statement_starts(text: str) -> list[int]:
    """Offsets of the first token of each line at nesting depth 0 that begins a statement."""
    starts: list[int] = []
    depth, line_start = 0, True
    for i, c in enumerate(text):
        if c == "\n":
            line_start = True
        elif not c.isspace():
            if line_start and depth == 0 and not _continues(text, i):
                starts.append(i)
            line_start = False
            depth += (c in "([{") - (c in ")]}")
    return starts


def _continues(text: str, pos: int) -> bool:
    """True when the line at ``pos`` continues the previous expression (after ``if``, ``+``...)."""
    k = pos - 1
    while k >= 0 and text[k].isspace():
        k -= 1
    if k < 0:
        return False
    if text[k] in "=:+-*/%<>!&|,.":
        return True
    end = k + 1
    while k >= 0 and (text[k].isalnum() or text[k] == "_"):
        k -= 1
    return text[k + 1:end] in _CONTINUES


def _check_manifest(manifest: Mapping[str, Any], expected_hash: str) -> tuple[str, str, str]:
    fields = {}
    for key in ("name", "version", "constitutional_hash", "decision"):
        value = manifest.get(key)
        if not isinstance(value, str) or not value:
            raise PolicyError(f"manifest.json: {key!r} must be a non-empty string")
        fields[key] = value
    if fields["constitutional_hash"] != expected_hash:
        raise ConstitutionMismatch(expected=expected_hash, got=fields["constitutional_hash"],
                                   what="policy")
    return fields["name"], fields["version"], fields["decision"]


def _check_entrypoints(manifest: Mapping[str, Any], decision: str, outline: RegoOutline) -> None:
    listed = manifest.get("entrypoints", [])
    if not isinstance(listed, list) or not all(isinstance(e, str) for e in listed):
        raise PolicyError("manifest.json: 'entrypoints' must be a list of strings")
    for entry in [decision, *listed]:
        if not _ENTRYPOINT.fullmatch(entry):
            raise PolicyError(f"manifest.json: entrypoint {entry!r} is not of the form pkg/rule")
        if entry not in outline.entrypoints:
            raise PolicyError(f"manifest.json: entrypoint {entry!r} names no rule of the policy")


def _canonical_data(data_json: str) -> str:
    try:
        data = json.loads(data_json)
        if not isinstance(data, dict):
            raise PolicyError("data.json: expected a JSON object")
        return canonical.dumps(canonical.normalize(data, max_depth=256))
    except (ValueError, InvalidRequest) as err:
        raise PolicyError(f"data.json: {err}") from err
