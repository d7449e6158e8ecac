"""One supervisor for the parts of a server: started in order, stopped in reverse.

Every part of a server that has a start, a stop or background work is one
:class:`Part`, added to the supervisor in start order (the composition root,
:mod:`acgs.lifecycle.app`, reads as that list). A part has:

* an optional start step, awaited in order by :meth:`Supervisor.start`
  (its error fails the start: the parts already started are stopped again);
* optional background work, run as a supervised task: ``every`` runs a plain
  "one round" function every ``interval_s`` (or when ``wake`` rings),
  ``loop`` a long-running coroutine, ``thread`` polls a thread worker's
  liveness (the audit shipper) and restarts a dead one;
* an optional stop step, awaited in reverse order once its task has stopped.

Background work never ends on an error: a round or a loop that raises is
logged (with its traceback, or as one warning per distinct message for the
``expected`` errors, e.g. "database unreachable"), counted as a restart, marked
down, and run again after an exponential back-off (``backoff_s``, doubled per
failure up to its bound, reset once the part reports itself healthy again).
A task is up while it runs; after a failure it is down until it shows it works
again (a round succeeds, the listener listens, the thread lives). Each task's
liveness and restarts are readable at any time (:meth:`states`):
``acgs_task_up{task}`` and ``acgs_task_restarts_total{task}``, and a line in
``/ready``'s body while a task is down.

Stopping happens in two phases: parts added with ``serving=True`` (the policy
reconciler, the listeners that end watch streams...) stop as soon as the server
stops serving (:meth:`stop_serving`); the rest after the gRPC server drained
(:meth:`stop`). Each task is given ``stop_timeout_s`` to end; one that does not
is reported (logged and listed in :attr:`Supervisor.unstopped`), and the stop
goes on with the next part. A part ``held`` at start (it needs a database that
was unreachable) is started later by whoever holds it, via :meth:`Part.start`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

logger = logging.getLogger("acgs.lifecycle")

Step = Callable[[], Awaitable[None]]
First = Literal["await", "now", "later"]
"""When an ``every`` part runs its first round: awaited in ``start`` (a failure is a
crash, retried in the background), at once in the background, or after an interval."""


class ThreadWorker(Protocol):
    """A worker with a thread of its own (:class:`acgs.adapters.pg_audit.Shipper`)."""

    @property
    def alive(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class TaskState:
    """One background task as metrics and ``/ready`` see it."""

    name: str
    up: bool
    restarts: int
    last_error: str


class Part:
    """One part of the server; made by :class:`Supervisor`'s ``step``/``every``/``loop``/
    ``thread``. ``start`` starts it (once); the supervisor stops it."""

    def __init__(self, supervisor: Supervisor, name: str, *, start: Step | None,
                 stop: Step | None, body: Callable[[Part], Awaitable[None]] | None,
                 serving: bool, held: bool, cancel: bool, expected: tuple[type[BaseException], ...],
                 backoff_s: tuple[float, float]) -> None:
        self.name = name
        self._supervisor = supervisor
        self._start_step = start
        self._stop_step = stop
        self._body = body
        self.serving = serving
        self.held = held
        self._cancel = cancel
        self._expected = expected
        self._backoff_s = backoff_s
        self._delay = backoff_s[0]
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._last_logged = ""
        self._failing = False  # crashed since it last showed it works
        self.started = False
        self.stopped = False
        self.up = False
        self.restarts = 0
        self.last_error = ""

    @property
    def supervised(self) -> bool:
        """True for a part with background work (it has a liveness)."""
        return self._body is not None

    async def start(self) -> None:
        """Await the start step, then launch the background work (no-op once started)."""
        if self.started or self.stopped:
            return
        if self._start_step is not None:
            await self._start_step()
        self.started = True
        if self._body is not None:
            self.up = not self._failing  # running from now (unless its first round failed)
            self._task = asyncio.get_running_loop().create_task(
                self._supervise(), name=f"acgs-{self.name}")

    def healthy(self) -> None:
        """Called by the work itself: it runs as it should (resets the back-off)."""
        if not self.up and self.restarts:
            logger.info("task %s is up again", self.name)
        self.up = True
        self._failing = False
        self._delay = self._backoff_s[0]
        self._last_logged = ""

    def crashed(self, err: BaseException) -> None:
        """Count and log one failure of the work; it goes on after :meth:`pause`."""
        self.up, self._failing = False, True
        self.restarts += 1
        self.last_error = f"{type(err).__name__}: {err}".strip()
        if isinstance(err, self._expected):
            if self.last_error != self._last_logged:  # once per distinct error, not per retry
                logger.warning("task %s: %s; retrying with back-off", self.name, self.last_error)
            self._last_logged = self.last_error
            return
        logger.error("task %s crashed (restart %d, next in %.1f s)", self.name, self.restarts,
                     self._delay, exc_info=err)

    async def back_off(self) -> None:
        """Wait the current back-off (or until stopping), then double it up to its bound."""
        delay = self._delay
        self._delay = min(self._delay * 2, self._backoff_s[1])
        await self.pause(delay)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def pause(self, seconds: float, ring: asyncio.Future[None] | None = None) -> None:
        """Wait ``seconds``, or less: until ``ring`` is done or the part is stopping."""
        if seconds <= 0 or self.stopping:
            return
        stopping = asyncio.ensure_future(self._stopping.wait())
        waiters: list[asyncio.Future[Any]] = [stopping]
        if ring is not None:
            waiters.append(ring)
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()

    async def _supervise(self) -> None:
        body = self._body
        assert body is not None  # only parts with background work have a task
        while not self.stopping:
            # Up while it runs (a task waiting for its next round or its next item is up);
            # after a crash, down until it shows it works again (``healthy``).
            self.up = not self._failing
            try:
                await body(self)
                return  # ended by itself (only when stopping)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                self.crashed(err)
                await self.back_off()

    async def stop(self, timeout_s: float) -> None:
        """End the background work (cancelled, or let finish its round when ``cancel`` is
        false) within ``timeout_s``, then run the stop step; report what does not end."""
        if self.stopped:
            return
        self.stopped = True
        self._stopping.set()
        task = self._task
        if task is not None:
            if self._cancel:
                task.cancel()
            if not await _ended(task, timeout_s):
                self._supervisor.did_not_stop(self.name, timeout_s)
                task.cancel()
        self.up = False
        if self._stop_step is not None and self.started:
            step = asyncio.ensure_future(self._stop_step())
            if not await _ended(step, timeout_s):
                self._supervisor.did_not_stop(self.name, timeout_s)
            elif not step.cancelled() and (err := step.exception()) is not None:
                if isinstance(err, self._expected):
                    logger.warning("stopping %s failed: %s: %s", self.name,
                                   type(err).__name__, err)
                else:
                    logger.error("stopping %s failed", self.name, exc_info=err)


async def _ended(task: asyncio.Future[None], timeout_s: float) -> bool:
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    return bool(done)


class Supervisor:
    """The ordered parts of one server; see the module docstring."""

    def __init__(self, *, backoff_s: tuple[float, float] = (0.1, 30.0),
                 stop_timeout_s: float = 15.0) -> None:
        self._parts: list[Part] = []
        self._backoff_s = backoff_s
        self._stop_timeout_s = stop_timeout_s
        self.unstopped: list[str] = []
        """The parts that did not stop within the timeout."""

    def _add(self, name: str, *, start: Step | None = None, stop: Step | None = None,
             body: Callable[[Part], Awaitable[None]] | None = None, serving: bool = False,
             held: bool = False, cancel: bool = True,
             expected: tuple[type[BaseException], ...] = (),
             backoff_s: tuple[float, float] | None = None) -> Part:
        if any(p.name == name for p in self._parts):
            raise ValueError(f"two parts named {name!r}")
        part = Part(self, name, start=start, stop=stop, body=body, serving=serving, held=held,
                    cancel=cancel, expected=expected, backoff_s=backoff_s or self._backoff_s)
        self._parts.append(part)
        return part

    def step(self, name: str, *, start: Step | None = None, stop: Step | None = None,
             held: bool = False, serving: bool = False) -> Part:
        """A part without background work: a start step, a stop step, or both."""
        return self._add(name, start=start, stop=stop, held=held, serving=serving)

    def every(self, name: str, round: Step, *, interval_s: float, first: First = "later",
              start: Step | None = None, stop: Step | None = None,
              wake: Callable[[], asyncio.Future[None] | None] | None = None, held: bool = False,
              serving: bool = False, cancel: bool = True,
              expected: tuple[type[BaseException], ...] = ()) -> Part:
        """Run ``round`` every ``interval_s`` (sooner when the future ``wake()`` returned
        before the round is done). A failing round is retried with back-off bounded by the
        interval. ``cancel=False`` lets a round under way finish at stop."""
        interval = max(0.0, interval_s)

        entered = False

        async def rounds(part: Part) -> None:
            nonlocal entered
            if not entered:  # the first entry; a restart after a crash runs a round at once
                entered = True
                if first == "later" or (first == "await" and part.up):
                    await part.pause(interval)
                elif first == "await":  # the awaited first round failed
                    await part.back_off()
            while not part.stopping:
                ring = wake() if wake is not None else None
                await round()
                part.healthy()
                await part.pause(interval, ring)

        async def first_round() -> None:
            if start is not None:
                await start()
            if first == "await":
                try:
                    await round()
                    part.healthy()
                except Exception as err:  # the background retries it
                    part.crashed(err)

        first_bound = min(self._backoff_s[0], interval) if interval > 0 else self._backoff_s[0]
        bound = max(first_bound, min(self._backoff_s[1], interval or 1.0))
        part = self._add(name, start=first_round, stop=stop, body=rounds, serving=serving,
                         held=held, cancel=cancel, expected=expected,
                         backoff_s=(first_bound, bound))
        return part

    def loop(self, name: str, run: Callable[[Callable[[], None]], Awaitable[None]], *,
             start: Step | None = None, stop: Step | None = None, held: bool = False,
             serving: bool = False, expected: tuple[type[BaseException], ...] = (),
             backoff_s: tuple[float, float] | None = None) -> Part:
        """Run the long-running ``run(healthy)``; it calls ``healthy()`` once it works (that
        resets the back-off). Restarted with back-off whenever it raises or returns."""

        async def body(part: Part) -> None:
            while not part.stopping:
                await run(part.healthy)
                part.up = False
                await part.back_off()

        return self._add(name, start=start, stop=stop, body=body, held=held, serving=serving,
                         expected=expected, backoff_s=backoff_s)

    def thread(self, name: str, worker: ThreadWorker, *, poll_s: float = 1.0,
               held: bool = False) -> Part:
        """Start ``worker`` (its own thread, its own retries), poll that the thread lives and
        start it again when it died; ``worker.stop()`` (in a thread) at stop."""

        async def watch(part: Part) -> None:
            if part.restarts and not worker.alive:  # after a crash: start it again
                worker.start()
            while not part.stopping:
                if not worker.alive:
                    raise RuntimeError("its thread is not running")
                part.healthy()
                await part.pause(poll_s)

        async def start() -> None:
            worker.start()

        async def stop() -> None:
            await asyncio.to_thread(worker.stop)

        return self._add(name, start=start, stop=stop, body=watch, held=held)

    def parts(self) -> Sequence[Part]:
        return tuple(self._parts)

    def held(self) -> list[Step]:
        """The start of every held part, in order (for the database watch to run)."""
        return [p.start for p in self._parts if p.held]

    def states(self) -> list[TaskState]:
        """Every part with background work: up, restarts, last error (any thread, no I/O)."""
        return [TaskState(p.name, p.up, p.restarts, p.last_error)
                for p in list(self._parts) if p.supervised]

    def down_note(self) -> str:
        """One line per started task that is down, for ``/ready``'s body; empty if none."""
        return "\n".join(
            f"task {p.name} down (restarts {p.restarts}): {p.last_error or 'not running'}"
            for p in list(self._parts) if p.supervised and p.started and not p.stopped
            and not p.up)

    async def start(self) -> None:
        """Start every part not held, in order. On an error the parts started are stopped
        again (reversed) and the error is raised."""
        try:
            for part in self._parts:
                if not part.held:
                    await part.start()
        except BaseException:
            await self._stop(self._parts)
            raise

    async def stop_serving(self) -> None:
        """Stop the ``serving`` parts, reversed: the server no longer serves."""
        await self._stop([p for p in self._parts if p.serving])

    async def stop(self) -> None:
        """Stop every part still running, reversed."""
        await self._stop(self._parts)

    async def _stop(self, parts: Sequence[Part]) -> None:
        for part in reversed(parts):
            await part.stop(self._stop_timeout_s)

    def did_not_stop(self, name: str, timeout_s: float) -> None:
        logger.error("%s did not stop within %.1f s; going on without it", name, timeout_s)
        self.unstopped.append(name)
