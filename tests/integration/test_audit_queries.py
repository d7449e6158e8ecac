"""Reading the trail: get, list with stable paging over instances, export, verify."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from acgs.adapters.pg_audit_queries import AuditQueries, DecisionFilter
from acgs.domain.audit import ALTERED, MISSING, REORDERED, AuditRecord
from acgs.domain.model import Effect
from acgs.errors import InvalidRequest, NotFound
from psycopg_pool import AsyncConnectionPool

from tests.audit_support import BASE_NS, fill

pytestmark = pytest.mark.postgres
T = TypeVar("T")


def with_queries(url: str, fn: Callable[[AuditQueries], Awaitable[T]]) -> T:
    async def go() -> T:
        async with AsyncConnectionPool(url, min_size=1, max_size=2, open=False) as pool:
            return await fn(AuditQueries(pool=pool, max_page=100, verify_chunk=4))

    return asyncio.run(go())


def sql(url: str, statement: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement)  # type: ignore[arg-type]


def verify(url: str, **kw: Any) -> tuple[bool, int, str, int]:
    report = with_queries(url, lambda q: q.verify_chain("inst-a", **kw))
    if report.broken is None:
        return True, report.last_seq, "", 0
    return False, report.broken.seq, report.broken.reason, report.broken.missing_seq


def test_intact_chains_verify(tmp_path: Path, pg_url: str) -> None:
    fill(tmp_path, pg_url)
    assert verify(pg_url) == (True, 20, "", 0)
    assert verify(pg_url, from_seq=5, to_seq=9) == (True, 9, "", 0)
    chains = with_queries(pg_url, lambda q: q.list_chains())
    assert [(c.instance_id, c.first_seq, c.last_seq, c.records) for c in chains] == [
        ("inst-a", 1, 20, 20), ("inst-b", 1, 20, 20)]


def test_an_altered_row_is_named(tmp_path: Path, pg_url: str) -> None:
    fill(tmp_path, pg_url)
    sql(pg_url, "UPDATE audit_decisions SET effect = 'ALLOW' "
                "WHERE instance_id = 'inst-a' AND seq = 9")
    assert verify(pg_url) == (False, 9, ALTERED, 0)


def test_a_deleted_row_is_named_missing(tmp_path: Path, pg_url: str) -> None:
    fill(tmp_path, pg_url)
    sql(pg_url, "DELETE FROM audit_decisions WHERE instance_id = 'inst-a' AND seq = 6")
    assert verify(pg_url) == (False, 7, MISSING, 6)
    assert verify(pg_url, from_seq=7) == (False, 7, MISSING, 6)
    assert verify(pg_url, from_seq=8) == (True, 20, "", 0)


def test_swapped_rows_are_named_at_the_first(tmp_path: Path, pg_url: str) -> None:
    fill(tmp_path, pg_url)
    cols = ("decision_id, decided_at, kind, caller_id, caller_role, request_id, tenant_id, "
            "principal_id, request_json, effect, violations, policy_revision, "
            "constitutional_hash, cached, latency_us, escalation_id, prev_hash, record_hash")
    sets = ", ".join(f"{c} = o.{c}" for c in cols.split(", "))
    sql(pg_url, f"UPDATE audit_decisions d SET {sets} FROM audit_decisions o "
                "WHERE d.instance_id = 'inst-a' AND o.instance_id = 'inst-a' "
                "AND (d.seq, o.seq) IN ((4, 11), (11, 4))")
    assert verify(pg_url) == (False, 4, REORDERED, 0)


def keys(records: list[AuditRecord]) -> list[tuple[int, str, int]]:
    return [(r.decided_at_us, r.instance_id, r.seq) for r in records]


def test_paging_over_two_instances_has_no_gaps_or_repeats(tmp_path: Path, pg_url: str) -> None:
    fill(tmp_path, pg_url)

    async def pages(q: AuditQueries) -> tuple[list[AuditRecord], list[AuditRecord]]:
        seen: list[AuditRecord] = []
        cursor = ""
        while True:
            page = await q.list_decisions(DecisionFilter(), page_size=7, cursor=cursor)
            seen += page.records
            if not page.next_cursor:
                break
            cursor = page.next_cursor
        exported = [r async for r in q.export(DecisionFilter(), page_size=3)]
        return seen, exported

    seen, exported = with_queries(pg_url, pages)
    assert len(seen) == 40 and keys(seen) == sorted(set(keys(seen)))
    assert keys(exported) == keys(seen)


def test_filters(tmp_path: Path, pg_url: str) -> None:
    fill(tmp_path, pg_url)

    def count(**kw: Any) -> int:
        page = with_queries(pg_url, lambda q: q.list_decisions(DecisionFilter(**kw),
                                                               page_size=100))
        return len(page.records)

    assert count(tenant_id="t1") == 20
    assert count(principal_id="p0") == 14
    assert count(effect=Effect.DENY) == 10
    assert count(policy_revision="rev-1", instance_id="inst-b") == 10
    assert count(since_us=BASE_NS // 1000 + 2, until_us=BASE_NS // 1000 + 4) == 8


def test_get_decision_and_bad_arguments(tmp_path: Path, pg_url: str) -> None:
    fill(tmp_path, pg_url, n=2)
    first = with_queries(pg_url, lambda q: q.list_decisions(DecisionFilter(), page_size=1))
    wanted = first.records[0]
    got = with_queries(pg_url, lambda q: q.get_decision(wanted.decision_id))
    assert got == wanted and got.computed_hash() == got.record_hash
    with pytest.raises(NotFound):
        with_queries(pg_url, lambda q: q.get_decision("00000000-0000-7000-8000-000000000000"))
    with pytest.raises(InvalidRequest):
        with_queries(pg_url, lambda q: q.get_decision("nope"))
    with pytest.raises(InvalidRequest, match="cursor"):
        with_queries(pg_url, lambda q: q.list_decisions(DecisionFilter(), cursor="!!"))
    with pytest.raises(InvalidRequest, match="from_seq"):
        with_queries(pg_url, lambda q: q.verify_chain("inst-a", from_seq=0))
