"""What a compiled policy calls, read from the engine's own plan, and the refusal of built-ins.

A text pattern cannot decide what a Rego program calls: ``opa["runtime"]()``,
``opa .runtime()``, ``import opa.runtime`` or ``with count as http.send`` all
reach a built-in without spelling ``opa.runtime(``. The engine resolves every
reference when it compiles, and writes the result as a plan (OPA's IR, the
``plan.json`` of a saved bundle): each call is a ``CallStmt`` naming either a
function of the plan or a built-in, with the file, row and column it came from.
We read that plan, so the refusal sees exactly the calls the engine will make
and nothing else (comments, strings, a local variable named ``opa`` are not
calls). Only what the plan holds can run: every query goes to a planned entrypoint.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import regopy

from acgs.errors import PolicyError, UnsupportedBuiltin

# Built-ins regopy implements but a decision service must not run: each does
# I/O or reveals the host. Anything regopy lacks is refused as well.
REFUSED_BUILTINS: Mapping[str, str] = {
    "http.send": "makes network requests",
    "net.lookup_ip_addr": "makes DNS requests",
    "opa.runtime": "exposes the process environment",
    "providers.aws.sign_req": "handles cloud credentials",
    "print": "writes request data to the server's output",
    "internal.print": "writes request data to the server's output",
    "trace": "writes request data to the server's output",
    # A decision must be a function of input, data and policy: the cache, the
    # audit replay and "never stale" depend on it. Callers pass time in context.
    "time.now_ns": "changes with the clock, so cached and replayed decisions would differ",
    "rand.intn": "is random, so cached and replayed decisions would differ",
    "uuid.rfc4122": "is random, so cached and replayed decisions would differ",
    # These read the clock themselves: exp/nbf, or a certificate's validity, against now
    # (unless told a time, which the engine cannot be made to insist on). Verify the
    # signature (io.jwt.verify_*), decode, and compare the claims with a time in context.
    "io.jwt.decode_verify": "checks exp and nbf against the clock, so cached and replayed "
                            "decisions would differ",
    "crypto.x509.parse_and_verify_certificates": "checks validity against the clock, so "
                                                 "cached and replayed decisions would differ",
    "crypto.x509.parse_and_verify_certificates_with_options": "checks validity against the "
                                                              "clock, so cached and replayed "
                                                              "decisions would differ",
}
_CHILD_TIMEOUT_S = 60.0
_EXIT_NO_BUILD = 2  # the child's exit code when the policy does not compile
# The names a source author wrote for the engine's own spellings of a built-in.
_SHOWN = {"internal.print": "print"}


class DoesNotCompile(PolicyError):
    """The policy does not compile (compile it with its own module names for the message)."""


@dataclass(frozen=True, slots=True)
class PlannedCall:
    """One call of the plan: ``name`` and where the source wrote it (0 when unknown)."""

    name: str
    module: str
    line: int
    column: int
    dynamic: bool = False

    @property
    def where(self) -> str:
        if not self.module:
            return "(policy)"
        return f"{self.module}:{self.line}:{self.column}" if self.line else self.module


def planned_calls(
    modules: Sequence[tuple[str, str]], data_json: str, entrypoints: Iterable[str]
) -> list[PlannedCall]:
    """Every call to something other than a function of the plan, in plan order.

    Raises DoesNotCompile, UnsupportedBuiltin when the engine cannot write its plan, or
    PolicyError when we cannot read it.
    """
    names = [name for name, _ in modules]
    plan = _plan_in_child(modules, data_json, sorted(entrypoints))
    try:
        files = [_original(f["value"], names) for f in plan.get("static", {}).get("files", [])]
        own = {f["name"] for f in (plan.get("funcs") or {}).get("funcs", [])}
    except (AttributeError, KeyError, TypeError) as err:
        raise PolicyError(f"the engine's plan is not in the shape we read: {err}") from err
    return [call for call in _calls(plan, files) if call.dynamic or call.name not in own]


def _plan_in_child(
    modules: Sequence[tuple[str, str]], data_json: str, entrypoints: list[str]
) -> dict[str, Any]:
    """The engine's plan, written by a child process (``python -m acgs.adapters.rego_plan``).

    Why a child: regopy 1.5.2 corrupts its heap (``free(): invalid size``, the process
    aborts) when it saves a bundle as JSON in a process that loaded grpc before regopy,
    as the server does. The child loads regopy alone, gets no environment beyond what
    Python needs, and a crash there is a refusal, not a dead server.
    """
    request = json.dumps({"modules": [list(m) for m in modules], "data_json": data_json,
                          "entrypoints": entrypoints})
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH", "LANG", "HOME")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[2]), *filter(None, [env.get("PYTHONPATH")])])
    try:
        done = subprocess.run([sys.executable, "-m", "acgs.adapters.rego_plan"], input=request,
                              capture_output=True, text=True, env=env, timeout=_CHILD_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise PolicyError(f"cannot read the engine's plan of the policy: {err}") from err
    if done.returncode == _EXIT_NO_BUILD:
        raise DoesNotCompile(done.stderr.strip()[-300:])
    if done.returncode != 0:
        # Fail closed: what we cannot see the engine call, we do not let it run.
        said = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise UnsupportedBuiltin(
            f"the engine cannot write out what this policy calls ({said:.300}), so it is "
            "refused; a call through a local variable, as in `f(opa) := opa.runtime()`, "
            "is one such construct")
    try:
        plan: dict[str, Any] = json.loads(done.stdout)
    except ValueError as err:
        raise PolicyError(f"the engine's plan is not JSON: {err}") from err
    return plan


def write_plan(request: Mapping[str, Any]) -> str:
    """The child's work: compile under plain names (``m0.rego``...) and return plan.json.

    Saving a bundle writes each module under its own name, and an uploaded name
    (``a/b.rego``, ``../x``) is no path to write to: regopy aborts on a missing directory.
    """
    interp = regopy.Interpreter()
    interp.log_level = regopy.LogLevel.NONE
    try:
        for i, (_, source) in enumerate(request["modules"]):
            interp.add_module(f"m{i}.rego", source)
        interp.add_data_json(request["data_json"])
        bundle = interp.build(None, list(request["entrypoints"]))
    except regopy.RegoError as err:
        raise DoesNotCompile(str(err)) from err
    if not bundle.ok():
        raise DoesNotCompile("regopy could not build the policy")
    with tempfile.TemporaryDirectory(prefix="acgs-plan-") as tmp:
        interp.save_bundle(tmp, bundle)
        return (Path(tmp) / "plan.json").read_text(encoding="utf-8")


def _original(plain: str, names: Sequence[str]) -> str:
    index = plain.removeprefix("m").removesuffix(".rego")
    return names[int(index)] if index.isdigit() and int(index) < len(names) else plain


def _calls(node: Any, files: list[str]) -> Iterator[PlannedCall]:
    if isinstance(node, list):
        for item in node:
            yield from _calls(item, files)
        return
    if not isinstance(node, dict):
        return
    kind, stmt = node.get("type"), node.get("stmt")
    if kind in ("CallStmt", "CallDynamicStmt") and isinstance(stmt, dict):
        yield _call(kind, stmt, files)
    for value in node.values():
        yield from _calls(value, files)


def _call(kind: str, stmt: Mapping[str, Any], files: list[str]) -> PlannedCall:
    index, row, col = stmt.get("file"), stmt.get("row"), stmt.get("col")
    module = files[index] if isinstance(index, int) and 0 <= index < len(files) else ""
    # The plan counts rows and columns from 0; editors and our messages from 1.
    line = row + 1 if isinstance(row, int) else 0
    column = col + 1 if isinstance(col, int) else 0
    return PlannedCall(
        name=str(stmt.get("func", "")), module=module, line=line, column=column,
        dynamic=kind == "CallDynamicStmt")


def refuse_calls(
    modules: Sequence[tuple[str, str]], data_json: str, entrypoints: Iterable[str]
) -> None:
    """Raise UnsupportedBuiltin (``file:line:col: call to X() refused: ...``) for the first
    planned call to a refused built-in, to one regopy does not implement (it would evaluate
    to undefined and could switch a deny off), or through a computed reference."""
    checker = regopy.Interpreter()
    for call in planned_calls(modules, data_json, entrypoints):
        shown = _SHOWN.get(call.name, call.name)
        if call.dynamic:
            raise UnsupportedBuiltin(f"{call.where}: call through a computed reference is "
                                     "not supported")
        if call.name in REFUSED_BUILTINS:
            raise UnsupportedBuiltin(f"{call.where}: call to {shown}() refused: it "
                                     f"{REFUSED_BUILTINS[call.name]}")
        if not checker.is_builtin(call.name):
            raise UnsupportedBuiltin(f"{call.where}: call to {shown}(): no rule of the policy "
                                     "defines it and the engine has no such built-in")


def main() -> int:
    try:
        sys.stdout.write(write_plan(json.load(sys.stdin)))
    except DoesNotCompile as err:
        print(str(err)[-300:], file=sys.stderr)
        return _EXIT_NO_BUILD
    except regopy.RegoError as err:
        said = re.findall(r"errormsg \d+:([^)\n]*)", str(err)) or [str(err)[:200]]
        print("; ".join(dict.fromkeys(said)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
