"""No record can block shipping: what PostgreSQL refuses, or a damaged line, is quarantined.

Before: an 8 KB principal id (ProgramLimitExceeded on the principal index) failed its
batch forever and nothing after it reached the database; a damaged journal line killed
the shipper thread with an uncaught JSONDecodeError.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psycopg
import pytest
from acgs.adapters.audit_signing import CheckpointSigner
from acgs.adapters.journal import Journal
from acgs.adapters.journal_files import segment_path
from acgs.adapters.pg_audit import Shipper
from acgs.adapters.pg_audit_queries import AuditQueries
from acgs.adapters.projectors import Plan, Statement
from acgs.adapters.projectors.checkpoints import CheckpointProjector
from acgs.domain import events
from acgs.domain.audit import AuditRecord
from acgs.domain.audit_query import ChainReport
from acgs.service_layer.checkpointer import Checkpointer
from psycopg_pool import AsyncConnectionPool

from tests.audit_support import append_all, entry, open_journal

pytestmark = pytest.mark.postgres


def shipped(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute(
            "SELECT seq FROM audit_decisions WHERE instance_id = 'inst-a' ORDER BY seq")]


def quarantine(url: str) -> list[tuple[int, str, bytes, str]]:
    with psycopg.connect(url) as conn:
        return [(r[0], r[1], bytes(r[2]), r[3]) for r in conn.execute(
            "SELECT seq, source, line, reason FROM audit_quarantine "
            "WHERE instance_id = 'inst-a' ORDER BY seq")]


def verify(url: str) -> ChainReport:
    async def go() -> ChainReport:
        async with AsyncConnectionPool(url, min_size=1, max_size=2, open=False) as pool:
            return await AuditQueries(pool=pool, verify_chunk=3).verify_chain("inst-a")

    return asyncio.run(go())


def attesting(j: Journal, pg_url: str, tmp_path: Path, **kw: object) -> Shipper:
    """A shipper wired as the server wires it: before a damaged line of its journal is
    quarantined, a signed checkpoint attesting it is journaled (and shipped like any)."""
    shipper = Shipper(journal=j, conninfo=pg_url, projectors=(CheckpointProjector(),), **kw)  # type: ignore[arg-type]
    checkpointer = Checkpointer(journal=j, signer=CheckpointSigner.development(tmp_path),
                                instance_id=j.instance_id, constitutional_hash="c" * 16,
                                interval_s=0)
    shipper.attest = lambda seqs: asyncio.run(checkpointer.attest(seqs))
    return shipper


def wait_for(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def journal_line(j: Journal, seq: int) -> bytes:
    return segment_path(j.directory, 1).read_bytes().split(b"\n")[seq - 1]


@pytest.mark.parametrize(("principal", "sqlstate"), [
    # 8 KB that does not compress: index row size exceeds the btree maximum
    (os.urandom(4096).hex(), "54000"),
    ("nul\x00inside", "DataError: PostgreSQL text fields cannot contain NUL"),
], ids=["8KB", "NUL"])
def test_a_record_the_database_refuses_is_quarantined_and_the_rest_ship(
        tmp_path: Path, pg_url: str, principal: str, sqlstate: str) -> None:
    j = open_journal(tmp_path)
    append_all(j, [[entry(1)], [entry(2)]])
    append_all(j, [[entry(3, principal=principal)]])  # past the API's bounds: forced
    append_all(j, [[entry(i)] for i in range(4, 8)])
    shipper = Shipper(journal=j, conninfo=pg_url, batch=100)
    assert shipper.ship_once() == 7
    shipper.close()
    assert shipped(pg_url) == [1, 2, 4, 5, 6, 7]
    [(seq, source, line, reason)] = quarantine(pg_url)
    assert (seq, line) == (3, journal_line(j, 3))  # verbatim, as journaled
    assert source.startswith("00000000000000000001.jsonl@")
    assert reason.startswith(f"refused by PostgreSQL: {sqlstate}")
    assert shipper.quarantined_records == 1 and j.backlog_records == 0
    report = verify(pg_url)  # the refused line is intact: verified as a record of the chain
    assert report.ok and report.checked == 7 and report.last_seq == 7
    assert [q.seq for q in report.quarantined] == [3]
    j.close()


def test_several_refused_records_in_a_large_batch_are_found(tmp_path: Path, pg_url: str) -> None:
    j = open_journal(tmp_path)
    bad = {2, 17, 18, 40}
    append_all(j, [[entry(i, principal="x\x00" if i in bad else "p1")] for i in range(1, 41)])
    shipper = Shipper(journal=j, conninfo=pg_url, batch=1000)
    assert shipper.ship_once() == 40
    shipper.close()
    j.close()
    assert shipped(pg_url) == [s for s in range(1, 41) if s not in bad]
    assert [q[0] for q in quarantine(pg_url)] == sorted(bad)
    assert verify(pg_url).ok


def test_a_damaged_line_is_quarantined_by_a_running_shipper(tmp_path: Path, pg_url: str) -> None:
    j = open_journal(tmp_path)
    append_all(j, [[entry(i)] for i in range(1, 6)])
    path = segment_path(j.directory, 1)
    data = bytearray(path.read_bytes())
    start = sum(len(x) + 1 for x in bytes(data).split(b"\n")[:2])  # seq 3
    data[start + 30] ^= 0x01
    path.write_bytes(bytes(data))
    shipper = attesting(j, pg_url, tmp_path, idle_s=0.05)
    shipper.start()
    try:
        wait_for(lambda: j.backlog_records == 0)  # 6: the checkpoint attesting seq 3
        append_all(j, [[entry(7)]])
        wait_for(lambda: shipped(pg_url)[-1:] == [7])
        assert shipper.restarts == 0 and shipper.last_error is None
    finally:
        shipper.stop()
    assert shipped(pg_url) == [1, 2, 4, 5, 6, 7]
    [(seq, source, line, reason)] = quarantine(pg_url)
    assert (seq, source, line) == (3, f"{path.name}@{start}", bytes(data).split(b"\n")[2])
    assert "checksum" in reason
    report = verify(pg_url)
    assert report.ok and [q.seq for q in report.quarantined] == [3]
    j.close()


def test_a_damaged_middle_line_before_a_restart_loses_no_intact_line(
        tmp_path: Path, pg_url: str) -> None:
    j = open_journal(tmp_path)
    append_all(j, [[entry(i)] for i in range(1, 9)])
    j.close()
    path = segment_path(j.directory, 1)
    data = bytearray(path.read_bytes())
    start = sum(len(x) + 1 for x in bytes(data).split(b"\n")[:3])  # seq 4
    data[start + 100] = ord("}")
    path.write_bytes(bytes(data))
    j = open_journal(tmp_path)
    append_all(j, [[entry(9)]])
    shipper = attesting(j, pg_url, tmp_path)
    shipper.ship_once()  # 10: the checkpoint attesting seq 4, journaled before its quarantine
    shipper.close()
    j.close()
    assert shipped(pg_url) == [1, 2, 3, 5, 6, 7, 8, 9]  # every seq once, the damaged one aside
    assert [q[0] for q in quarantine(pg_url)] == [4]
    j = open_journal(tmp_path)  # and again after a restart: no seq is reused
    append_all(j, [[entry(11)]])
    shipper = attesting(j, pg_url, tmp_path)
    shipper.ship_once()
    shipper.close()
    j.close()
    assert shipped(pg_url) == [1, 2, 3, 5, 6, 7, 8, 9, 10, 11]
    assert verify(pg_url).ok


def test_a_forged_quarantine_row_hides_no_deleted_record(tmp_path: Path, pg_url: str) -> None:
    """A database writer deletes a record and files a quarantine row for its seq: no signed
    checkpoint attests it, so VerifyChain reports the record missing (found by an
    attacker's review: the row alone used to be taken on its word)."""
    j = open_journal(tmp_path)
    append_all(j, [[entry(i)] for i in range(1, 6)])
    shipper = Shipper(journal=j, conninfo=pg_url)
    shipper.ship_once()
    shipper.close()
    j.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DELETE FROM audit_decisions WHERE instance_id = 'inst-a' AND seq = 3")
        conn.execute("INSERT INTO audit_quarantine (instance_id, seq, source, line, reason) "
                     "VALUES ('inst-a', 3, 'x@0', 'garbage', 'line checksum mismatch')")
    report = verify(pg_url)
    assert not report.ok and report.broken is not None
    assert (report.broken.reason, report.broken.missing_seq) == ("missing", 3)
    assert any("seq 3" in n and "no signed checkpoint attests it" in n for n in report.notes)


def test_a_refused_escalation_does_not_block_the_records_around_it(
        tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A projector (run in the batch's transaction) can have content refused too."""

    class Divides:
        kinds = frozenset({events.DECISION})

        def project(self, records: Sequence[AuditRecord]) -> Plan:
            # 22012 (division by zero) for seq 2's record, whose latency is 122 µs
            yield Statement("SELECT 1 / (x - 122) FROM unnest(%s::int8[]) AS x",
                            ([r.latency_us for r in records],))

    j = open_journal(tmp_path)
    append_all(j, [[entry(i)] for i in range(1, 5)])
    shipper = Shipper(journal=j, conninfo=pg_url, projectors=(Divides(),))
    shipper.ship_once()
    shipper.close()
    j.close()
    assert shipped(pg_url) == [1, 3, 4]
    assert [(q[0], q[3][:28]) for q in quarantine(pg_url)] == [(2, "refused by PostgreSQL: 22012")]


def test_the_shipper_thread_survives_any_exception(
        tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    j = open_journal(tmp_path)
    append_all(j, [[entry(1)]])
    real = Journal.read_unshipped
    failures = [json.JSONDecodeError("boom", "x", 0)]

    def flaky(self: Journal, n: int) -> object:
        if failures:
            raise failures.pop()
        return real(self, n)

    monkeypatch.setattr(Journal, "read_unshipped", flaky)
    shipper = Shipper(journal=j, conninfo=pg_url, backoff_s=(0.05, 0.1))
    shipper.start()
    try:
        wait_for(lambda: shipped(pg_url) == [1])
        assert shipper.restarts == 1
    finally:
        shipper.stop()
    j.close()


def test_a_shipper_without_progress_says_so(tmp_path: Path) -> None:
    j = open_journal(tmp_path)
    append_all(j, [[entry(1)]])
    shipper = Shipper(journal=j, conninfo="postgresql://postgres@127.0.0.1:1/none",
                      backoff_s=(0.05, 0.1), connect_timeout_s=1, stall_s=0.3)
    shipper.start()
    try:
        wait_for(lambda: shipper.stall_note() is not None)
        note = shipper.stall_note() or ""
        assert "no progress" in note and "1 records waiting" in note and "last error" in note
        assert shipper.stalled_for_s > 0.3 and shipper.restarts >= 1
    finally:
        shipper.stop(timeout_s=5)
    j.close()


def test_a_long_drain_is_progress_not_a_stall(tmp_path: Path, pg_url: str) -> None:
    j = open_journal(tmp_path)
    append_all(j, [[entry(i)] for i in range(1, 11)])
    seen: list[float] = []
    shipper = Shipper(journal=j, conninfo=pg_url, batch=2, stall_s=0.5,
                      on_shipped=lambda n, s: seen.append(shipper.stalled_for_s))
    shipper._progress_at -= 60  # the last round was a minute ago: a stall, until a batch ships
    assert shipper.stall_note() is not None
    shipper.ship_once()  # five batches in one round
    shipper.close()
    j.close()
    assert len(seen) == 5 and all(s < 0.5 for s in seen[:-1])
    assert shipper.stall_note() is None
