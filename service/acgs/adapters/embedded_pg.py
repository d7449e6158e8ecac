"""An embedded PostgreSQL for ``make run`` and single-host use without ACGS_DATABASE_URL.

A real PostgreSQL 16, shipped as binaries by the ``pgserver`` package, with its
data under ``<data_dir>/pg``. It listens on a Unix socket in that directory
only (no TCP port), with trust authentication, so only local processes that
can reach the directory can connect. When run as root, pgserver runs the
server as an unprivileged ``pgserver`` system user (created on first use).

Lifetime: every server process of the host that uses the same data directory
shares one PostgreSQL. ``stop`` releases this process's handle, and the last
handle stops PostgreSQL. A process killed with SIGKILL never releases its
handle, so PostgreSQL then keeps running and the next start reuses it; that is
on purpose, since the journal ships to it again on restart.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

logger = logging.getLogger("acgs.embedded_pg")


class EmbeddedPostgres:
    """Starts (or joins) the PostgreSQL under ``directory``; see the module docstring."""

    def __init__(self, *, directory: Path, database: str = "acgs") -> None:
        self.directory = directory
        self.database = database
        self._server: Any = None

    def start(self) -> str:
        """Start or join the server, create ``database`` if missing; return its conninfo.

        Blocking (initdb takes seconds the first time): call it via
        ``asyncio.to_thread``. Raises ConnectionError when PostgreSQL cannot be started.
        """
        directory = self.directory.resolve()
        directory.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # platformdirs warns at import without XDG_RUNTIME_DIR
            warnings.simplefilter("ignore")
            from pgserver.postgres_server import get_server
        try:
            self._server = get_server(directory, cleanup_mode="stop")
        except Exception as err:  # pgserver raises bare subprocess and assertion errors
            raise ConnectionError(f"embedded PostgreSQL under {directory} did not start: "
                                  f"{err}; see {directory / 'log'}") from err
        admin = str(self._server.get_uri("postgres"))
        self._ensure_database(admin)
        logger.info("embedded PostgreSQL running under %s", directory)
        return make_conninfo(admin, dbname=self.database)

    def stop(self) -> None:
        """Release this process's handle; the last process to do so stops PostgreSQL."""
        server, self._server = self._server, None
        if server is not None:
            server.cleanup()

    def _ensure_database(self, admin: str) -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
            ).fetchone()
            if exists is None:
                # Another server process of this host may create it at the same moment.
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(
                        sql.Identifier(self.database)))
