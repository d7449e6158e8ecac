"""The embedded PostgreSQL: starts from the pgserver package, migrates, stops."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import psycopg
from acgs import CONSTITUTIONAL_HASH
from acgs.adapters.embedded_pg import EmbeddedPostgres
from acgs.adapters.pg_migrations import migrate


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
