"""Schema migrations: plain SQL files in ``migrations/``, applied in name order, once.

Each file runs in its own transaction and is recorded (with a checksum) in
``acgs_schema_migrations``. The runner holds a PostgreSQL advisory lock, so
several servers starting at once apply each file exactly once, and running it
again is a no-op. The database also records, in ``acgs_meta``, the
constitutional hash it was first migrated for; a server of another
constitution is refused before anything is changed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.rows import TupleRow

from acgs.errors import ConfigurationError, ConstitutionMismatch

logger = logging.getLogger("acgs.migrations")

# An arbitrary constant naming ACGS-2's migration lock among all advisory locks.
_LOCK_KEY = 0x4AC6_5002
_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS acgs_schema_migrations (
    name       text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS acgs_meta (
    key        text PRIMARY KEY,
    value      text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
"""


@dataclass(frozen=True, slots=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def default_directory() -> Path:
    """``migrations/`` at the top of the source tree this package runs from."""
    return Path(__file__).resolve().parents[3] / "migrations"


def load_migrations(directory: Path) -> list[Migration]:
    """Every ``NNNN_*.sql`` file of ``directory``, in name order; ConfigurationError if none."""
    files = sorted(directory.glob("[0-9][0-9][0-9][0-9]_*.sql"))
    if not files:
        raise ConfigurationError(f"no migrations (NNNN_name.sql) found in {directory}")
    return [Migration(f.stem, f.read_text("utf-8")) for f in files]


async def migrate(
    conninfo: str,
    *,
    constitutional_hash: str,
    directory: Path | None = None,
    lock_timeout_s: float = 60.0,
    connect_timeout_s: int | None = None,
) -> list[str]:
    """Check the database's constitution, then apply pending migrations; return their names.

    Raises ConstitutionMismatch(what="database") when the database was migrated
    for another constitution, ConfigurationError when an applied migration's
    file has changed since or the lock is not obtained within
    ``lock_timeout_s``, and psycopg.Error when PostgreSQL fails (OperationalError when it
    cannot be reached within ``connect_timeout_s``, default: libpq's, which may be never).
    """
    migrations = load_migrations(directory or default_directory())
    if connect_timeout_s is not None:
        conninfo = make_conninfo(conninfo, connect_timeout=connect_timeout_s)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await _lock(conn, lock_timeout_s)
        try:
            await conn.execute(_BOOKKEEPING)
            await _check_constitution(conn, constitutional_hash)
            return await _apply(conn, migrations)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))


async def check_constitution(conninfo: str, *, constitutional_hash: str) -> None:
    """Raise ConstitutionMismatch(what="database") unless the database is for this constitution.

    A database never migrated at all is refused too (ConfigurationError).
    """
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        try:
            cur = await conn.execute(
                "SELECT value FROM acgs_meta WHERE key = 'constitutional_hash'"
            )
        except psycopg.errors.UndefinedTable as err:
            raise ConfigurationError("the database is not migrated; run `acgs migrate`") from err
        row = await cur.fetchone()
        got = row[0] if row else ""
        if got != constitutional_hash:
            raise ConstitutionMismatch(expected=constitutional_hash, got=got, what="database")


async def _lock(conn: psycopg.AsyncConnection[TupleRow], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (_LOCK_KEY,))
        row = await cur.fetchone()
        if row and row[0]:
            return
        if time.monotonic() >= deadline:
            raise ConfigurationError(
                f"another server held the migration lock for over {timeout_s:.0f} s"
            )
        await asyncio.sleep(0.05)


async def _check_constitution(conn: psycopg.AsyncConnection[TupleRow], expected: str) -> None:
    await conn.execute(
        "INSERT INTO acgs_meta (key, value) VALUES ('constitutional_hash', %s) "
        "ON CONFLICT (key) DO NOTHING",
        (expected,),
    )
    cur = await conn.execute("SELECT value FROM acgs_meta WHERE key = 'constitutional_hash'")
    row = await cur.fetchone()
    got = str(row[0]) if row else ""
    if got != expected:
        raise ConstitutionMismatch(expected=expected, got=got, what="database")


async def _apply(conn: psycopg.AsyncConnection[TupleRow], migrations: list[Migration]) -> list[str]:
    cur = await conn.execute("SELECT name, checksum FROM acgs_schema_migrations")
    applied = {str(name): str(checksum) for name, checksum in await cur.fetchall()}
    done = []
    for m in migrations:
        if m.name in applied:
            if applied[m.name] != m.checksum:
                raise ConfigurationError(
                    f"migration {m.name} was changed after it was applied; add a new one instead"
                )
            continue
        async with conn.transaction():
            await conn.execute(m.sql.encode("utf-8"))
            await conn.execute(
                "INSERT INTO acgs_schema_migrations (name, checksum) VALUES (%s, %s)",
                (m.name, m.checksum),
            )
        logger.info("applied migration %s", m.name)
        done.append(m.name)
    return done
