"""The journal's writer thread: group commit of queued records, rotation, failure.

One thread takes every record queued since its last write, writes them with
one ``write`` and makes them durable with one ``fdatasync``, then settles the
waiting futures on their event loops (``call_soon_threadsafe``): concurrent
appenders share one disk flush. See :mod:`acgs.adapters.journal`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from pathlib import Path

from acgs.adapters.journal_files import Position, fsync_dir, segment_path
from acgs.adapters.journal_reader import JournalReader
from acgs.errors import AuditUnavailable
from acgs.os_threads import name_os_thread

logger = logging.getLogger("acgs.audit.journal")

Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]


class JournalWriter(JournalReader):
    """Owns the segment being written and the thread writing it."""

    def __init__(self, *, directory: Path, fsync_interval_ms: float, segment_bytes: int) -> None:
        super().__init__(directory=directory)
        self._interval_s = fsync_interval_ms / 1000
        self._segment_bytes = segment_bytes
        self._cond = threading.Condition(self._lock)
        self._queue: list[tuple[bytes, int, Waiter]] = []
        self._fd: int | None = None
        self._active = 0  # first seq of the segment being written
        self._written = Position(0, 0)
        self._written_seq = 0
        self._queued_seq = 0
        self._dirty_since: float | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._flushing = False
        self.failed: str | None = None

    def _start_writer(self, *, last_seq: int) -> None:
        if self._sizes:
            self._active = max(self._sizes)
            self._written = self._synced = Position(self._active, self._sizes[self._active])
        self._written_seq = self._synced_seq = self._queued_seq = last_seq
        self._thread = threading.Thread(target=self._run, name="acgs-journal", daemon=True)
        self._thread.start()

    def _enqueue(self, data: bytes, last_seq: int, waiter: Waiter) -> None:
        """Queue encoded records (the caller holds ``self._cond``)."""
        self._queue.append((data, last_seq, waiter))
        self._queued_seq = last_seq
        self._cond.notify()

    def flush(self, *, timeout_s: float = 30.0) -> bool:
        """Wait until every queued record is written and fsynced; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._flushing = True
            self._cond.notify_all()
        try:
            while self._synced_seq < self._queued_seq and self.failed is None:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.001)
            return self.failed is None
        finally:
            self._flushing = False

    def _stop_writer(self, timeout_s: float) -> bool:
        """Write and sync what is queued, then stop the thread; False if it did not stop."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                logger.error("journal writer did not finish within %.1f s", timeout_s)
                return False
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        return True

    def _run(self) -> None:
        name_os_thread()
        while True:
            with self._cond:
                while not (self._queue or self._stopping or self._sync_due()):
                    self._cond.wait(self._wait_s())
                batch, self._queue = self._queue, []
                stopping = self._stopping
            if batch:
                self._write(batch)
            elif self._dirty_since is not None:
                self._sync()
            if stopping and not batch:
                return

    def _sync_due(self) -> bool:
        return self._dirty_since is not None and (
            self._flushing or time.monotonic() - self._dirty_since >= self._interval_s)

    def _wait_s(self) -> float | None:
        if self._dirty_since is None:
            return None
        return max(0.0, self._interval_s - (time.monotonic() - self._dirty_since))

    def _write(self, batch: list[tuple[bytes, int, Waiter]]) -> None:
        data = b"".join(item[0] for item in batch)
        waiters = [item[2] for item in batch]
        if self.failed is not None:
            _settle(waiters, AuditUnavailable(f"audit journal failed: {self.failed}"))
            return
        before = self._written
        try:
            self._write_durably(data, self._written_seq + 1, batch[-1][1])
        except OSError as err:
            keep = before.offset if before.segment == self._active else 0
            self._fail(err, waiters, keep=keep)
            return
        _settle(waiters, None)
        if self._written.offset >= self._segment_bytes:
            self._rotate()

    def _write_durably(self, data: bytes, first_seq: int, last_seq: int) -> None:
        if self._fd is None:
            self._open_segment(first_seq)
        assert self._fd is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        with self._lock:
            self._written = Position(self._active, self._written.offset + len(data))
            self._sizes[self._active] = self._written.offset
            self._written_seq = last_seq
        if self._dirty_since is None:
            self._dirty_since = time.monotonic()
        if self._sync_due():
            self._sync()

    def _sync(self) -> None:
        if self._fd is not None:
            os.fdatasync(self._fd)
        with self._lock:
            self._synced, self._synced_seq = self._written, self._written_seq
        self._dirty_since = None
        self.wake_readers()

    def _open_segment(self, first_seq: int) -> None:
        """Start the segment whose first record has ``first_seq`` (new after open/rotation)."""
        path = segment_path(self.directory, first_seq)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        size = os.fstat(self._fd).st_size  # 0 unless a crash left it behind
        fsync_dir(self.directory)  # the new name must survive a crash too
        with self._lock:
            self._active, self._written = first_seq, Position(first_seq, size)
            self._sizes[first_seq] = size

    def _rotate(self) -> None:
        try:
            if self._dirty_since is not None:
                self._sync()
        except OSError as err:
            self._fail(err, [], keep=self._written.offset)
            return
        assert self._fd is not None
        os.close(self._fd)
        self._fd = None  # the next write opens a segment named after its first seq

    def _fail(self, err: OSError, waiters: list[Waiter], *, keep: int) -> None:
        self.failed = f"{type(err).__name__}: {err}"
        logger.critical("audit journal %s failed; refusing further records: %s",
                        self.directory, self.failed)
        if self._fd is not None:
            try:  # drop the failed batch, so that no refused decision stays on disk
                os.ftruncate(self._fd, keep)
            except OSError:
                logger.exception("could not cut the failed write from %s", self.directory)
        _settle(waiters, AuditUnavailable(f"audit journal failed: {self.failed}"))


def _settle(waiters: list[Waiter], error: Exception | None) -> None:
    """Resolve futures from the writer thread, one callback per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for loop, future in waiters:
        by_loop.setdefault(loop, []).append(future)
    for loop, futures in by_loop.items():
        # A closed loop raises RuntimeError: nobody is waiting there any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, futures, error)


def _resolve(futures: list[asyncio.Future[None]], error: Exception | None) -> None:
    for future in futures:
        if future.done():  # the caller was cancelled; the record is kept regardless
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
