"""The shipper's projections (idempotency, then the escalation projector) on a real PostgreSQL,
with two servers' journals.

Each "server" is a DecisionService writing its own journal; shipping is done by hand, so
the order in which records reach PostgreSQL is the test's to choose: the original first,
the retry first, a batch sent twice (a crash between commit and marker), records shipped
one per batch. Retries are linked, escalations merged and counted, exactly once.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from acgs import CONSTITUTIONAL_HASH
from acgs.adapters.journal import Journal
from acgs.adapters.pg_audit import Shipper
from acgs.adapters.pg_escalations import PgEscalationStore
from acgs.adapters.pg_notify import PgBell
from acgs.adapters.projectors.registry import projectors
from acgs.domain.escalation import Verdict
from acgs.domain.model import Caller, Decision, DecisionRequest
from acgs.metrics import NullTelemetry
from acgs.service_layer.decisions import DecisionService
from acgs.service_layer.escalations import EscalationService
from acgs.service_layer.escalator import JournalEscalator
from acgs.service_layer.idempotency import IdempotencyMap
from psycopg_pool import AsyncConnectionPool

from tests.audit_support import open_journal
from tests.client import HASH, allow_input
from tests.fakes import FakeEngine

pytestmark = pytest.mark.postgres

AGENT = Caller(id="acgs_00000000000000a1", role="agent")
ADMIN = Caller(id="acgs_00000000000000b1", role="admin")
TRANSFER = allow_input(action={"type": "fund_transfer", "attributes": {}})
CROSS = allow_input(tenant_id="t2")
PROJECTORS = projectors(idempotency_window_s=600, group_s=300)


@dataclass
class Server:
    journal: Journal
    service: DecisionService
    url: str
    escalator: JournalEscalator

    async def decide(self, doc: dict[str, Any], rid: str = "") -> Decision:
        return await self.service.decide(DecisionRequest(HASH, rid, doc), AGENT)

    def ship(self, *, batch: int = 1000, journal: Journal | None = None) -> None:
        shipper = Shipper(journal=journal or self.journal, conninfo=self.url, batch=batch,
                          projectors=PROJECTORS)
        try:
            shipper.ship_once()
        finally:
            shipper.close()


@asynccontextmanager
async def fleet(tmp_path: Path, url: str) -> AsyncIterator[tuple[Server, Server,
                                                                  PgEscalationStore]]:
    async with AsyncConnectionPool(url, min_size=1, max_size=2, open=False,
                                   kwargs={"autocommit": True}) as pool:
        store = PgEscalationStore(pool=pool)
        servers = []
        for name in ("inst-a", "inst-b"):
            journal = open_journal(tmp_path, instance_id=name)
            escalator = JournalEscalator(journal=journal, store=store, telemetry=NullTelemetry(),
                                         instance_id=name, constitutional_hash=CONSTITUTIONAL_HASH,
                                         group_window_s=300)
            service = DecisionService(
                engine=FakeEngine(), cache=None, audit=journal, escalator=escalator,
                telemetry=NullTelemetry(), constitutional_hash=CONSTITUTIONAL_HASH,
                eval_timeout_s=1.0,
                idempotency=IdempotencyMap(window_s=600, max_entries=100, clock=lambda: 0.0))
            servers.append(Server(journal, service, url, escalator))
        try:
            yield servers[0], servers[1], store
        finally:
            for s in servers:
                s.journal.close()


def query(url: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.mark.parametrize("original_first", [True, False])
def test_a_retry_on_another_server_is_linked_with_one_escalation(
        tmp_path: Path, pg_url: str, original_first: bool) -> None:
    async def body() -> None:
        async with fleet(tmp_path, pg_url) as (a, b, store):
            first = await a.decide(TRANSFER, "k-1")
            retry = await b.decide(TRANSFER, "k-1")
            assert first.decision_id != retry.decision_id
            for server in (a, b) if original_first else (b, a):
                await asyncio.to_thread(server.ship, batch=1)  # one record per batch
            seen, linked = (first, retry) if original_first else (retry, first)
            assert query(pg_url, "SELECT decision_id::text, retry_of::text "
                         "FROM decision_retries") == [(linked.decision_id, seen.decision_id)]
            assert query(pg_url, "SELECT id::text, count FROM escalations") == [
                (seen.escalation_id, 1)]
            for eid in (first.escalation_id, retry.escalation_id):
                assert (await store.get(eid))[0].id == seen.escalation_id
            assert query(pg_url, "SELECT count(*) FROM audit_decisions WHERE kind = 'decision'"
                         ) == [(2,)]

    asyncio.run(body())


def test_another_body_under_the_key_is_not_a_retry(tmp_path: Path, pg_url: str) -> None:
    async def body() -> None:
        async with fleet(tmp_path, pg_url) as (a, b, _):
            await a.decide(TRANSFER, "k-2")
            await b.decide(dict(TRANSFER, context={"amount": 3}), "k-2")
            await asyncio.to_thread(a.ship)
            await asyncio.to_thread(b.ship)
            assert query(pg_url, "SELECT count(*) FROM decision_retries") == [(0,)]
            # Not a retry: both count (in one escalation: they are one group).
            assert query(pg_url, "SELECT count(*), sum(count) FROM escalations") == [(1, 2)]

    asyncio.run(body())


def test_groups_merge_across_servers_and_count_once_when_a_batch_is_resent(
        tmp_path: Path, pg_url: str) -> None:
    async def body() -> None:
        async with fleet(tmp_path, pg_url) as (a, b, store):
            on_a = [await a.decide(CROSS) for _ in range(3)]
            on_b = [await b.decide(CROSS) for _ in range(2)]
            assert len({d.escalation_id for d in on_a}) == 1
            assert len({d.escalation_id for d in on_b}) == 1
            # A copy of b's journal, unshipped: what a crash between commit and marker leaves.
            copy_dir = tmp_path / "copy"
            shutil.copytree(b.journal.directory, copy_dir / "inst-b")
            await asyncio.to_thread(a.ship)
            await asyncio.to_thread(b.ship)
            again = open_journal(copy_dir, instance_id="inst-b")
            try:
                await asyncio.to_thread(b.ship, journal=again)
            finally:
                again.close()
            assert query(pg_url, "SELECT id::text, count FROM escalations") == [
                (on_a[0].escalation_id, 5)]
            merged, _ = await store.get(on_b[0].escalation_id)
            assert (merged.id, merged.count) == (on_a[0].escalation_id, 5)
            assert merged.last_seen_at is not None and merged.last_seen_at >= merged.created_at

    asyncio.run(body())


def test_a_group_resolved_on_another_server_takes_no_more_decisions(
        tmp_path: Path, pg_url: str) -> None:
    async def body() -> None:
        async with fleet(tmp_path, pg_url) as (a, b, store):
            other = EscalationService(store=store, audit=b.journal, bell=PgBell(conninfo=pg_url),
                                      telemetry=NullTelemetry(), instance_id="inst-b",
                                      constitutional_hash=CONSTITUTIONAL_HASH)
            _, cursor = await other.closed_since(None)
            first = await a.decide(CROSS)
            assert (await a.decide(CROSS)).escalation_id == first.escalation_id
            await asyncio.to_thread(a.ship)
            await other.resolve(first.escalation_id, ADMIN, verdict=Verdict.DENY)
            closed, _ = await other.closed_since(cursor)  # what a's sweeper does
            assert first.escalation_id in closed
            a.escalator.closed_elsewhere(closed)
            assert (await a.decide(CROSS)).escalation_id != first.escalation_id

    asyncio.run(body())
