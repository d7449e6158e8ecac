"""The supervisor: parts start in order and stop in reverse; a crashing task is restarted with
a bounded back-off, counted, and shown down meanwhile (metrics and /ready); a part that does
not stop is reported and the stop goes on."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import urllib.error
import urllib.request

import pytest
from acgs.lifecycle.supervisor import Supervisor
from acgs.metrics import Metrics


async def _until(check: object, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_parts_start_in_order_and_stop_in_reverse_serving_ones_first() -> None:
    log: list[str] = []

    def step(name: str) -> tuple[object, object]:
        async def start() -> None:
            log.append(f"start {name}")

        async def stop() -> None:
            log.append(f"stop {name}")

        return start, stop

    async def run() -> None:
        parts = Supervisor()
        for name, serving in (("db", False), ("sync", True), ("journal", False),
                              ("watchers", True)):
            start, stop = step(name)
            parts.step(name, start=start, stop=stop, serving=serving)  # type: ignore[arg-type]
        await parts.start()
        assert log == ["start db", "start sync", "start journal", "start watchers"]
        log.clear()
        await parts.stop_serving()
        assert log == ["stop watchers", "stop sync"]
        await parts.stop()
        assert log == ["stop watchers", "stop sync", "stop journal", "stop db"]
        assert parts.unstopped == []

    asyncio.run(run())


def test_a_failed_start_stops_what_started_and_raises() -> None:
    log: list[str] = []

    async def run() -> None:
        parts = Supervisor()

        async def stop_a() -> None:
            log.append("stop a")

        async def fail() -> None:
            raise RuntimeError("desired policy does not compile")

        parts.step("a", stop=stop_a)
        parts.step("b", start=fail)
        with pytest.raises(RuntimeError, match="does not compile"):
            await parts.start()

    asyncio.run(run())
    assert log == ["stop a"]


def test_a_crashing_task_is_restarted_with_back_off_and_shown_down_meanwhile(
        caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics(address="127.0.0.1:0", instance_id="s1")
    at: list[float] = []

    async def run() -> None:
        parts = Supervisor(backoff_s=(0.02, 0.08))
        metrics.watch_tasks(states=parts.states, note=parts.down_note)
        healthy = asyncio.Event()

        async def sweep() -> None:
            at.append(asyncio.get_running_loop().time())
            if len(at) <= 4:
                raise RuntimeError(f"boom {len(at)}")
            healthy.set()

        part = parts.every("sweeper", sweep, interval_s=10, first="now")
        await parts.start()
        await _until(lambda: len(at) >= 2)
        assert not part.up and parts.down_note().startswith("task sweeper down (restarts ")
        text = metrics.render().decode()
        assert 'acgs_task_up{task="sweeper"} 0.0' in text
        await healthy.wait()
        assert part.up and part.restarts == 4 and parts.down_note() == ""
        text = metrics.render().decode()
        assert 'acgs_task_up{task="sweeper"} 1.0' in text
        assert 'acgs_task_restarts_total{task="sweeper"} 4.0' in text
        await parts.stop()

    with caplog.at_level(logging.ERROR, logger="acgs.lifecycle"):
        asyncio.run(run())
    gaps = [b - a for a, b in itertools.pairwise(at)]
    # 0.02, 0.04, 0.08, then bounded at 0.08 (the interval is 10 s: never waited here)
    assert all(gap >= expected - 0.005 for gap, expected in zip(gaps, (0.02, 0.04, 0.08, 0.08),
                                                                strict=True))
    assert max(gaps) < 0.5
    crashes = [r for r in caplog.records if "crashed" in r.getMessage()]
    assert len(crashes) == 4 and all(r.exc_info for r in crashes)  # each with its traceback
    metrics.close()


def test_expected_errors_are_one_warning_not_a_traceback_per_retry(
        caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> None:
        parts = Supervisor(backoff_s=(0.005, 0.01))
        calls = []

        async def load() -> None:
            calls.append(1)
            raise ConnectionError("database down")

        part = parts.every("token-refresh", load, interval_s=1, first="now",
                           expected=(ConnectionError,))
        await parts.start()
        await _until(lambda: len(calls) >= 5)
        await parts.stop()
        assert part.restarts >= 5

    with caplog.at_level(logging.WARNING, logger="acgs.lifecycle"):
        asyncio.run(run())
    lines = [r for r in caplog.records if "database down" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING and not lines[0].exc_info


def test_a_task_that_hangs_on_stop_is_reported_and_the_stop_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    log: list[str] = []

    async def run() -> list[str]:
        parts = Supervisor(stop_timeout_s=0.1)

        async def stop_first() -> None:
            log.append("stopped first")

        async def stubborn() -> None:  # a round that outlives its stop (not cancelled)
            await asyncio.sleep(5)

        parts.step("first", stop=stop_first)
        parts.every("stubborn", stubborn, interval_s=0.01, first="now", cancel=False)
        await parts.start()
        await asyncio.sleep(0.02)
        started = asyncio.get_running_loop().time()
        await parts.stop()
        assert asyncio.get_running_loop().time() - started < 1
        return parts.unstopped

    with caplog.at_level(logging.ERROR, logger="acgs.lifecycle"):
        assert asyncio.run(run()) == ["stubborn"]
    assert log == ["stopped first"]
    assert any("stubborn did not stop within 0.1 s" in r.getMessage() for r in caplog.records)


def test_a_round_under_way_is_let_finish_when_not_cancelled() -> None:
    async def run() -> list[str]:
        parts = Supervisor()
        log: list[str] = []
        began = asyncio.Event()

        async def append() -> None:
            began.set()
            await asyncio.sleep(0.05)
            log.append("appended")

        async def final() -> None:
            log.append("final")

        parts.every("checkpointer", append, interval_s=0.01, first="now", cancel=False,
                    stop=final)
        await parts.start()
        await began.wait()
        await parts.stop()
        return log

    assert asyncio.run(run())[-2:] == ["appended", "final"]


class Worker:
    """A thread worker whose thread dies on demand."""

    def __init__(self) -> None:
        self.starts = 0
        self.stops = 0
        self._die = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self.starts += 1
        self._die.clear()
        self._thread = threading.Thread(target=self._die.wait, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stops += 1
        self._die.set()

    def kill(self) -> None:
        self._die.set()


def test_a_dead_thread_is_seen_down_and_started_again() -> None:
    worker = Worker()

    async def run() -> None:
        parts = Supervisor(backoff_s=(0.01, 0.05))
        part = parts.thread("shipper", worker, poll_s=0.01)
        await parts.start()
        await _until(lambda: part.up)
        worker.kill()
        await _until(lambda: not part.up)
        assert "task shipper down" in parts.down_note()
        await _until(lambda: part.up and worker.starts == 2)
        assert part.restarts == 1
        await parts.stop()

    asyncio.run(run())
    assert worker.stops == 1 and not worker.alive


def test_a_held_part_starts_only_when_its_holder_starts_it() -> None:
    async def run() -> None:
        parts = Supervisor()
        rounds: list[int] = []

        async def sync() -> None:
            rounds.append(1)

        part = parts.every("sync", sync, interval_s=0.01, first="now", held=True)
        await parts.start()
        await asyncio.sleep(0.05)
        assert rounds == [] and not part.started and parts.down_note() == ""
        for start in parts.held():  # what the database watch does once the database is ready
            await start()
        await _until(lambda: len(rounds) >= 3)
        await parts.stop()

    asyncio.run(run())


def test_ready_names_a_task_that_is_down() -> None:
    metrics = Metrics(address="127.0.0.1:0", instance_id="s1")
    metrics.start()

    async def run() -> None:
        parts = Supervisor(backoff_s=(5.0, 5.0))
        metrics.watch_tasks(states=parts.states, note=parts.down_note)
        metrics.watch_readiness(lambda: True)

        async def broken() -> None:
            raise RuntimeError("no such table")

        parts.every("sweeper", broken, interval_s=1, first="now")
        await parts.start()
        assert parts.down_note() == ""  # running: up from its start
        await _until(lambda: parts.down_note())
        body = await asyncio.to_thread(_get, f"http://127.0.0.1:{metrics.port}/ready")
        assert body == ("SERVING\ntask sweeper down (restarts 1): RuntimeError: no such table\n")
        await parts.stop()

    try:
        asyncio.run(run())
    finally:
        metrics.close()


def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except urllib.error.HTTPError as err:
        return str(err.read().decode())
