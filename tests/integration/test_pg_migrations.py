"""Migrations: applied once, safe to repeat and to race, pinned to one constitution."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from acgs import CONSTITUTIONAL_HASH
from acgs.adapters.pg_migrations import check_constitution, load_migrations, migrate
from acgs.errors import ConfigurationError, ConstitutionMismatch

pytestmark = pytest.mark.postgres


def _applied(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT name FROM acgs_schema_migrations ORDER BY name").fetchall()
    return [r[0] for r in rows]


def test_migrating_twice_applies_each_file_once(make_database: Callable[[], str]) -> None:
    url = make_database()
    first = asyncio.run(migrate(url, constitutional_hash=CONSTITUTIONAL_HASH))
    second = asyncio.run(migrate(url, constitutional_hash=CONSTITUTIONAL_HASH))
    names = [m.name for m in load_migrations(Path("migrations"))]
    assert first == names and second == []
    assert _applied(url) == names


def test_concurrent_servers_migrate_exactly_once(make_database: Callable[[], str]) -> None:
    url = make_database()

    async def race() -> list[list[str]]:
        return list(await asyncio.gather(
            *(migrate(url, constitutional_hash=CONSTITUTIONAL_HASH) for _ in range(4))
        ))

    results = asyncio.run(race())
    applied = [name for result in results for name in result]
    assert sorted(applied) == _applied(url)  # every file applied by exactly one of them


def test_database_of_another_constitution_is_refused(make_database: Callable[[], str]) -> None:
    url = make_database()
    asyncio.run(migrate(url, constitutional_hash="0123456789abcdef"))
    with pytest.raises(ConstitutionMismatch, match="database carries constitutional hash "
                       "'0123456789abcdef'; this server enforces 'cdd01ef066bc6cf2'"):
        asyncio.run(migrate(url, constitutional_hash=CONSTITUTIONAL_HASH))
    with pytest.raises(ConstitutionMismatch):
        asyncio.run(check_constitution(url, constitutional_hash=CONSTITUTIONAL_HASH))


def test_unmigrated_database_fails_the_check(make_database: Callable[[], str]) -> None:
    with pytest.raises(ConfigurationError, match="not migrated"):
        asyncio.run(check_constitution(make_database(), constitutional_hash=CONSTITUTIONAL_HASH))


def test_changed_migration_is_refused(make_database: Callable[[], str], tmp_path: Path) -> None:
    url = make_database()
    (tmp_path / "0001_t.sql").write_text("CREATE TABLE t (a int);")
    asyncio.run(migrate(url, constitutional_hash=CONSTITUTIONAL_HASH, directory=tmp_path))
    (tmp_path / "0001_t.sql").write_text("CREATE TABLE t (a bigint);")
    with pytest.raises(ConfigurationError, match="0001_t was changed"):
        asyncio.run(migrate(url, constitutional_hash=CONSTITUTIONAL_HASH, directory=tmp_path))
