"""An embedded PostgreSQL for ``make run`` and single-host use without ACGS_DATABASE_URL.

A real PostgreSQL 16, shipped as binaries by the ``pgserver`` package, with its
data under ``<data_dir>/pg``. It listens on a Unix socket in that directory
only (no TCP port), with trust authentication, so only local processes that
can reach the directory can connect. When run as root, pgserver runs the
server as an unprivileged ``pgserver`` system user (created on first use).

Lifetime: every server process of the host that uses the same data directory
shares one PostgreSQL. ``stop`` releases this process's handle, and the last
handle stops PostgreSQL. A process killed with SIGKILL never releases its
handle, so PostgreSQL then keeps running (parent pid 1) and the next start
reuses it; that is on purpose, since the journal ships to it again on restart.

The handles are pgserver's list of holder pids (``<data_dir>/pg/.handle_pids.json``),
and pgserver stops PostgreSQL only when the pid releasing its handle is the last
one listed. A killed holder's pid stayed listed for ever, so no later process
was ever the last and that PostgreSQL outlived every clean stop. ``start`` now
drops the pids of processes that are gone before it joins (under pgserver's
lock), so the server that adopts an orphaned PostgreSQL also stops it. (A pid
the system has since given to another live process still counts as a holder:
that PostgreSQL is then left running, as before, until that process ends and
a later server starts and stops.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
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
            from pgserver.postgres_server import PostgresServer, get_server
        try:
            with PostgresServer._lock:
                _forget_dead_holders(directory)
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


HANDLES = ".handle_pids.json"
"""pgserver's list of the pids holding a handle on the PostgreSQL of a data directory."""


def _forget_dead_holders(pgdata: Path) -> None:
    """Drop from pgserver's handle list the pids of processes that are gone (killed
    without releasing their handle); call under pgserver's lock. See the module docstring."""
    path = pgdata / HANDLES
    try:
        pids = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # none yet (a first start), or unreadable: pgserver decides
    if not isinstance(pids, list):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and _exists(pid)]
    if alive != pids:
        logger.warning("embedded PostgreSQL under %s: forgetting %d holder(s) that are gone "
                       "(pids %s, killed?); this process will stop it when it is the last",
                       pgdata, len(pids) - len(alive),
                       ", ".join(str(p) for p in pids if p not in alive))
        path.write_text(json.dumps(alive))


def _exists(pid: int) -> bool:
    if pid <= 0:  # 0 and negative pids name process groups
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
