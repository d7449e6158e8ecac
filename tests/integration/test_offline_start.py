"""Start without the database, against a real PostgreSQL: refusal without a snapshot,
an offline start with one, and the watch that migrates (or refuses) the database when it
answers again."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from acgs.adapters.gated_pool import GatedPool
from acgs.adapters.pg_migrations import migrate
from acgs.config import Settings
from acgs.errors import Unavailable
from acgs.lifecycle.database import watching
from acgs.lifecycle.offline import database_watch, prepare_database, snapshot_store
from acgs.lifecycle.supervisor import Supervisor
from psycopg_pool import AsyncConnectionPool, PoolTimeout

pytestmark = pytest.mark.postgres


def _closed_port_url() -> str:
    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"postgresql://postgres@127.0.0.1:{port}/acgs?connect_timeout=2"


def test_nothing_local_and_no_database_refuses_naming_what_is_missing(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    with pytest.raises(Unavailable) as err:
        asyncio.run(prepare_database(settings, _closed_port_url(), snapshot_store(settings)))
    message = str(err.value)
    assert "unreachable" in message and "nothing local to serve from" in message
    assert "policy snapshot" in message and "token snapshot" in message
    assert str(tmp_path / "snapshot") in message


def test_with_a_snapshot_the_start_goes_on_without_the_database(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    snapshots = snapshot_store(settings)
    snapshots.directory.mkdir()
    snapshots.policy_path.write_text("{}")
    with pytest.raises(Unavailable, match="token snapshot"):  # token auth needs both
        asyncio.run(prepare_database(settings, _closed_port_url(), snapshots))
    snapshots.tokens_path.write_text("{}")
    assert asyncio.run(prepare_database(settings, _closed_port_url(), snapshots)) is False
    no_auth = Settings(data_dir=tmp_path, auth="none")
    snapshots.tokens_path.unlink()
    assert asyncio.run(prepare_database(no_auth, _closed_port_url(), snapshots)) is False


def test_a_reachable_database_is_migrated_then_the_deferred_steps_run(
    tmp_path: Path, make_database: Callable[[], str]
) -> None:
    url = make_database()  # empty: the watch migrates it
    settings = Settings(data_dir=tmp_path, database_retry_s=0.05)

    async def run() -> list[str]:
        ran: list[str] = []
        async with AsyncConnectionPool(url, min_size=1, max_size=1, open=False) as pool:
            watch = database_watch(settings, conninfo=url, pool=pool, prepared=False)

            async def step() -> None:
                ran.append("shipper")

            watch.defer([step])
            parts = Supervisor()
            watching(parts, watch)
            await parts.start()
            for _ in range(200):
                if ran and watch.reachable:
                    break
                await asyncio.sleep(0.05)
            await parts.stop()
            assert watch.ready and watch.note() == ""
        return ran

    assert asyncio.run(run()) == ["shipper"]
    assert asyncio.run(migrate(url, constitutional_hash=settings.constitutional_hash)) == []


def test_a_database_of_another_constitution_is_refused_when_it_answers(
    tmp_path: Path, make_database: Callable[[], str]
) -> None:
    url = make_database()
    asyncio.run(migrate(url, constitutional_hash="0123456789abcdef"))
    settings = Settings(data_dir=tmp_path, database_retry_s=0.05)

    async def run() -> tuple[list[str], list[str]]:
        ran: list[str] = []
        refused: list[str] = []
        async with AsyncConnectionPool(url, min_size=1, max_size=1, open=False) as pool:
            watch = database_watch(settings, conninfo=url, pool=pool, prepared=False)

            async def step() -> None:
                ran.append("shipper")

            async def on_refused(reason: str) -> None:
                refused.append(reason)

            watch.on_refused = on_refused
            watch.defer([step])
            parts = Supervisor()
            watching(parts, watch)
            await parts.start()
            for _ in range(200):
                if refused:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            await parts.stop()
            assert not watch.ready and watch.note().startswith("database refused")
        return ran, refused

    ran, refused = asyncio.run(run())
    assert ran == [] and refused and "0123456789abcdef" in refused[0]


def test_a_gated_pool_hands_out_nothing_until_its_gate_opens(pg_url: str) -> None:
    async def run() -> None:
        async with GatedPool(pg_url, min_size=1, max_size=1, open=False, timeout=5) as pool:
            pool.gate = lambda: False
            started = asyncio.get_running_loop().time()
            with pytest.raises(PoolTimeout, match="not yet migrated"):
                async with pool.connection():
                    pass
            assert asyncio.get_running_loop().time() - started < 1  # at once, not after 5 s
            pool.gate = lambda: True
            async with pool.connection() as conn:
                assert await (await conn.execute("SELECT 1")).fetchone() == (1,)

    asyncio.run(run())
