"""The database part: PostgreSQL (``ACGS_DATABASE_URL``, else the embedded one) and its pool.

The connection budget of one server (with the audit trail on PostgreSQL):

=================================================  ===========================  =================
who                                                connections                  setting
=================================================  ===========================  =================
the shared pool: audit reads, the database probe,  ``ACGS_DB_POOL_MIN`` ..       1 .. 8
tokens, escalations, policy versions, the fleet    ``ACGS_DB_POOL_MAX``
table, the shadow plan
the listener (LISTEN for escalation events and     1                            —
policy activations, one connection for both)
the audit shipper (its own thread)                 1                            —
the migration at start (and while offline, each    1, for the migration only    —
attempt of the database watch)
=================================================  ===========================  =================

So 3 connections at rest and 10 at the most (11 for a moment at start). It
was 7 to 16: four pools (audit 1..4, tokens 1..2, escalations 1..4, policy
1..3) and a listener each for escalations and policy. Every statement the
stores run is a single statement or an explicit transaction, so one
autocommit pool serves them all. The command-line tools open a pool of 1..2
(``acgs audit``) or 1 (``acgs token``) on their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from acgs.adapters.embedded_pg import EmbeddedPostgres
from acgs.adapters.gated_pool import GatedPool
from acgs.adapters.local_snapshot import SnapshotStore
from acgs.adapters.pg_migrations import migrate
from acgs.config import Settings
from acgs.errors import ConfigurationError
from acgs.lifecycle.offline import database_watch, prepare_database, snapshot_store
from acgs.lifecycle.supervisor import Supervisor
from acgs.service_layer.database_watch import DatabaseWatch

Closer = Callable[[], Awaitable[None]]


@dataclass
class Database:
    """The server's database: where it is, its pool, whether it is usable yet, and the local
    snapshots that stand in for it while it is not (see :mod:`acgs.lifecycle.offline`)."""

    conninfo: str
    pool: GatedPool
    watch: DatabaseWatch
    """Migrated and checked yet (``ready``)? Its round is the server's last part."""
    snapshots: SnapshotStore

    @property
    def offline(self) -> bool:
        """True while the database has not been migrated and checked by this process."""
        return not self.watch.ready


async def build_database(settings: Settings, parts: Supervisor) -> Database:
    """Open (or start) the database, migrate it and check its constitution, open the pool.

    An unreachable database with local snapshots defers all that to the watch (see
    :mod:`acgs.lifecycle.offline`). Raises ConstitutionMismatch, ConfigurationError,
    Unavailable (unreachable, nothing local to serve from), ConnectionError (the embedded
    PostgreSQL did not start).
    """
    conninfo, stop_database = await open_database(settings)
    parts.step("postgres", stop=stop_database)
    snapshots = snapshot_store(settings)
    prepared = await prepare_database(settings, conninfo, snapshots)  # False: unreachable
    pool = shared_pool(settings, conninfo)
    watch = database_watch(settings, conninfo=conninfo, pool=pool, prepared=prepared)
    pool.gate = lambda: watch.ready  # nobody reads or writes before the migration and check
    await pool.open()
    parts.step("pool", stop=pool.close)
    return Database(conninfo=conninfo, pool=pool, watch=watch, snapshots=snapshots)


async def open_database(settings: Settings, *, create: bool = True) -> tuple[str, Closer]:
    """The database's conninfo (ACGS_DATABASE_URL, else the embedded PostgreSQL) and its closer.

    ``create=False`` (the admin commands) refuses to make a new embedded PostgreSQL: one run
    from the wrong directory would otherwise initdb and migrate a database no server uses,
    and its answers ("no such token") would be about that one. Raises ConfigurationError
    then, ConnectionError when the embedded PostgreSQL does not start.
    """
    if settings.database_url is not None:
        return settings.database_url, _nothing
    if not create:
        existing_embedded(settings)
    embedded = EmbeddedPostgres(directory=settings.data_dir / "pg")
    conninfo = await asyncio.to_thread(embedded.start)
    return conninfo, lambda: asyncio.to_thread(embedded.stop)


def embedded_directory(settings: Settings) -> Path:
    """Where the embedded PostgreSQL's data is (absolute: messages name it)."""
    return (settings.data_dir / "pg").absolute()


def existing_embedded(settings: Settings) -> Path:
    """The embedded PostgreSQL's directory, if ``acgs serve`` made one there; else raise
    ConfigurationError saying where it looked and how to name the right database."""
    directory = embedded_directory(settings)
    if not (directory / "PG_VERSION").exists():
        raise ConfigurationError(
            f"no database: ACGS_DATABASE_URL is not set and there is no embedded PostgreSQL "
            f"under {directory} (ACGS_DATA_DIR={settings.data_dir}); set ACGS_DATABASE_URL "
            f"to the servers' database, or ACGS_DATA_DIR to the data directory of the "
            f"server whose embedded PostgreSQL you mean (or run from the directory it was "
            f"started in); nothing was created")
    return directory


def describe(conninfo: str) -> str:
    """A database URL or conninfo as messages show it: ``postgresql://user@host:port/db``,
    never its password."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "ACGS_DATABASE_URL (unparsable)"
    user = f"{params['user']}@" if params.get("user") else ""
    host = str(params.get("host") or "localhost")
    port = f":{params['port']}" if params.get("port") else ""
    return f"postgresql://{user}{host}{port}/{params.get('dbname') or params.get('user') or ''}"


def database_name(settings: Settings) -> str:
    """The database the admin commands use, as their output names it."""
    if settings.database_url is not None:
        return describe(settings.database_url)
    return f"the embedded PostgreSQL under {embedded_directory(settings)}"


def shared_pool(settings: Settings, conninfo: str) -> GatedPool:
    """The server's one pool (not yet open). A short timeout and a checked connection: an
    unreachable database is a prompt UNAVAILABLE, never a 30 s hang. Its ``gate`` is set
    by the owner (no connection before the database is migrated and checked)."""
    return GatedPool(conninfo, min_size=settings.db_pool_min, max_size=settings.db_pool_max,
                     open=False, name="acgs", timeout=5.0,
                     check=AsyncConnectionPool.check_connection, kwargs={"autocommit": True})


def watching(parts: Supervisor, watch: DatabaseWatch) -> None:
    """The database watch's part: a round every ``retry_s``, the first at once while the
    database is not yet ready."""
    parts.every("database-watch", watch.round, interval_s=watch.retry_s,
                first="later" if watch.ready else "now")


async def migrate_database(settings: Settings) -> list[str]:
    """Apply the migrations to the configured (or existing embedded) database; return what
    was applied. ConfigurationError when there is neither (``acgs serve`` makes the
    embedded one)."""
    conninfo, stop_database = await open_database(settings, create=False)
    try:
        return await migrate(conninfo, constitutional_hash=settings.constitutional_hash)
    finally:
        await stop_database()


async def _nothing() -> None:
    return None
