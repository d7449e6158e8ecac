"""A connection pool that hands out no connection until its database may be used.

A server that started while PostgreSQL was unreachable must not read or write
the database before it has migrated it and checked the constitution it was
migrated for (see :mod:`acgs.service_layer.database_watch`), and never if that
check refused it. Until ``gate()`` is true, ``connection()`` raises PoolTimeout
at once, which every store already reports as "database unreachable":
UNAVAILABLE for the caller, promptly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout


class GatedPool(AsyncConnectionPool[AsyncConnection[Any]]):
    """An AsyncConnectionPool whose ``connection()`` waits for ``gate`` (set by the owner)."""

    gate: Callable[[], bool] = staticmethod(lambda: True)

    @asynccontextmanager
    async def connection(self, timeout: float | None = None
                         ) -> AsyncIterator[AsyncConnection[Any]]:
        if not self.gate():
            raise PoolTimeout("the database is not yet migrated and checked by this server")
        async with super().connection(timeout) as conn:
            yield conn
