"""The PolicyEngine port on regopy (rego-cpp): Rego evaluated in-process, off the event loop.

Threading: a regopy ``Interpreter`` must not be shared between threads, and
regopy's calls release the GIL, so each of ``workers`` executor threads keeps
its own interpreter and compiled bundle per policy revision (compiled lazily,
or eagerly by :meth:`RegopyEngine.activate`). Every call reads the active
policy once, at its start, so one answer never mixes two policy versions.

Timeouts: a call that exceeds its budget raises ``EngineTimeout`` at once, but
regopy cannot be interrupted: the worker thread finishes the evaluation in the
background and its result is discarded. A policy that loops can therefore
occupy a worker; the budget protects callers, not the pool. A call whose budget
passes while it still waits for a worker is not evaluated at all.

The hop to a worker and back is one queue put and one ``call_soon_threadsafe``
(``_call``/``_settle``), with the budget as a plain timer: ``run_in_executor``
plus ``wait_for`` chained two futures and a task per call, which measured as
the difference between passing and failing 1,000 decisions/s on one core.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, TypeVar

import regopy
from regopy import rego_shared

from acgs.adapters.rego_source import PolicyBundle, compile_policy
from acgs.adapters.regopy_calls import build_input, query_entrypoint
from acgs.domain import canonical
from acgs.domain.model import Effect, EngineResult, Severity, Violation
from acgs.errors import (
    AcgsError,
    ConstitutionMismatch,
    EngineError,
    EngineTimeout,
    EvaluationFailed,
    UnknownRule,
)
from acgs.os_threads import name_os_thread
from acgs.service_layer.ports import Evaluation, PolicyInfo

logger = logging.getLogger("acgs.engine")

T = TypeVar("T")

# How long warm-up waits for a worker still busy (e.g. with a timed-out evaluation)
# before giving up on it: that worker then compiles on its first request.
_WARM_TIMEOUT_S = 1.0
_MAX_RESULT_DEPTH = 512


class _Compiled(NamedTuple):
    interp: Any  # regopy.Interpreter, owned by one worker thread
    bundle: Any  # regopy.Bundle


class RegopyEngine:
    """Evaluates the active policy on a pool of ``workers`` threads, one interpreter each.

    Construct, then ``await activate(bundle)`` before the first call; until
    then every call raises EngineError. ``close()`` stops the pool.
    ``chunk_size`` caps how many inputs of a ``decide_many`` one worker
    evaluates per hop (default 32).
    """

    def __init__(self, *, workers: int, constitutional_hash: str, chunk_size: int = 32) -> None:
        if workers < 1 or chunk_size < 1:
            raise ValueError("workers and chunk_size must be at least 1")
        self._workers = workers
        self._hash = constitutional_hash
        self._chunk_size = chunk_size
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="acgs-rego",
                                            initializer=name_os_thread)
        self._local = threading.local()
        self._active: PolicyBundle | None = None
        self._activating = asyncio.Lock()

    @property
    def policy(self) -> PolicyInfo:
        """Revision and data revision of the active policy; EngineError before activation."""
        bundle = self._current()
        return PolicyInfo(revision=bundle.revision, data_revision=bundle.data_revision)

    @property
    def bundle(self) -> PolicyBundle:
        """The active policy bundle; EngineError before activation."""
        return self._current()

    async def activate(self, bundle: PolicyBundle) -> None:
        """Compile ``bundle`` on a worker, warm every worker with it, then make it active.

        Raises ConstitutionMismatch for a bundle of another constitution and
        PolicyError if it does not compile; in both cases the previous policy
        keeps serving. Activations are serialised.
        """
        if bundle.constitutional_hash != self._hash:
            raise ConstitutionMismatch(expected=self._hash, got=bundle.constitutional_hash,
                                       what="policy")
        loop = asyncio.get_running_loop()
        async with self._activating:
            await loop.run_in_executor(self._executor, self._compiled, bundle)
            barrier = threading.Barrier(self._workers, timeout=_WARM_TIMEOUT_S)
            warmers = [loop.run_in_executor(self._executor, self._warm, bundle, barrier)
                       for _ in range(self._workers)]
            await asyncio.gather(*warmers)
            self._active = bundle  # one reference swap: readers see old or new, never a mix
        logger.info("policy %s %s active (revision %s, data %s)", bundle.name, bundle.version,
                    bundle.revision, bundle.data_revision)

    async def decide(self, policy_input: Mapping[str, Any], *, timeout_s: float) -> EngineResult:
        """Evaluate the decision entrypoint for ``policy_input``.

        Raises EngineTimeout after ``timeout_s``; EngineError when the result
        is an error, undefined, or not ``{"effect", "violations"}`` as expected.
        """
        bundle = self._current()
        return await self._run(timeout_s, self._decide_one, bundle, policy_input)

    async def decide_many(
        self, inputs: Sequence[Mapping[str, Any]], *, timeout_s: float
    ) -> list[EngineResult | Exception]:
        """Decide every input under one policy revision, in chunks spread over the workers.

        Returns one EngineResult or exception per input, in input order. Inputs
        not decided within ``timeout_s`` (for the whole batch) get EngineTimeout.
        """
        if not inputs:
            return []
        bundle = self._current()
        deadline = time.monotonic() + timeout_s
        size = max(1, min(self._chunk_size, math.ceil(len(inputs) / self._workers)))
        chunks = [inputs[i:i + size] for i in range(0, len(inputs), size)]
        loop = asyncio.get_running_loop()
        futures = [loop.run_in_executor(self._executor, self._decide_chunk, bundle, c, deadline)
                   for c in chunks]
        done, pending = await asyncio.wait(futures, timeout=timeout_s)
        for future in pending:
            future.cancel()
        results: list[EngineResult | Exception] = []
        for future, chunk in zip(futures, chunks, strict=True):
            failure = future.exception() if future in done else None
            if future not in done:
                results.extend(EngineTimeout(f"not decided within {timeout_s}s") for _ in chunk)
            elif failure is not None:
                results.extend(EngineError(f"evaluation failed: {failure}") for _ in chunk)
            else:
                results.extend(future.result())
        return results

    async def evaluate(self, path: str, input_value: Any, *, timeout_s: float) -> Evaluation:
        """Evaluate one rule, named ``pkg/rule``, ``pkg.rule`` or ``data.pkg.rule``.

        ``input_value`` None means no input document. The value comes back as
        canonical JSON (``"null"`` with ``undefined=True`` when the rule has no
        value). Raises UnknownRule for a path that names no rule (functions are
        not rules), EngineTimeout, or EngineError when evaluation fails.
        """
        bundle = self._current()
        entrypoint = rule_entrypoint(path)
        if entrypoint not in bundle.entrypoints:
            raise UnknownRule(f"{path!r} names no rule of policy {bundle.revision}")
        return await self._run(timeout_s, self._evaluate_one, bundle, entrypoint, input_value)

    def close(self) -> None:
        """Stop the pool: queued calls are cancelled, running evaluations finish in background."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- event-loop side --------------------------------------------------------

    def _current(self) -> PolicyBundle:
        bundle = self._active
        if bundle is None:
            raise EngineError("no policy is active")
        return bundle

    async def _run(self, timeout_s: float, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._executor.submit(_call, loop, future, fn, args)
        timer = loop.call_later(timeout_s, _expire, future, timeout_s)
        try:
            return await future
        finally:
            timer.cancel()

    # --- worker-thread side -----------------------------------------------------

    def _compiled(self, bundle: PolicyBundle) -> _Compiled:
        """This thread's compiled copy of ``bundle``; compiles it on first use."""
        cache: dict[str, _Compiled] | None = getattr(self._local, "cache", None)
        if cache is None:
            cache = self._local.cache = {}
        hit = cache.get(bundle.revision)
        if hit is None:
            hit = _Compiled(*compile_policy(bundle.modules, bundle.data_json, bundle.entrypoints))
            active = self._active
            # Keep only this revision and the active one: a request that read the
            # old policy just before a swap still finds it, nothing older lingers.
            for revision in [r for r in cache if active is None or r != active.revision]:
                del cache[revision]
            cache[bundle.revision] = hit
        return hit

    def _warm(self, bundle: PolicyBundle, barrier: threading.Barrier) -> None:
        self._compiled(bundle)
        try:
            # Hold this thread until every worker has taken a warm task, so that
            # each thread compiles once (a free thread cannot take two).
            barrier.wait()
        except threading.BrokenBarrierError:
            logger.warning("a worker stayed busy during warm-up; it will compile on first use")

    def _decide_one(self, bundle: PolicyBundle, policy_input: Mapping[str, Any]) -> EngineResult:
        defined, value = self._query(bundle, bundle.decision, policy_input)
        if not defined:
            raise EngineError(f"decision {bundle.decision} is undefined for this input")
        return parse_decision(value, revision=bundle.revision)

    def _decide_chunk(
        self, bundle: PolicyBundle, chunk: Sequence[Mapping[str, Any]], deadline: float
    ) -> list[EngineResult | Exception]:
        results: list[EngineResult | Exception] = []
        for policy_input in chunk:
            if time.monotonic() > deadline:
                results.append(EngineTimeout("batch budget exhausted before this input"))
                continue
            try:
                results.append(self._decide_one(bundle, policy_input))
            except AcgsError as err:
                results.append(err)
        return results

    def _evaluate_one(self, bundle: PolicyBundle, entrypoint: str, input_value: Any) -> Evaluation:
        has_input = input_value is not None
        defined, value = self._query(bundle, entrypoint, input_value, has_input=has_input)
        try:
            text = canonical.dumps(canonical.normalize(value, max_depth=_MAX_RESULT_DEPTH))
        except AcgsError as err:
            raise EvaluationFailed(f"{entrypoint}: value cannot be returned as JSON: {err}"
                                   ) from err
        return Evaluation(result_json=text, undefined=not defined, policy_revision=bundle.revision)

    def _query(
        self, bundle: PolicyBundle, entrypoint: str, input_value: Any, *, has_input: bool = True
    ) -> tuple[bool, Any]:
        """Evaluate ``entrypoint``: ``(True, value)``, or ``(False, None)`` when undefined."""
        try:
            compiled = self._compiled(bundle)
            interp = compiled.interp
            if has_input:
                interp.set_input(build_input(input_value))
            else:
                # An interpreter cannot forget its input; a fresh one (about 4 µs)
                # evaluates the same compiled bundle without any.
                interp = regopy.Interpreter()
                interp.log_level = regopy.LogLevel.NONE
                interp.strict_built_in_errors = True
            output = query_entrypoint(interp, compiled.bundle, entrypoint)
        except AcgsError as err:
            raise EngineError(f"{entrypoint}: {err}") from err
        except (regopy.RegoError, ValueError) as err:
            # The input cannot be built (ValueError), the engine refuses the query, or its
            # output is not JSON (a string it does not escape, 1e400): each time the same.
            raise EvaluationFailed(f"{entrypoint}: evaluation failed: {err}") from err
        except Exception as err:
            raise EngineError(f"{entrypoint}: evaluation failed: {err}") from err
        return output_value(output, entrypoint)


def _call(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any],
          fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    """On a worker: run ``fn`` and hand its outcome to ``future`` on its loop (one wake-up)."""
    if future.done():  # timed out (or cancelled) while queued: do not evaluate at all
        return
    try:
        result, error = fn(*args), None
    except BaseException as err:  # delivered to the awaiting caller, not lost in the pool
        result, error = None, err
    with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
        loop.call_soon_threadsafe(_settle, future, result, error)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def _expire(future: asyncio.Future[Any], timeout_s: float) -> None:
    if not future.done():
        future.set_exception(
            EngineTimeout(f"evaluation took longer than {timeout_s * 1000:.0f} ms"))


def output_value(output: Any, entrypoint: str) -> tuple[bool, Any]:
    """Read a regopy Output: ``(True, value)``, ``(False, None)`` if undefined.

    Raises EvaluationFailed for an error output or any shape other than one expression.
    """
    if not output.ok():
        raise EvaluationFailed(f"{entrypoint}: {output_errors(output)}")
    results = output.results
    if len(results) != 1:
        raise EvaluationFailed(f"{entrypoint}: expected one result, got {len(results)}")
    expressions = results[0].expressions
    if expressions == [] and not results[0].bindings:
        return False, None
    if not isinstance(expressions, list) or len(expressions) != 1:
        raise EvaluationFailed(f"{entrypoint}: expected one expression, got {expressions!r:.200}")
    return True, expressions[0]


def output_errors(output: Any) -> str:
    """The messages and codes of an error Output, e.g. ``divide by zero (eval_builtin_error)``."""
    try:
        node = output.node()
        messages = []
        for i in range(len(node)):
            parts = [rego_shared.rego_node_value(node.at(i).at(k)._impl) for k in (0, 2)]
            messages.append(f"{parts[0]} ({parts[1]})" if parts[1] else parts[0])
        return "; ".join(messages) or "evaluation failed"
    except Exception:  # the error tree is not in the shape we know: say so, do not crash
        return "evaluation failed (regopy gave no readable message)"


def parse_decision(value: Any, *, revision: str) -> EngineResult:
    """Read ``{"effect": "ALLOW"|"DENY"|"ESCALATE", "violations": [...]}`` strictly.

    Each violation is ``{"principle", "severity" (lowercase), "message"}``,
    all strings; ALLOW has none, DENY and ESCALATE at least one. An optional
    ``required_approvals`` (an integer 1..100) is how many distinct humans
    must approve an escalation of this decision. Other keys are ignored.
    Raises EngineError on any other shape or value.
    """
    if not isinstance(value, dict):
        raise EngineError(f"decision is not an object: {value!r:.200}")
    effect, violations = value.get("effect"), value.get("violations")
    if not isinstance(effect, str) or effect not in Effect.__members__:
        raise EngineError(f"decision has unknown effect {effect!r:.100}")
    if not isinstance(violations, list):
        raise EngineError("decision violations are not a list")
    # Contradictions are doubts: ALLOW names no violation, DENY/ESCALATE name at least one.
    if (effect == "ALLOW") == bool(violations):
        raise EngineError(f"decision {effect} with {len(violations)} violation(s)")
    return EngineResult(effect=Effect[effect],
                        violations=tuple(_violation(v) for v in violations),
                        policy_revision=revision,
                        required_approvals=_approvals(value.get("required_approvals", 0)))


def _approvals(raw: Any) -> int:
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    if not isinstance(raw, int) or isinstance(raw, bool) or not 0 <= raw <= 100:
        raise EngineError(f"decision has invalid required_approvals {raw!r:.50}")
    return raw


def _violation(raw: Any) -> Violation:
    if not isinstance(raw, dict):
        raise EngineError(f"violation is not an object: {raw!r:.200}")
    principle, severity, message = (raw.get(k) for k in ("principle", "severity", "message"))
    if not all(isinstance(x, str) for x in (principle, severity, message)) or not principle:
        raise EngineError(f"violation needs string principle, severity, message: {raw!r:.200}")
    try:
        return Violation(str(principle), Severity(severity), str(message))
    except ValueError as err:
        raise EngineError(f"violation has unknown severity {severity!r:.50}") from err


def rule_entrypoint(path: str) -> str:
    """The entrypoint a rule path names: ``data.a.b.rule``, ``a.b.rule`` -> ``a/b/rule``."""
    name = path.strip().replace("/", ".").strip(".")
    if name == "data" or name.startswith("data."):
        name = name[5:]
    return name.replace(".", "/")
