"""Open-loop load on one HTTP/2 connection: calls leave on a fixed schedule, never waiting
for answers, and each call's latency runs from its *scheduled* send time to its answer.

So a stall anywhere (server, network, or this generator) shows up in the
latency instead of silently delaying later sends (no coordinated omission).
The generator's own lateness is reported apart (``lag``) so a step where it,
rather than the server, fell behind can be recognised. Sends are timed by a
pacer thread (see :class:`_Pacer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from bench import h2grpc
from bench.workloads import Body

TIMEOUT = -3
"""Status of a call still unanswered when the drain period ended."""
_MIN_TICK_S = 0.0001  # at most 10 wake-ups per ms; each sends every call due by then
_SWITCH_S = 0.0002  # GIL switch interval while pacing, so the pacer is never held up long
STATUS_NAMES = {0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT",
                4: "DEADLINE_EXCEEDED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION",
                13: "INTERNAL", 14: "UNAVAILABLE", h2grpc.TRANSPORT_ERROR: "TRANSPORT_ERROR",
                h2grpc.NO_STATUS: "NO_GRPC_STATUS", TIMEOUT: "NO_ANSWER"}
Check = Callable[[bytes], str | None]


class _Pacer(threading.Thread):
    """Wakes the event loop when the next call is due: ``time.sleep`` is precise to tens of
    µs where asyncio's epoll timeout is rounded up to whole milliseconds, and a sleeping
    thread keeps its scheduling priority on a busy machine where a spinning loop would not."""

    def __init__(self, loop: asyncio.AbstractEventLoop, send_due: Callable[[], None],
                 t0: float, rate: float, n: int) -> None:
        super().__init__(name="bench-pacer", daemon=True)
        self._loop, self._send_due = loop, send_due
        self._t0, self._rate, self._n = t0, rate, n
        self._stopped = threading.Event()

    def run(self) -> None:
        clock, t0, rate = time.perf_counter, self._t0, self._rate
        while not self._stopped.is_set():
            now = clock()
            nxt = max(0, math.floor((now - t0) * rate) + 1)  # first call not yet due
            if nxt >= self._n + 1:
                return
            time.sleep(max(t0 + nxt / rate - now, _MIN_TICK_S))
            try:
                self._loop.call_soon_threadsafe(self._send_due)
            except RuntimeError:  # loop closed
                return

    def stop(self) -> None:
        self._stopped.set()
        self.join(1.0)


@dataclass
class Sample:
    """One measured run: ``calls`` calls offered at ``rate``/s over ``duration_s``."""

    rate: float
    calls: int
    duration_s: float
    elapsed_s: float  # first scheduled send to last answer
    latency_s: list[float]  # per call, from scheduled send; inf if never answered
    lag_s: list[float]  # per call, actual send minus scheduled send
    statuses: Counter[int]
    problems: list[str] = field(default_factory=list)
    client_cpu_s: float = 0.0

    @property
    def ok(self) -> int:
        return self.statuses.get(0, 0)

    @property
    def errors(self) -> int:
        return self.calls - self.ok

    @property
    def achieved(self) -> float:
        """OK answers per second over the span from first scheduled send to last answer."""
        return self.ok / max(self.elapsed_s, self.duration_s)

    def error_names(self) -> dict[str, int]:
        return {STATUS_NAMES.get(s, str(s)): n for s, n in sorted(self.statuses.items()) if s}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted ``values``."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


class Driver:
    """Drives one method of one server over one connection; ``run`` and ``blast`` are serial."""

    def __init__(self, host: str, port: int, path: str, *, headers: dict[str, str]) -> None:
        self._host, self._port = host, port
        self.block = h2grpc.header_block(path, f"{host}:{port}", headers)
        self._conn: h2grpc.GrpcConnection | None = None
        self._base = 0  # token offset of the current run; answers of older runs are ignored
        self._done: list[float] = []
        self._status: list[int] = []
        self._left = 0
        self._finished = asyncio.Event()
        self._check: Check | None = None
        self._problems: list[str] = []
        self._refill: Callable[[], None] | None = None

    async def open(self) -> None:
        self._conn = await h2grpc.connect(self._host, self._port, self._on_done)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def _on_done(self, token: int, status: int, body: bytes | None) -> None:
        i = token - self._base
        if not 0 <= i < len(self._done) or self._status[i] != TIMEOUT:
            return
        self._done[i] = time.perf_counter()
        self._status[i] = status
        if body is not None and status == 0 and self._check is not None:
            try:
                problem = self._check(body)
            except Exception as err:  # a bad answer must not kill the connection
                problem = f"unreadable answer: {err}"
            if problem:
                self._problems.append(problem)
        self._left -= 1
        if self._refill is not None:
            self._refill()
        if self._left == 0:
            self._finished.set()

    def _reset(self, n: int, check: Check | None) -> h2grpc.GrpcConnection:
        if self._conn is None or self._conn.closed:
            raise ConnectionError(f"not connected: {self._conn and self._conn.closed}")
        self._base += len(self._done) + 1
        self._done, self._status = [math.inf] * n, [TIMEOUT] * n
        self._left, self._check, self._problems = n, check, []
        self._finished = asyncio.Event()
        return self._conn

    async def run(self, rate: float, duration_s: float, body: Body, start: int, *,
                  check: Check | None = None, drain_s: float = 10.0) -> Sample:
        """Offer ``rate`` calls/s for ``duration_s``, bodies ``body(start)``, ``body(start+1)``.."""
        n = max(1, round(rate * duration_s))
        conn = self._reset(n, check)
        sent = [0.0] * n
        block, base, period, clock = self.block, self._base, 1.0 / rate, time.perf_counter
        loop = asyncio.get_running_loop()
        all_sent: asyncio.Future[None] = loop.create_future()
        i = 0

        def send_due() -> None:
            nonlocal i
            now = clock()
            due = min(n, math.floor((now - t0) * rate) + 1) if now >= t0 else 0
            while i < due:
                sent[i] = now
                conn.submit(block, body(start + i), base + i, keep=i in (0, n - 1))
                i += 1
            if i >= n and not all_sent.done():
                all_sent.set_result(None)

        gc.collect()
        gc.disable()
        switch = sys.getswitchinterval()
        sys.setswitchinterval(_SWITCH_S)
        cpu0 = time.process_time()
        t0 = clock() + 0.005
        pacer = _Pacer(loop, send_due, t0, rate, n)
        try:
            pacer.start()
            await all_sent
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._finished.wait(), drain_s)
        finally:
            pacer.stop()
            sys.setswitchinterval(switch)
            gc.enable()
        cpu = time.process_time() - cpu0
        sched = [t0 + k * period for k in range(n)]
        answered = [d for d in self._done if d != math.inf]
        elapsed = (max(answered) if answered else clock()) - t0
        return Sample(rate=rate, calls=n, duration_s=n * period, elapsed_s=elapsed,
                      latency_s=[d - s for d, s in zip(self._done, sched, strict=True)],
                      lag_s=[a - s for a, s in zip(sent, sched, strict=True)],
                      statuses=Counter(self._status), problems=list(self._problems),
                      client_cpu_s=cpu)

    async def blast(self, n: int, body: Body, start: int, *, window: int = 64,
                    check: Check | None = None, timeout_s: float = 600.0) -> Sample:
        """Closed loop: ``n`` calls keeping ``window`` in flight, as fast as the server answers."""
        conn = self._reset(n, check)
        block, base = self.block, self._base
        nxt = 0

        def refill() -> None:
            nonlocal nxt
            while nxt < n and nxt - (n - self._left) < window:
                conn.submit(block, body(start + nxt), base + nxt, keep=nxt in (0, n - 1))
                nxt += 1

        cpu0, t0 = time.process_time(), time.perf_counter()
        self._refill = refill
        try:
            refill()
            await asyncio.wait_for(self._finished.wait(), timeout_s)
        finally:
            self._refill = None
        elapsed = time.perf_counter() - t0
        return Sample(rate=n / elapsed, calls=n, duration_s=elapsed, elapsed_s=elapsed,
                      latency_s=[], lag_s=[], statuses=Counter(self._status),
                      problems=list(self._problems), client_cpu_s=time.process_time() - cpu0)
