"""Starting while PostgreSQL is unreachable (the database part, :mod:`acgs.lifecycle.database`).

At start the database is migrated and its constitution checked, as always.
When it cannot be reached, a server that has served before (its data
directory holds a snapshot of the policy version it served and, with token
authentication, of the token table) starts anyway: it serves from the
snapshot, journals every decision, and defers all that needs the database to
the :class:`~acgs.service_layer.database_watch.DatabaseWatch`, which migrates
and checks the database once it answers and then resumes shipping, policy
sync, token refresh and the escalation sweeper. A server without a snapshot
refuses to start and says why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from acgs.adapters.local_snapshot import SnapshotStore
from acgs.adapters.pg_migrations import migrate
from acgs.config import Settings
from acgs.domain.tokens import TokenRecord
from acgs.errors import Unavailable
from acgs.service_layer.authentication import TokenSource
from acgs.service_layer.database_watch import DatabaseWatch

logger = logging.getLogger("acgs.lifecycle")

CONNECT_TIMEOUT_S = 5
UNREACHABLE: tuple[type[BaseException], ...] = (
    psycopg.OperationalError, PoolTimeout, Unavailable, OSError, TimeoutError)
"""What "the database cannot be reached" looks like from the adapters."""


def snapshot_store(settings: Settings) -> SnapshotStore:
    return SnapshotStore(directory=settings.data_dir / "snapshot")


async def prepare_database(settings: Settings, conninfo: str, snapshots: SnapshotStore) -> bool:
    """Migrate and check the database: True. False when it is unreachable and a snapshot
    lets this server start without it; Unavailable (the start is refused) when none does.

    Raises what :func:`migrate` raises for a database that answers (ConstitutionMismatch...).
    """
    try:
        await migrate(conninfo, constitutional_hash=settings.constitutional_hash,
                      connect_timeout_s=CONNECT_TIMEOUT_S)
        return True
    except psycopg.OperationalError as err:
        missing = missing_snapshots(settings, snapshots)
        if missing:
            raise Unavailable(
                f"the database is unreachable ({_one_line(err)}) and this server has nothing "
                f"local to serve from: no {' and no '.join(missing)} under "
                f"{snapshots.directory} (a server writes them once it has served with this "
                "ACGS_DATA_DIR); start it when the database is reachable") from err
        logger.warning("database unreachable at start (%s): serving from the local snapshot "
                       "under %s and the journal; migrating when it returns",
                       _one_line(err), snapshots.directory)
        return False


def missing_snapshots(settings: Settings, snapshots: SnapshotStore) -> list[str]:
    """What an offline start needs and the data directory lacks."""
    needed = [("policy snapshot", snapshots.policy_path)]
    if settings.auth == "token":
        needed.append(("token snapshot", snapshots.tokens_path))
    return [f"{what} ({path.name})" for what, path in needed if not path.exists()]


def database_watch(settings: Settings, *, conninfo: str, pool: AsyncConnectionPool[Any],
                   prepared: bool) -> DatabaseWatch:
    """The watch over ``conninfo``: migrates it when it returns, then probes it via ``pool``."""

    async def prepare() -> None:
        await migrate(conninfo, constitutional_hash=settings.constitutional_hash,
                      connect_timeout_s=CONNECT_TIMEOUT_S)

    async def probe() -> None:
        async with pool.connection(timeout=CONNECT_TIMEOUT_S) as conn:
            await conn.execute("SELECT 1")

    return DatabaseWatch(prepare=prepare, probe=probe, prepared=prepared,
                         retry_s=settings.database_retry_s, unreachable=UNREACHABLE)


class SnapshotTokenSource:
    """The token table for the authenticator: read from the database once it is ``ready``
    (else Unavailable), and kept in the snapshot whenever what it reads has changed."""

    def __init__(self, *, source: TokenSource, snapshots: SnapshotStore,
                 ready: Callable[[], bool]) -> None:
        self._source = source
        self._snapshots = snapshots
        self._ready = ready
        self._kept: Sequence[TokenRecord] | None = None

    async def load(self) -> Sequence[TokenRecord]:
        if not self._ready():
            raise Unavailable("the database is not yet migrated and checked by this server")
        records = list(await self._source.load())
        if records != self._kept:
            try:
                await asyncio.to_thread(self._snapshots.save_tokens, records)
                self._kept = records
            except OSError as err:  # authentication goes on; the next change tries again
                logger.error("token snapshot not written: %s", err)
        return records


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())
