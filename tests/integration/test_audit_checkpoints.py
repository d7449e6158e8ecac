"""Signed checkpoints against a real PostgreSQL: what a database writer does, VerifyChain names.

Each attack of issue 14 (tail cut, chain deleted, an edit re-hashed, every row
re-chained after an edit, an unknown instance, a malformed column, a checkpoint
signed by another key) is played on rows the shipper really wrote; the online
verifier (AuditQueries.verify_chain) names it, and the offline verifier, given
an export of the same rows and only the public key, agrees.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from acgs import CONSTITUTIONAL_HASH
from acgs.adapters import pg_event_chain
from acgs.adapters.audit_signing import CheckpointSigner, TrustedKeys
from acgs.adapters.journal import Journal, adopt_orphans
from acgs.adapters.pg_audit import COLUMNS, Shipper
from acgs.adapters.pg_audit_queries import AuditQueries, record_of
from acgs.adapters.pg_event_chain import sealer
from acgs.adapters.projectors import drive_async
from acgs.adapters.projectors.checkpoints import CheckpointProjector
from acgs.domain.audit import (
    ALTERED,
    BAD_SIGNATURE,
    DELETED,
    RECHAINED,
    REORDERED,
    TRUNCATED,
)
from acgs.domain.audit_export import export_line, read_export, verify_export
from acgs.domain.audit_query import ChainReport, DecisionFilter
from acgs.domain.chain_verify import NO_CHECKPOINT
from acgs.domain.model import Effect
from acgs.entrypoints.audit_servicer import AuditServicer
from acgs.entrypoints.callers import AnonymousAuthenticator, CallerResolver
from acgs.entrypoints.grpc_server import GrpcServer
from acgs.errors import ConfigurationError, NotFound
from acgs.service_layer.checkpointer import Checkpointer
from acgs.v1 import audit_pb2 as pb
from acgs.v1 import audit_pb2_grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from psycopg_pool import AsyncConnectionPool

from tests.audit_support import append_all, entry, open_journal

pytestmark = pytest.mark.postgres

SIGNER = CheckpointSigner(private_key=Ed25519PrivateKey.generate())
OTHER = CheckpointSigner(private_key=Ed25519PrivateKey.generate())
TRUST = TrustedKeys(keys=[SIGNER.public_key])
PLAIN = (f"SELECT {', '.join(COLUMNS)} FROM audit_decisions WHERE instance_id = 'inst-a' "
         "ORDER BY seq")


def build(tmp_path: Path, url: str, *, signer: CheckpointSigner = SIGNER,
          sizes: tuple[int, ...] = (5, 5, 4)) -> None:
    """inst-a: ``sizes`` decisions, each run followed by a checkpoint (seq 6, 12, 17)."""
    journal = open_journal(tmp_path)
    checkpointer = Checkpointer(journal=journal, signer=signer, instance_id="inst-a",
                                constitutional_hash=CONSTITUTIONAL_HASH, interval_s=0)

    async def go() -> None:
        for n in sizes:
            for i in range(n):
                await journal.append([entry(i)])
            assert await checkpointer.checkpoint() is not None
        assert await checkpointer.checkpoint() is None  # nothing new: no checkpoint

    asyncio.run(go())
    shipper = Shipper(journal=journal, conninfo=url, projectors=(CheckpointProjector(),))
    shipper.ship_once()
    shipper.close()
    journal.close()


def sql(url: str, statement: str, params: Any = ()) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement, params)


def online(url: str, instance: str = "inst-a", keys: TrustedKeys = TRUST) -> ChainReport:
    async def go() -> ChainReport:
        async with AsyncConnectionPool(url, min_size=1, max_size=2, open=False) as pool:
            return await AuditQueries(pool=pool, keys=keys, verify_chunk=4).verify_chain(instance)

    return asyncio.run(go())


def offline(url: str, tmp_path: Path, keys: TrustedKeys = TRUST) -> ChainReport:
    """Export every chain to a file, as `acgs audit export` does; verify it with no database."""
    async def go() -> list[str]:
        async with AsyncConnectionPool(url, min_size=1, max_size=2, open=False) as pool:
            queries = AuditQueries(pool=pool, keys=keys)
            return [export_line(r) async for r in queries.export(DecisionFilter(), page_size=3)]

    path = tmp_path / "export.jsonl"
    path.write_text("".join(f"{line}\n" for line in asyncio.run(go())))
    with open(path, encoding="utf-8") as f:
        reports = verify_export(read_export(f), keys)
    return next(r for r in reports if r.instance_id == "inst-a")


def verdict(report: ChainReport) -> tuple[bool, int, str, int]:
    b = report.broken
    return (True, report.last_seq, "", 0) if b is None else (False, b.seq, b.reason,
                                                             b.missing_seq)


def both(url: str, tmp_path: Path, keys: TrustedKeys = TRUST) -> ChainReport:
    """The online report, after checking that the offline verifier agrees with it."""
    report = online(url, keys=keys)
    other = offline(url, tmp_path, keys=keys)
    assert verdict(other) == verdict(report)
    assert other.broken == report.broken and other.notes == report.notes
    return report


def rows(url: str) -> list[Any]:
    with psycopg.connect(url) as conn:
        return [record_of(r) for r in conn.execute(PLAIN).fetchall()]  # type: ignore[arg-type]


def store(url: str, records: list[Any]) -> None:
    for r in records:
        sql(url, "UPDATE audit_decisions SET effect = %s, prev_hash = %s, record_hash = %s "
                 "WHERE instance_id = 'inst-a' AND seq = %s",
            (r.effect.value, r.prev_hash, r.record_hash, r.seq))


def test_an_intact_chain_verifies_with_its_checkpoints(tmp_path: Path, pg_url: str) -> None:
    build(tmp_path, pg_url)
    report = both(pg_url, tmp_path)
    assert verdict(report) == (True, 17, "", 0)
    assert (report.checkpoint_seq, report.checkpoint_record_seq) == (16, 17)
    assert report.checkpoints_checked == 3 and report.keys_used == (SIGNER.key_id,)
    assert report.notes == () and SIGNER.key_id in report.trust
    with psycopg.connect(pg_url) as conn:
        kept = conn.execute("SELECT seq FROM audit_checkpoints ORDER BY seq").fetchall()
    assert [r[0] for r in kept] == [6, 12, 17]


def test_a_cut_tail_is_named(tmp_path: Path, pg_url: str) -> None:
    build(tmp_path, pg_url)
    sql(pg_url, "DELETE FROM audit_decisions WHERE instance_id = 'inst-a' AND seq > 10")
    report = both(pg_url, tmp_path)
    assert verdict(report) == (False, 11, TRUNCATED, 11)
    assert report.broken is not None
    assert "chain ends at seq 10, checkpoint signed at seq 16" in report.broken.detail


def test_a_deleted_chain_is_named(tmp_path: Path, pg_url: str) -> None:
    build(tmp_path, pg_url)
    sql(pg_url, "DELETE FROM audit_decisions WHERE instance_id = 'inst-a'")
    report = both(pg_url, tmp_path)
    assert verdict(report) == (False, 1, DELETED, 1)


def test_an_edit_with_a_recomputed_hash_is_named(tmp_path: Path, pg_url: str) -> None:
    build(tmp_path, pg_url)
    records = rows(pg_url)
    edited = replace(records[7], effect=Effect.DENY).sealed(seq=8, prev_hash=records[6].record_hash)
    assert edited.record_hash != records[7].record_hash
    store(pg_url, [edited])
    report = both(pg_url, tmp_path)
    assert verdict(report) == (False, 9, REORDERED, 0)
    assert report.broken is not None and "seq 8 was edited and re-hashed" in report.broken.detail


def rechain_after_an_edit(url: str) -> None:
    """Edit seq 8, then recompute every hash after it, checkpoint records included."""
    records = rows(url)
    prev = records[6].record_hash
    out = []
    for r in records[7:]:
        changed = replace(r, effect=Effect.DENY) if r.seq == 8 else r
        out.append(changed.sealed(seq=r.seq, prev_hash=prev))
        prev = out[-1].record_hash
    store(url, out)


def test_rechaining_every_row_after_an_edit_is_named(tmp_path: Path, pg_url: str) -> None:
    build(tmp_path, pg_url)
    rechain_after_an_edit(pg_url)
    report = both(pg_url, tmp_path)
    assert verdict(report) == (False, 11, RECHAINED, 0)
    assert report.broken is not None and "seq 6..11" in report.broken.detail
    assert report.last_seq == 5  # what the first checkpoint still vouches for
    # The chain's own checkpoint records betray it too, without the table's copies.
    sql(pg_url, "DELETE FROM audit_checkpoints")
    assert verdict(both(pg_url, tmp_path)) == (False, 11, RECHAINED, 0)


def test_an_unknown_instance_is_not_found(tmp_path: Path, pg_url: str) -> None:
    build(tmp_path, pg_url)
    with pytest.raises(NotFound, match="never-was"):
        online(pg_url, instance="never-was")


def test_a_malformed_column_is_named_and_does_not_fail_reads(tmp_path: Path,
                                                             pg_url: str) -> None:
    build(tmp_path, pg_url)
    sql(pg_url, """UPDATE audit_decisions SET violations = '[{"principle": 1}]'
                   WHERE instance_id = 'inst-a' AND seq = 3""")
    sql(pg_url, """UPDATE audit_decisions SET violations = '[{"principle": "p",
                   "severity": "apocalyptic", "message": "m"}]'
                   WHERE instance_id = 'inst-a' AND seq = 4""")
    report = both(pg_url, tmp_path)
    assert verdict(report) == (False, 3, ALTERED, 0)
    assert report.broken is not None and "column violations" in report.broken.detail

    async def listed() -> list[Any]:
        async with AsyncConnectionPool(pg_url, min_size=1, max_size=2, open=False) as pool:
            page = await AuditQueries(pool=pool).list_decisions(DecisionFilter(), page_size=100)
            return page.records

    records = {r.seq: r for r in asyncio.run(listed())}
    assert len(records) == 14  # the decisions: the 3 checkpoints are events, not decisions
    assert "violations" in records[3].malformed and "apocalyptic" in records[4].malformed
    assert records[5].malformed == ""


def test_a_checkpoint_signed_by_another_key_is_named(tmp_path: Path, pg_url: str) -> None:
    build(tmp_path, pg_url, signer=OTHER)
    report = both(pg_url, tmp_path)
    assert verdict(report) == (False, 6, BAD_SIGNATURE, 0)
    assert report.broken is not None and OTHER.key_id in report.broken.detail
    # Without trusted keys configured, the carried key is used and the report says so.
    loose = TrustedKeys(keys=[], self_asserted=True)
    assert verdict(both(pg_url, tmp_path, keys=loose)) == (True, 17, "", 0)
    assert "database writer" in online(pg_url, keys=loose).trust
    # ... but never for the verifying server's own chain, which only its own key signs.
    mine = TrustedKeys(keys=[SIGNER.public_key], self_asserted=True, own_instance="inst-a")
    assert verdict(both(pg_url, tmp_path, keys=mine)) == (False, 6, BAD_SIGNATURE, 0)


def test_a_forged_checkpoint_row_is_named(tmp_path: Path, pg_url: str) -> None:
    build(tmp_path, pg_url)
    # A writer swaps the key of the last checkpoint's copy for one of their own.
    sql(pg_url, "UPDATE audit_checkpoints SET request_json = replace(request_json, "
                f"'{SIGNER.key_id}', '{OTHER.key_id}') WHERE seq = 17")
    report = both(pg_url, tmp_path)
    assert verdict(report) == (False, 17, BAD_SIGNATURE, 0)


def test_a_chain_without_checkpoints_says_what_it_cannot_see(tmp_path: Path,
                                                            pg_url: str) -> None:
    journal = open_journal(tmp_path)
    append_all(journal, [[entry(i)] for i in range(4)])
    shipper = Shipper(journal=journal, conninfo=pg_url, projectors=(CheckpointProjector(),))
    shipper.ship_once()
    shipper.close()
    journal.close()
    sql(pg_url, "DELETE FROM audit_decisions WHERE seq > 2")
    report = both(pg_url, tmp_path)
    assert verdict(report) == (True, 2, "", 0) and report.notes == (NO_CHECKPOINT,)


def dead_server(tmp_path: Path, url: str | None = None) -> None:
    """inst-a: 5 decisions, a checkpoint (seq 6), 5 more (7-11); it ships them itself when
    ``url`` is given; then dies, as after kill -9: no checkpoint covers seq 7-11."""
    dead = open_journal(tmp_path)
    checkpointer = Checkpointer(journal=dead, signer=SIGNER, instance_id="inst-a",
                                constitutional_hash=CONSTITUTIONAL_HASH, interval_s=0)

    async def go() -> None:
        for i in range(5):
            await dead.append([entry(i)])
        await checkpointer.checkpoint()
        for i in range(5):
            await dead.append([entry(10 + i)])

    asyncio.run(go())
    if url is not None:
        shipper = Shipper(journal=dead, conninfo=url, projectors=(CheckpointProjector(),))
        assert shipper.ship_once() == 11
        shipper.close()
    dead.close()


def adopter(tmp_path: Path, url: str, *, seal: bool = True) -> tuple[Shipper, Journal]:
    """inst-b, started on the same host: it adopts inst-a's journal."""
    live = open_journal(tmp_path, instance_id="inst-b")
    shipper = Shipper(journal=live, conninfo=url,
                      orphans=adopt_orphans(tmp_path, exclude="inst-b"),
                      projectors=(CheckpointProjector(),))
    if seal:
        shipper.seal = sealer(SIGNER, signer_id="inst-b", constitutional_hash=CONSTITUTIONAL_HASH)
    return shipper, live


def adopt_and_ship(tmp_path: Path, url: str, *, seal: bool = True) -> None:
    """inst-a dies with seq 7-11 unshipped; inst-b adopts, ships and removes its journal."""
    dead_server(tmp_path)
    shipper, live = adopter(tmp_path, url, seal=seal)
    assert shipper.ship_once() == 11
    shipper.close()
    live.close()
    assert not (tmp_path / "inst-a").exists()


def test_an_adopted_chain_is_sealed_before_its_journal_is_removed(tmp_path: Path,
                                                                pg_url: str) -> None:
    """After kill -9 the dead server's last records were covered by no checkpoint, and
    no later one would come: deleting them went unseen once its journal was removed."""
    adopt_and_ship(tmp_path, pg_url)
    report = both(pg_url, tmp_path)
    assert verdict(report) == (True, 12, "", 0) and report.notes == ()
    assert (report.checkpoint_seq, report.checkpoint_record_seq) == (11, 12)
    with psycopg.connect(pg_url) as conn:
        caller = conn.execute("SELECT caller_id, kind FROM audit_decisions WHERE "
                              "instance_id = 'inst-a' AND seq = 12").fetchone()
    assert caller == ("inst-b", "checkpoint")  # done by the adopting server
    sql(pg_url, "DELETE FROM audit_decisions WHERE instance_id = 'inst-a' AND seq > 8")
    report = both(pg_url, tmp_path)
    assert verdict(report) == (False, 9, TRUNCATED, 9)


def test_an_adopted_chain_unsealed_says_what_it_cannot_see(tmp_path: Path,
                                                          pg_url: str) -> None:
    adopt_and_ship(tmp_path, pg_url, seal=False)
    sql(pg_url, "DELETE FROM audit_decisions WHERE instance_id = 'inst-a' AND seq > 8")
    report = both(pg_url, tmp_path)
    assert verdict(report) == (True, 8, "", 0) and report.notes  # the cut is not seen


def test_a_tail_rechained_in_postgresql_is_not_signed_and_its_journal_is_kept(
        tmp_path: Path, pg_url: str) -> None:
    """The seal signs what the journal holds, never what PostgreSQL holds: a database
    writer edited seq 8 (after the last checkpoint) and re-hashed 8-11; sealing PostgreSQL's
    head would have vouched for the edit and deleted the true copy."""
    dead_server(tmp_path, pg_url)
    rechain_after_an_edit(pg_url)
    shipper, live = adopter(tmp_path, pg_url)
    shipper.ship_once()
    shipper.close()
    live.close()
    assert (tmp_path / "inst-a" / "sealing").exists()  # kept, and never reopened as own
    report = both(pg_url, tmp_path)
    assert report.checkpoint_seq == 5 and report.notes  # nothing vouches for seq 7-11


def test_a_tail_postgresql_lost_keeps_the_journal_that_holds_it(tmp_path: Path,
                                                              pg_url: str) -> None:
    dead_server(tmp_path, pg_url)
    sql(pg_url, "DELETE FROM audit_decisions WHERE instance_id = 'inst-a' AND seq > 8")
    shipper, live = adopter(tmp_path, pg_url)
    shipper.ship_once()
    shipper.close()
    live.close()
    assert (tmp_path / "inst-a").exists()
    assert shipper.kept == [str(tmp_path / "inst-a")] and shipper.kept_journals == 1
    note = shipper.kept_note()
    assert note is not None and "lost or altered" in note  # on /ready, and a gauge


def test_a_crash_after_the_seal_neither_seals_twice_nor_lets_the_id_continue(
        tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """kill -9 between the seal's commit and the journal's removal: PostgreSQL holds the
    seal at seq 12 and the journal (seq 1-11) is still there. A server restarted with the
    dead id would continue at seq 12, and its shipper would fail every round on the seal:
    it refuses to start instead. The next adopter sees the seal and removes the journal."""
    dead_server(tmp_path)
    shipper, live = adopter(tmp_path, pg_url)
    orphan = shipper._journals[1]

    def crash() -> None:
        raise SystemExit("killed")

    monkeypatch.setattr(orphan, "remove", crash)
    with pytest.raises(SystemExit):
        shipper.ship_once()
    shipper.close()
    live.close()
    orphan._release()
    with pytest.raises(ConfigurationError, match="must not continue it"):
        open_journal(tmp_path)  # ACGS_INSTANCE_ID=inst-a again
    shipper, live = adopter(tmp_path, pg_url)
    shipper.ship_once()
    shipper.close()
    live.close()
    assert not (tmp_path / "inst-a").exists()
    report = both(pg_url, tmp_path)
    assert verdict(report) == (True, 12, "", 0) and report.checkpoint_seq == 11


def test_a_seal_that_fails_keeps_the_journal_until_a_round_seals_it(tmp_path: Path,
                                                                    pg_url: str) -> None:
    """PostgreSQL failing during the seal: the round fails (the shipper's loop retries it
    with back-off) and the journal stays; the next round seals and removes it."""
    dead_server(tmp_path)
    shipper, live = adopter(tmp_path, pg_url)
    real = shipper.seal
    assert real is not None
    calls = []

    def flaky(*args: Any) -> bool:
        calls.append(args[1:])
        if len(calls) == 1:
            raise psycopg.OperationalError("server closed the connection")
        return real(*args)

    shipper.seal = flaky
    with pytest.raises(psycopg.OperationalError):
        shipper.ship_once()
    assert (tmp_path / "inst-a").exists()
    shipper.ship_once()
    shipper.close()
    live.close()
    assert not (tmp_path / "inst-a").exists() and len(calls) == 2
    assert verdict(both(pg_url, tmp_path))[:2] == (True, 12)


def test_sealing_twice_adds_nothing(tmp_path: Path, pg_url: str) -> None:
    adopt_and_ship(tmp_path, pg_url)
    with psycopg.connect(pg_url) as conn:
        last_hash = conn.execute("SELECT record_hash FROM audit_decisions WHERE "
                                 "instance_id = 'inst-a' AND seq = 11").fetchone()[0]

    async def go() -> Any:
        async with await psycopg.AsyncConnection.connect(pg_url) as conn, \
                conn.transaction(), conn.cursor() as cur:
            return await drive_async(cur, pg_event_chain.seal(
                SIGNER, chain="inst-a", last_seq=11, last_hash=last_hash, signer_id="inst-b",
                constitutional_hash=CONSTITUTIONAL_HASH))

    assert asyncio.run(go()) == pg_event_chain.SEALED  # the head is its checkpoint already
    assert verdict(both(pg_url, tmp_path))[:2] == (True, 12)


def test_over_grpc_a_malformed_row_is_named_never_internal(tmp_path: Path, pg_url: str) -> None:
    build(tmp_path, pg_url)
    sql(pg_url, """UPDATE audit_decisions SET violations = '"not a list"'
                   WHERE instance_id = 'inst-a' AND seq = 2""")
    asyncio.run(_over_grpc(pg_url))


async def _over_grpc(url: str) -> None:
    async with AsyncConnectionPool(url, min_size=1, max_size=2, open=False) as pool:
        servicer = AuditServicer(reader=AuditQueries(pool=pool, keys=TRUST),
                                 callers=CallerResolver(authenticator=AnonymousAuthenticator(),
                                                        access=None))
        server = GrpcServer(address="127.0.0.1:0", max_message_bytes=1 << 20,
                            services=[(pb.DESCRIPTOR.services_by_name["Audit"], servicer)])
        port = await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = audit_pb2_grpc.AuditStub(channel)
                page = await stub.ListDecisions(pb.ListDecisionsRequest(page_size=100))
                assert [d.seq for d in page.decisions if d.malformed] == [2]
                exported = [r async for r in stub.ExportDecisions(pb.ExportDecisionsRequest())]
                assert len(exported) == 17 + 3  # the chain, then the checkpoints' own copies
                assert [r.seq for r in exported if r.source] == [6, 12, 17]
                one = await stub.GetDecision(pb.GetDecisionRequest(
                    decision_id=page.decisions[1].decision_id))
                assert "column violations" in one.malformed
                report = await stub.VerifyChain(pb.VerifyChainRequest(instance_id="inst-a"))
                assert (report.ok, report.broken_seq, report.reason) == (False, 2, ALTERED)
                chains = await stub.ListChains(pb.ListChainsRequest())
                assert [(c.instance_id, c.records, c.checkpoints) for c in chains.chains] == [
                    ("inst-a", 17, 3)]
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.VerifyChain(pb.VerifyChainRequest(instance_id="never-was"))
                assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        finally:
            await server.stop(1)
