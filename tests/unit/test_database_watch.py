"""The database watch: retries the migration while the database is unreachable, then runs
the deferred start steps (each retried while unreachable), refuses a database of another
constitution, and reports reachability afterwards."""

from __future__ import annotations

import asyncio

from acgs.errors import ConstitutionMismatch, PolicyError, Unavailable
from acgs.lifecycle.database import watching
from acgs.lifecycle.supervisor import Supervisor
from acgs.service_layer.database_watch import DatabaseWatch


class Db:
    def __init__(self) -> None:
        self.up = False
        self.mismatch = False
        self.prepared = 0

    async def prepare(self) -> None:
        if not self.up:
            raise Unavailable("connection refused")
        if self.mismatch:
            raise ConstitutionMismatch(expected="cdd01ef066bc6cf2", got="other", what="database")
        self.prepared += 1

    async def probe(self) -> None:
        if not self.up:
            raise Unavailable("connection refused")


async def _until(check: object, timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def _watch(db: Db, *, prepared: bool = False) -> DatabaseWatch:
    return DatabaseWatch(prepare=db.prepare, probe=db.probe, prepared=prepared, retry_s=0.02,
                         unreachable=(Unavailable,))


def test_deferred_steps_run_in_order_once_the_database_returns() -> None:
    async def run() -> None:
        db, ran = Db(), []
        watch = _watch(db)
        flaky = {"left": 2}

        async def shipper() -> None:
            ran.append("shipper")

        async def policy() -> None:  # the database drops again once: retried, not skipped
            if flaky["left"]:
                flaky["left"] -= 1
                raise Unavailable("gone again")
            ran.append("policy")

        async def broken() -> None:
            raise PolicyError("desired version does not compile")

        async def sweeper() -> None:
            ran.append("sweeper")

        watch.defer([shipper, policy, broken, sweeper])
        parts = Supervisor()
        watching(parts, watch)
        await parts.start()
        await asyncio.sleep(0.1)
        assert ran == [] and not watch.ready and not watch.reachable
        assert "database unreachable" in watch.note()
        db.up = True
        await _until(lambda: ran == ["shipper", "policy", "sweeper"])
        assert watch.ready and watch.reachable and watch.note() == "" and db.prepared == 1
        db.up = False
        await _until(lambda: not watch.reachable)
        db.up = True
        await _until(lambda: watch.reachable)
        assert db.prepared == 1  # migrated once per process
        await parts.stop()

    asyncio.run(run())


def test_a_database_of_another_constitution_is_refused_and_never_used() -> None:
    async def run() -> None:
        db, ran, refused = Db(), [], []
        watch = _watch(db)

        async def shipper() -> None:
            ran.append("shipper")

        async def on_refused(reason: str) -> None:
            refused.append(reason)

        watch.on_refused = on_refused
        watch.defer([shipper])
        db.up, db.mismatch = True, True
        parts = Supervisor()
        watching(parts, watch)
        await parts.start()
        await _until(lambda: refused)
        await asyncio.sleep(0.1)
        assert ran == [] and not watch.ready
        assert "database refused" in watch.note() and "other" in refused[0]
        await parts.stop()

    asyncio.run(run())


def test_a_prepared_database_only_probes() -> None:
    async def run() -> None:
        db = Db()
        db.up = True
        watch = _watch(db, prepared=True)
        parts = Supervisor()
        watching(parts, watch)
        await parts.start()
        await asyncio.sleep(0.1)
        assert db.prepared == 0 and watch.reachable
        await parts.stop()

    asyncio.run(run())
