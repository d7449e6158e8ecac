"""The floor under the journal's cost: ``python3 -m bench.journal_floor [cond|queue]``.

The smallest version of what the audit journal does per decision at 1,000/s, on one
core (run it under ``taskset -c 1``): an asyncio loop hands a 1 KB record to a writer
thread, which appends it with ``write`` + ``fdatasync`` and settles the waiting future
with ``call_soon_threadsafe``. It prints process CPU µs per append; ``cond`` hands over
through a ``threading.Condition`` (as the journal does), ``queue`` through a
``queue.SimpleQueue``. Nothing else: no hashing, no encoding, no shipper.

2026-12-03, this VM, in turn: cond 128.0, 139.1, 137.0, 139.2, 144.2 µs; queue 127.7,
136.7, 166.1, 136.5, 131.2 µs. The hand-over's kind does not matter, and the journal
thread's ~150 µs per decision in ``bench.cost`` is close to this floor: at 1,000/s each
decision pays its own ``fdatasync`` and two thread wake-ups.
"""

from __future__ import annotations

import asyncio
import os
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Callable

RECORD = b"x" * 1099 + b"\n"
Item = tuple[bytes, "asyncio.Future[None]"]


def _settle(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        future.set_result(None)


class Writer:
    """A writer thread taking records through a Condition or a SimpleQueue."""

    def __init__(self, fd: int, loop: asyncio.AbstractEventLoop, mode: str) -> None:
        self._fd, self._loop, self._mode = fd, loop, mode
        self._cond = threading.Condition()
        self._items: list[Item] = []
        self._queue: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self.put: Callable[[Item], None] = self._put_cond if mode == "cond" else self._queue.put
        threading.Thread(target=self._run, daemon=True).start()

    def _put_cond(self, item: Item) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify()

    def _take(self) -> list[Item]:
        if self._mode == "cond":
            with self._cond:
                while not self._items:
                    self._cond.wait()
                batch, self._items = self._items, []
            return batch
        batch = [self._queue.get()]
        while True:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            os.write(self._fd, b"".join(data for data, _ in batch))
            os.fdatasync(self._fd)
            self._loop.call_soon_threadsafe(_settle, [future for _, future in batch])


async def measure(mode: str, appends: int = 4000, rate: float = 1000.0) -> float:
    """Process CPU µs per append of ``appends`` records offered at ``rate``/s."""
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory(prefix="acgs-journal-floor-") as tmp:
        fd = os.open(os.path.join(tmp, "segment"), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                     0o600)
        writer = Writer(fd, loop, mode)

        async def one() -> None:
            future: asyncio.Future[None] = loop.create_future()
            writer.put((RECORD, future))
            await future

        await asyncio.sleep(0.1)
        tasks = []
        start, cpu0 = time.perf_counter(), time.process_time()
        for i in range(appends):
            wait = start + i / rate - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.ensure_future(one()))
        await asyncio.gather(*tasks)
        return (time.process_time() - cpu0) / appends * 1e6


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "cond"
    if mode not in ("cond", "queue"):
        raise SystemExit("usage: python3 -m bench.journal_floor [cond|queue]")
    print(f"{mode}: {asyncio.run(measure(mode)):.1f} µs process CPU per append")


if __name__ == "__main__":
    main()
