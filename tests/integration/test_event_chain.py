"""Events in PostgreSQL's admin chain, and projections that fail: nothing is lost or skipped.

- An admin event commits with the change it records, or not at all; the chain it
  forms verifies like any journal chain and is tampering-evident the same way.
- A projector that cannot apply an event gets that event's record quarantined with
  the reason, in the transaction that ships the batch; the records around it ship
  and are projected.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import psycopg
import pytest
from acgs.adapters import pg_event_chain
from acgs.adapters.audit_signing import CheckpointSigner, TrustedKeys
from acgs.adapters.pg_audit import COLUMNS, Shipper
from acgs.adapters.pg_audit_queries import AuditQueries, record_of
from acgs.adapters.projectors import Plan, ProjectionError, Statement, typed
from acgs.domain import events
from acgs.domain.audit import GENESIS_HASH, AuditRecord
from acgs.domain.audit_export import export_line, read_export, verify_export
from acgs.domain.audit_query import ChainReport, DecisionFilter
from acgs.domain.model import Caller
from acgs.entrypoints.audit_servicer import record_from_proto, record_to_proto
from acgs.service_layer.ports import EventEntry
from psycopg_pool import AsyncConnectionPool

from tests.audit_support import append_all, entry, open_journal

pytestmark = pytest.mark.postgres

ADMIN = Caller(id="tok-admin", role="admin", identity="alice@example")


def verify(url: str, instance: str) -> ChainReport:
    async def go() -> ChainReport:
        async with AsyncConnectionPool(url, min_size=1, max_size=2, open=False) as pool:
            return await AuditQueries(pool=pool).verify_chain(instance)

    return asyncio.run(go())


def revoked(token: str) -> EventEntry:
    return EventEntry(events.TokenRevoked(token, "ci"), ADMIN)


def test_admin_events_commit_with_their_change_or_not_at_all(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        with conn.transaction(), conn.cursor() as cur:
            first = pg_event_chain.append_sync(cur, [revoked("t1"), revoked("t2")])
        with pytest.raises(RuntimeError), conn.transaction(), conn.cursor() as cur:
            pg_event_chain.append_sync(cur, [revoked("t3")])
            raise RuntimeError("the change failed")  # the event goes with it
        with conn.transaction(), conn.cursor() as cur:
            later = pg_event_chain.append_sync(cur, [revoked("t4")])
        rows = conn.execute("SELECT seq, kind, caller_id, schema, data FROM audit_decisions "
                            "WHERE instance_id = 'admin' ORDER BY seq").fetchall()
    assert [r.seq for r in first + later] == [1, 2, 3]
    assert later[0].prev_hash == first[1].record_hash
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        (1, "token.revoked", "tok-admin", 1), (2, "token.revoked", "tok-admin", 1),
        (3, "token.revoked", "tok-admin", 1)]
    assert [events.decode(r[1], r[4]) for r in rows] == [
        events.TokenRevoked("t1", "ci"), events.TokenRevoked("t2", "ci"),
        events.TokenRevoked("t4", "ci")]
    report = verify(pg_url, "admin")
    assert report.ok and report.checked == 3


def test_an_edited_admin_event_is_named(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        with conn.transaction(), conn.cursor() as cur:
            pg_event_chain.append_sync(cur, [revoked("t1"), revoked("t2")])
        conn.execute("UPDATE audit_decisions SET data = replace(data, 't1', 'tX') "
                     "WHERE instance_id = 'admin' AND seq = 1")
        conn.commit()
    report = verify(pg_url, "admin")
    assert not report.ok and report.broken is not None
    assert report.broken.seq == 1 and report.broken.reason == "altered"


def test_concurrent_admin_appends_form_one_gapless_chain(pg_url: str) -> None:
    async def one(pool: AsyncConnectionPool, n: int) -> None:
        async with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await pg_event_chain.append_async(cur, [revoked(f"t{n}")])

    async def go() -> None:
        async with AsyncConnectionPool(pg_url, min_size=4, max_size=8, open=False) as pool:
            await asyncio.gather(*(one(pool, n) for n in range(20)))

    asyncio.run(go())
    report = verify(pg_url, "admin")
    assert report.ok and report.checked == 20


class RefusesToken:
    """Projects token.revoked events into a scratch table; refuses the token "bad"."""

    kinds = frozenset({events.TOKEN_REVOKED})

    def project(self, records: Sequence[AuditRecord]) -> Plan:
        for record in records:
            event = typed(record)
            assert isinstance(event, events.TokenRevoked)
            if event.token_id == "bad":
                raise ProjectionError(record, "token bad cannot be revoked")
            yield Statement("INSERT INTO scratch_revoked VALUES (%s)", (event.token_id,))


def test_an_event_its_projector_refuses_is_quarantined_and_the_rest_ship(
        tmp_path: Path, pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS scratch_revoked (token text)")
        conn.execute("TRUNCATE scratch_revoked")
    try:
        journal = open_journal(tmp_path)
        append_all(journal, [[entry(1), revoked("a"), revoked("bad"), entry(2), revoked("c")]])
        shipper = Shipper(journal=journal, conninfo=pg_url, projectors=(RefusesToken(),))
        assert shipper.ship_once() == 5
        shipper.close()
        with psycopg.connect(pg_url) as conn:
            shipped = [r[0] for r in conn.execute(
                "SELECT seq FROM audit_decisions WHERE instance_id = 'inst-a' ORDER BY seq")]
            held = conn.execute("SELECT seq, reason FROM audit_quarantine").fetchall()
            projected = [r[0] for r in conn.execute(
                "SELECT token FROM scratch_revoked ORDER BY token")]
        assert shipped == [1, 2, 4, 5]
        assert [h[0] for h in held] == [3]
        assert "projection failed" in held[0][1] and "token bad cannot be revoked" in held[0][1]
        assert projected == ["a", "c"]
        report = verify(pg_url, "inst-a")
        assert report.ok, report  # the quarantined record is verified in its place
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS scratch_revoked")


def test_an_export_of_a_chain_with_a_refused_event_verifies_offline_as_online(
        tmp_path: Path, pg_url: str) -> None:
    """A record quarantined intact (its projector refused it: a superseded escalation
    change, the ALLOW of a superseded approval...) is verified in its place by VerifyChain;
    an export (acgs audit export, then acgs audit verify --export) carries it too, so the
    offline check agrees (it named its seq missing)."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS scratch_revoked (token text)")
        conn.execute("TRUNCATE scratch_revoked")
    try:
        journal = open_journal(tmp_path)
        append_all(journal, [[entry(1), revoked("bad"), entry(2)]])
        shipper = Shipper(journal=journal, conninfo=pg_url, projectors=(RefusesToken(),))
        assert shipper.ship_once() == 3
        shipper.close()
        assert verify(pg_url, "inst-a").ok

        async def exported() -> list[str]:
            async with AsyncConnectionPool(pg_url, min_size=1, max_size=2, open=False) as pool:
                return [export_line(record_from_proto(record_to_proto(r))) async for r in
                        AuditQueries(pool=pool).export(DecisionFilter())]

        lines = asyncio.run(exported())
        keys = TrustedKeys(keys=(), self_asserted=True, source="test")
        reports = verify_export(read_export(lines), keys)
        assert [(r.instance_id, r.ok, r.checked) for r in reports] == [("inst-a", True, 3)], \
            reports
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS scratch_revoked")


def test_a_batch_shipped_again_is_not_projected_again(tmp_path: Path, pg_url: str) -> None:
    seen: list[int] = []

    class Counting:
        kinds = frozenset({events.TOKEN_REVOKED})

        def project(self, records: Sequence[AuditRecord]) -> Plan:
            seen.extend(r.seq for r in records)
            yield from ()

    journal = open_journal(tmp_path)
    append_all(journal, [[revoked("a"), revoked("b")]])
    batch = journal.read_unshipped(10)
    shipper = Shipper(journal=journal, conninfo=pg_url, projectors=(Counting(),))
    with psycopg.connect(pg_url) as conn, conn.transaction(), conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS acgs_audit_stage "
                    "(LIKE audit_decisions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
        shipper._insert(cur, batch.records)  # shipped, but the marker was not advanced
    assert shipper.ship_once() == 0  # sent again: the rows exist, nothing is projected twice
    shipper.close()
    assert seen == [1, 2]


def signed_admin_chain(pg_url: str, tmp_path: Path) -> CheckpointSigner:
    signer = CheckpointSigner.development(tmp_path)

    async def go() -> list[int | None]:
        async with AsyncConnectionPool(pg_url, min_size=1, max_size=2, open=False) as pool:
            signing = pg_event_chain.AdminChainCheckpoints(
                pool=pool, signer=signer, instance_id="srv-1", constitutional_hash="c" * 16)
            done = [await signing.checkpoint_once()]  # nothing to sign yet
            async with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                await pg_event_chain.append_async(cur, [revoked("t1"), revoked("t2")])
            done.append(await signing.checkpoint_once())
            done.append(await signing.checkpoint_once())  # head is a checkpoint: no-op
            async with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                await pg_event_chain.append_async(cur, [revoked("t3")])
            done.append(await signing.checkpoint_once())
            return done

    assert asyncio.run(go()) == [None, 3, None, 5]
    return signer


def verify_signed(url: str, signer: CheckpointSigner) -> ChainReport:
    async def go() -> ChainReport:
        async with AsyncConnectionPool(url, min_size=1, max_size=2, open=False) as pool:
            keys = TrustedKeys(keys=[signer.public_key])
            return await AuditQueries(pool=pool, keys=keys).verify_chain("admin")

    return asyncio.run(go())


def test_servers_sign_the_admin_chain_like_their_own(pg_url: str, tmp_path: Path) -> None:
    signer = signed_admin_chain(pg_url, tmp_path)
    report = verify_signed(pg_url, signer)
    assert report.ok and report.checkpoint_seq == 4 and report.checkpoints_checked == 2
    with psycopg.connect(pg_url) as conn:
        copies = [r[0] for r in conn.execute(
            "SELECT seq FROM audit_checkpoints WHERE instance_id = 'admin' ORDER BY seq")]
    assert copies == [3, 5]


def test_a_rechained_edit_of_an_admin_event_is_named(pg_url: str, tmp_path: Path) -> None:
    signer = signed_admin_chain(pg_url, tmp_path)
    # The attacker edits event 1 and recomputes every hash after it (no key to re-sign).
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM audit_decisions "
                            "WHERE instance_id = 'admin' ORDER BY seq").fetchall()
        records = [record_of(r) for r in rows]
        prev = GENESIS_HASH
        for r in records:
            data = r.data.replace("t1", "tX") if r.seq == 1 else r.data
            fixed = dataclasses.replace(r, data=data).sealed(seq=r.seq, prev_hash=prev)
            prev = fixed.record_hash
            conn.execute("UPDATE audit_decisions SET data = %s, prev_hash = %s, "
                         "record_hash = %s WHERE instance_id = 'admin' AND seq = %s",
                         (fixed.data, fixed.prev_hash, fixed.record_hash, r.seq))
        conn.commit()
    report = verify_signed(pg_url, signer)
    assert not report.ok and report.broken is not None
    assert report.broken.reason == "rechained"


def test_a_cut_tail_of_the_admin_chain_is_named(pg_url: str, tmp_path: Path) -> None:
    signer = signed_admin_chain(pg_url, tmp_path)
    with psycopg.connect(pg_url) as conn:
        conn.execute("DELETE FROM audit_decisions WHERE instance_id = 'admin' AND seq >= 3")
        conn.commit()
    report = verify_signed(pg_url, signer)
    assert not report.ok and report.broken is not None
    assert report.broken.reason == "truncated"
