"""The embedded PostgreSQL: starts from the pgserver package, migrates, stops."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import psycopg
from acgs import CONSTITUTIONAL_HASH
from acgs.adapters.embedded_pg import EmbeddedPostgres
from acgs.adapters.pg_migrations import migrate

from tests.plugins.servers import REPO


def test_embedded_postgres_starts_migrates_and_stops() -> None:
    # Not under pytest's basetemp: see tests/plugins/postgres.py.
    parent = Path(tempfile.mkdtemp(prefix="acgs-test-embedded-"))
    pg = EmbeddedPostgres(directory=parent / "pg")
    try:
        url = pg.start()
        assert asyncio.run(migrate(url, constitutional_hash=CONSTITUTIONAL_HASH))
        assert EmbeddedPostgres(directory=parent / "pg").start() == url  # joins, no new server
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT current_database(), version()").fetchone()
        assert row is not None and row[0] == "acgs" and "PostgreSQL 16" in row[1]
    finally:
        pg.stop()
        shutil.rmtree(parent, ignore_errors=True)


def _postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().split()[0])


KILLED_HOLDER = """
import os, signal, sys
from pathlib import Path
from acgs.adapters.embedded_pg import EmbeddedPostgres
pg = EmbeddedPostgres(directory=Path(sys.argv[1]))
pg.start()
print(flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # kill -9: no handle released
"""


def test_a_postgres_left_by_a_killed_server_is_adopted_then_stopped() -> None:
    """kill -9 of a server leaves its PostgreSQL running; the next server on the data
    directory reuses it and, as its only live holder, stops it on a clean stop."""
    parent = Path(tempfile.mkdtemp(prefix="acgs-test-embedded-"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "service"), str(REPO)])}
    try:
        killed = subprocess.run([sys.executable, "-c", KILLED_HOLDER, str(parent / "pg")],
                                env=env, capture_output=True, text=True, timeout=60)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        orphan = psutil.Process(_postmaster_pid(parent / "pg"))
        assert orphan.is_running()  # the orphan, parent pid 1 (or a subreaper)

        pg = EmbeddedPostgres(directory=parent / "pg")
        pg.start()
        assert _postmaster_pid(parent / "pg") == orphan.pid  # adopted, not a second server
        pg.stop()
        orphan.wait(timeout=10)
        assert not orphan.is_running()
    finally:
        with contextlib.suppress(NameError, psutil.Error):
            if orphan.is_running():
                orphan.kill()
        shutil.rmtree(parent, ignore_errors=True)
