"""A bell that rings when PostgreSQL notifies a channel (LISTEN/NOTIFY).

Watchers of escalation events take :meth:`PgBell.next_ring` *before* they
query for new events and wait on it after finding none, so no notification
falls between the query and the wait. Notifications are only a wake-up call:
the events themselves are read from their table, so a notification lost while
the listening connection reconnects costs latency (the watchers' poll
interval, and a ring after every reconnect), never an event. One
:class:`PgListener` connection serves every bell of a server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

import psycopg
from psycopg import sql


class PgBell:
    """Rings when ``channel`` is notified (by the :class:`PgListener` it is given to), and
    at ``close``.

    ``closed`` turns true on ``close``, and every pending ring is rung then, so
    watchers end promptly when the server stops.
    """

    def __init__(self, *, conninfo: str, channel: str = "acgs_escalation_events") -> None:
        self.conninfo = conninfo
        self.channel = channel
        self._ring: asyncio.Future[None] | None = None
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

    async def close(self) -> None:
        """Wake every waiter; from now on every ring is rung at once."""
        self.closed = True
        self.ring()

    def ring(self) -> None:
        """Wake the waiters of the current ring."""
        ring, self._ring = self._ring, None
        if ring is not None and not ring.done():
            ring.set_result(None)


class PgListener:
    """One connection that LISTENs on the channels of ``bells`` and rings the bell notified.

    :meth:`listen` runs until the connection is lost (psycopg.Error; the
    supervisor restarts it with back-off). Every bell is rung on (re)connection
    and on loss, as notifications may have been missed meanwhile.
    """

    def __init__(self, *, bells: Sequence[PgBell]) -> None:
        if len({bell.conninfo for bell in bells}) != 1:
            raise ValueError("one listener serves the bells of one database")
        self._conninfo = bells[0].conninfo
        self._bells = {bell.channel: bell for bell in bells}

    async def listen(self, healthy: Callable[[], None]) -> None:
        try:
            async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, connect_timeout=5) as conn:
                for channel in self._bells:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                healthy()
                self._ring_all()
                async for note in conn.notifies():
                    bell = self._bells.get(note.channel)
                    if bell is not None:
                        bell.ring()
        finally:
            self._ring_all()

    def _ring_all(self) -> None:
        for bell in self._bells.values():
            bell.ring()
