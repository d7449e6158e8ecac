"""A bell that rings when PostgreSQL notifies a channel (LISTEN/NOTIFY).

Watchers of escalation events take :meth:`PgBell.next_ring` *before* they
query for new events and wait on it after finding none, so no notification
falls between the query and the wait. Notifications are only a wake-up call:
the events themselves are read from their table, so a notification lost while
the listening connection reconnects costs latency (the watchers' poll
interval, and a ring after every reconnect), never an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg
from psycopg import sql

logger = logging.getLogger("acgs.escalations.bell")


class PgBell:
    """Listens on ``channel`` of the database at ``conninfo`` from ``start`` until ``close``.

    ``closed`` turns true on ``close``, and every pending ring is rung then, so
    watchers end promptly when the server stops.
    """

    def __init__(self, *, conninfo: str, channel: str = "acgs_escalation_events",
                 backoff_s: tuple[float, float] = (0.1, 5.0)) -> None:
        self._conninfo = conninfo
        self._channel = channel
        self._backoff_s = backoff_s
        self._ring: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self.closed = False

    def next_ring(self) -> asyncio.Future[None]:
        """A future done at the next notification (or at close)."""
        if self._ring is None or self._ring.done():
            self._ring = asyncio.get_running_loop().create_future()
            if self.closed:
                self._ring.set_result(None)
        return self._ring

    async def wait(self, ring: asyncio.Future[None], *, timeout_s: float) -> None:
        """Wait for ``ring`` for at most ``timeout_s`` seconds (never raises TimeoutError)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(ring), timeout_s)

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen(), name="acgs-bell")

    async def close(self) -> None:
        """Stop listening and wake every waiter."""
        self.closed = True
        self._wake()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _wake(self) -> None:
        ring, self._ring = self._ring, None
        if ring is not None and not ring.done():
            ring.set_result(None)

    async def _listen(self) -> None:
        delay = self._backoff_s[0]
        while not self.closed:
            try:
                async with await psycopg.AsyncConnection.connect(
                        self._conninfo, autocommit=True, connect_timeout=5) as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    delay = self._backoff_s[0]
                    self._wake()  # events may have been missed while not listening
                    async for _ in conn.notifies():
                        self._wake()
            except psycopg.Error as err:
                logger.warning("escalation listener lost its connection, retrying in %.1f s: %s",
                               delay, err)
                self._wake()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff_s[1])
