"""Token changes leave a trace: each creation and revocation is an event on the admin chain,
committed with the change or not at all, naming who did it and never the secret."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
from acgs.adapters.pg_audit_queries import AuditQueries
from acgs.adapters.pg_tokens import PgTokenStore
from acgs.domain import events
from acgs.domain import tokens as tk
from acgs.domain.model import Caller
from acgs.lifecycle.callers import ensure_dev_tokens
from psycopg_pool import AsyncConnectionPool

pytestmark = pytest.mark.postgres
T = TypeVar("T")
ALICE = Caller(id="alice@host-1", role="admin")


def with_store(url: str, fn: Callable[[PgTokenStore], Awaitable[T]]) -> T:
    async def go() -> T:
        async with AsyncConnectionPool(url, min_size=1, max_size=2, open=False) as pool:
            return await fn(PgTokenStore(pool=pool))

    return asyncio.run(go())


def admin_events(url: str) -> list[tuple[int, str, str, str, int, str]]:
    with psycopg.connect(url) as conn:
        return [tuple(r) for r in conn.execute(  # type: ignore[misc]
            "SELECT seq, kind, caller_id, caller_role, schema, data FROM audit_decisions "
            "WHERE instance_id = 'admin' ORDER BY seq")]


def chain_ok(url: str) -> int:
    async def go() -> int:
        async with AsyncConnectionPool(url, min_size=1, max_size=2, open=False) as pool:
            report = await AuditQueries(pool=pool).verify_chain("admin")
        assert report.ok, report
        return report.checked

    return asyncio.run(go())


def test_a_created_and_revoked_token_are_events_with_their_actor(pg_url: str) -> None:
    until = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    issued = tk.issue(role=tk.AUDITOR, name="ci auditor", created_by="alice", expires_at=until,
                      identity="carol@corp")
    r = issued.record

    async def scenario(store: PgTokenStore) -> tuple[bool, bool, bool, bool]:
        return (await store.insert(r, actor=ALICE), await store.insert(r, actor=ALICE),
                await store.revoke(r.id, actor=ALICE), await store.revoke(r.id, actor=ALICE))

    # A second insert of the same id and a second revocation change nothing: no event.
    assert with_store(pg_url, scenario) == (True, False, True, False)
    rows = admin_events(pg_url)
    assert [row[:5] for row in rows] == [(1, events.TOKEN_CREATED, ALICE.id, "admin", 1),
                                         (2, events.TOKEN_REVOKED, ALICE.id, "admin", 1)]
    created, revoked = (events.decode(row[1], row[5]) for row in rows)
    assert created == events.TokenCreated(r.id, "ci auditor", tk.AUDITOR, "carol@corp", until)
    assert revoked == events.TokenRevoked(r.id, "ci auditor")
    with psycopg.connect(pg_url) as conn:
        stored = conn.execute("SELECT * FROM audit_decisions WHERE instance_id = 'admin'"
                              ).fetchall()
    secret = issued.token.partition(".")[2]
    for row in stored:  # no column of any event holds the secret or its hash
        text = " ".join(str(v) for v in row)
        assert secret not in text and r.secret_hash not in text and issued.token not in text
    assert chain_ok(pg_url) == 2


def test_revoking_an_unknown_token_records_nothing(pg_url: str) -> None:
    assert not with_store(pg_url, lambda s: s.revoke("acgs_0123456789abcdef", actor=ALICE))
    assert admin_events(pg_url) == []


def test_a_failed_insert_records_nothing(pg_url: str) -> None:
    bad = replace(tk.issue(role=tk.AGENT, name="x", created_by="t").record, secret_hash="zz")
    with pytest.raises(psycopg.errors.CheckViolation):
        with_store(pg_url, lambda s: s.insert(bad, actor=ALICE))
    assert admin_events(pg_url) == []


def test_an_event_that_cannot_be_recorded_takes_the_token_with_it(pg_url: str) -> None:
    """The change and its event commit together: a refused event leaves no token."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION refuse_admin() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN RAISE EXCEPTION 'admin chain refused'; END $$")
        conn.execute("CREATE TRIGGER refuse_admin BEFORE INSERT ON audit_decisions "
                      "FOR EACH ROW EXECUTE FUNCTION refuse_admin()")
    issued = tk.issue(role=tk.AGENT, name="never", created_by="t")
    try:
        with pytest.raises(psycopg.errors.RaiseException):
            with_store(pg_url, lambda s: s.insert(issued.record, actor=ALICE))
        live = tk.issue(role=tk.AGENT, name="kept", created_by="t")
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("INSERT INTO auth_tokens (id, name, role, secret_hash, created_by) "
                         "VALUES (%s, 'kept', 'agent', %s, 't')",
                         (live.record.id, live.record.secret_hash))
        with pytest.raises(psycopg.errors.RaiseException):
            with_store(pg_url, lambda s: s.revoke(live.record.id, actor=ALICE))
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("DROP TRIGGER refuse_admin ON audit_decisions")
            conn.execute("DROP FUNCTION refuse_admin()")
    with psycopg.connect(pg_url) as conn:
        tokens = conn.execute("SELECT id, revoked_at FROM auth_tokens WHERE id IN (%s, %s)",
                              (issued.record.id, live.record.id)).fetchall()
    assert tokens == [(live.record.id, None)]  # the new one gone, the revocation undone
    assert admin_events(pg_url) == []


def test_development_tokens_are_created_by_the_server(tmp_path: Path, pg_url: str) -> None:
    server = Caller(id="acgs-server:inst-a", role="system")
    issued = with_store(pg_url, lambda s: ensure_dev_tokens(
        tmp_path / "dev-tokens", store=s, created_by="dev-bootstrap inst-a", known={},
        actor=server))
    assert issued
    rows = admin_events(pg_url)
    assert {(row[1], row[2], row[3]) for row in rows} == {
        (events.TOKEN_CREATED, "acgs-server:inst-a", "system")}
    roles = sorted(e.role for e in (events.decode(row[1], row[5]) for row in rows)
                   if isinstance(e, events.TokenCreated))
    assert roles == sorted(tk.ROLES)
    assert chain_ok(pg_url) == len(tk.ROLES)
