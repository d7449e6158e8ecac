"""Checks an uploaded policy in a short-lived child process, so that no policy crashes the server.

regopy (rego-cpp) can abort the whole process on some constructs (found with
``with`` in tests); an upload is untrusted input. The parent sends the parts
as JSON on the child's stdin (``python -m acgs.adapters.policy_checker``);
the child runs :func:`~acgs.adapters.rego_source.bundle_from_parts` (static
checks, compile), every Rego test of the bundle and the decision rule on its
examples and test inputs (:mod:`acgs.adapters.policy_examples`), and answers one JSON
object on stdout. A child that dies, or runs past ``timeout_s``, is a refusal.
Only checked policies are ever compiled inside the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from acgs.domain.policy_version import CheckedPolicy, content_digest
from acgs.errors import (
    ConstitutionMismatch,
    InvalidRequest,
    LimitExceeded,
    PolicyError,
    PolicyTestsFailed,
    UnsupportedBuiltin,
)

_MAX_FAILURES_SHOWN = 20
logger = logging.getLogger("acgs.policy.checker")


class SubprocessPolicyChecker:
    """Runs at most ``concurrency`` checks at once, each in its own child process.

    A check beyond that is refused at once (LimitExceeded, RESOURCE_EXHAUSTED), not
    queued. A child lives no longer than its call: when the call ends in any way
    (answer, ``timeout_s``, the caller's deadline, cancellation, a disconnect) its
    whole process group is killed, and its slot is free only once it has exited.
    ``command`` replaces the child's command line (tests play a crashing checker).
    """

    def __init__(self, *, constitutional_hash: str, timeout_s: float = 60.0,
                 concurrency: int = 2, command: Sequence[str] | None = None) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._hash = constitutional_hash
        self._command = list(command or (sys.executable, "-m", "acgs.adapters.policy_checker"))
        self._timeout_s = timeout_s
        self._concurrency = concurrency
        self._running = 0

    async def check(self, *, modules: Mapping[str, str], data_json: str,
                    manifest_json: str) -> CheckedPolicy:
        """Check the parts; return the sealed, tested policy.

        Raises ConstitutionMismatch (manifest of another constitution),
        UnsupportedBuiltin, PolicyTestsFailed (naming every failing test),
        PolicyError (syntax error as file:line:column, bad manifest or data;
        the checker crashed or timed out) or InvalidRequest (no modules).
        """
        if not modules:
            raise InvalidRequest("a policy version needs at least one module")
        request = json.dumps({"modules": dict(modules), "data_json": data_json or "{}",
                              "manifest_json": manifest_json,
                              "constitutional_hash": self._hash}).encode("utf-8")
        if self._running >= self._concurrency:
            raise LimitExceeded(f"{self._running} policy checks are running on this server "
                                f"(ACGS_POLICY_CHECKERS={self._concurrency}); retry later")
        self._running += 1
        released = False
        try:
            proc = await self._spawn()
            released = True  # from here on, the child's exit frees the slot (see _end)
            answer = await self._run(proc, request)
        finally:
            if not released:
                self._running -= 1
        return _result(answer, self._hash)

    @property
    def running(self) -> int:
        """How many checks hold a slot (their child has not exited yet)."""
        return self._running

    async def _spawn(self) -> asyncio.subprocess.Process:
        package_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [package_root, *filter(None, [os.environ.get("PYTHONPATH")])])}
        # Its own session: the child and anything it starts form one process group,
        # which _end kills as a whole.
        return await asyncio.create_subprocess_exec(
            *self._command, env=env, start_new_session=True,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)

    async def _run(self, proc: asyncio.subprocess.Process, request: bytes) -> dict[str, Any]:
        try:
            out, err_text = await asyncio.wait_for(proc.communicate(request), self._timeout_s)
        except TimeoutError as err:
            raise PolicyError(f"checking the policy took over {self._timeout_s:.0f} s "
                              "(a test that does not end?)") from err
        finally:
            self._end(proc)
        if proc.returncode != 0:
            logger.warning("policy checker failed (%s): %s", _exit(proc.returncode),
                           err_text.decode("utf-8", "replace")[-2000:])
            if proc.returncode is not None and proc.returncode < 0:
                raise PolicyError(f"the policy checker died ({_exit(proc.returncode)}): the "
                                  "engine cannot handle this policy; simplify it (e.g. `with`)")
            raise PolicyError(f"the policy checker failed ({_exit(proc.returncode)})")
        try:
            answer: dict[str, Any] = json.loads(out)
        except ValueError as err:
            raise PolicyError("the policy checker answered nonsense") from err
        return answer

    def _end(self, proc: asyncio.subprocess.Process) -> None:
        """Kill ``proc``'s process group (also after a normal exit: it may have left
        children) and free the slot when the child has been reaped."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        reaper = asyncio.ensure_future(proc.wait())
        reaper.add_done_callback(self._released)

    def _released(self, reaper: asyncio.Future[int]) -> None:
        self._running -= 1
        if not reaper.cancelled() and reaper.exception() is not None:
            logger.warning("reaping a policy checker failed: %s", reaper.exception())


def _exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def _result(answer: Mapping[str, Any], expected_hash: str) -> CheckedPolicy:
    kind, message = answer.get("error"), str(answer.get("message", ""))
    if kind == "constitution":
        raise ConstitutionMismatch(expected=expected_hash, got=str(answer.get("got", "")),
                                   what="policy")
    if kind == "builtin":
        raise UnsupportedBuiltin(message)
    if kind == "tests":
        raise PolicyTestsFailed(message)
    if kind is not None:
        raise PolicyError(message)
    return CheckedPolicy(
        revision=answer["revision"], digest=answer["digest"], name=answer["name"],
        version=answer["version"], modules=tuple((k, v) for k, v in answer["modules"]),
        data_json=answer["data_json"], manifest_json=answer["manifest_json"],
        tests_passed=int(answer["tests_passed"]))


def check_in_process(request: Mapping[str, Any]) -> dict[str, Any]:
    """The child's work: the JSON answer for one request (never raises an AcgsError)."""
    from acgs.adapters.policy_examples import decision_failures
    from acgs.adapters.rego_source import bundle_from_parts
    from acgs.adapters.rego_tests import failing_tests

    try:
        manifest = json.loads(request["manifest_json"] or "null")
        if not isinstance(manifest, dict):
            raise PolicyError("manifest: expected a JSON object")
        bundle = bundle_from_parts(modules=request["modules"], data_json=request["data_json"],
                                   manifest=manifest,
                                   constitutional_hash=request["constitutional_hash"])
        passed, failures = failing_tests(bundle)
        # A version must decide: its decision rule on every example and test input.
        decided, undecided = decision_failures(bundle) if not failures else (0, [])
    except ConstitutionMismatch as err:
        return {"error": "constitution", "message": str(err), "got": err.got}
    except UnsupportedBuiltin as err:
        return {"error": "builtin", "message": str(err)}
    except (PolicyError, ValueError) as err:
        return {"error": "policy", "message": str(err)}
    if failures:
        shown = "; ".join(failures[:_MAX_FAILURES_SHOWN])
        more = len(failures) - _MAX_FAILURES_SHOWN
        return {"error": "tests", "message": f"{len(failures)} Rego test(s) failed: {shown}"
                + (f" (and {more} more)" if more > 0 else "")}
    if undecided:
        return {"error": "examples", "message": _listed(
            f"the decision rule fails {len(undecided)} of {decided} example input(s)", undecided)}
    return {"revision": bundle.revision, "name": bundle.name, "version": bundle.version,
            "digest": content_digest(bundle.modules, bundle.data_json, bundle.manifest_json),
            "modules": [list(m) for m in bundle.modules], "data_json": bundle.data_json,
            "manifest_json": bundle.manifest_json, "tests_passed": passed}


def _listed(headline: str, items: Sequence[str]) -> str:
    more = len(items) - _MAX_FAILURES_SHOWN
    return (f"{headline}: {'; '.join(items[:_MAX_FAILURES_SHOWN])}"
            + (f" (and {more} more)" if more > 0 else ""))


def main() -> int:
    request = json.load(sys.stdin)
    json.dump(check_in_process(request), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
