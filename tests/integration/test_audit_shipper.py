"""The shipper: journal → PostgreSQL exactly once, through outages and restarts."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psycopg
import pytest
from acgs.adapters import journal as journal_module
from acgs.adapters import journal_reader
from acgs.adapters.journal import Journal, adopt_orphans
from acgs.adapters.journal_files import read_marker
from acgs.adapters.pg_audit import ChainConflict, Shipper
from acgs.adapters.projectors import Plan, ProjectionError
from acgs.domain.audit import AuditRecord

from tests.audit_support import append_all, entry, open_journal
from tests.plugins.postgres import TcpProxy

pytestmark = pytest.mark.postgres


class Crash(Exception):
    """The process dies here."""


def rows(url: str) -> list[tuple[str, int]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT instance_id, seq FROM audit_decisions ORDER BY instance_id, seq"
        ).fetchall()


def wait_for(check: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_crash_before_the_marker_still_ships_exactly_once(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    j = open_journal(tmp_path)
    append_all(j, [[entry(i)] for i in range(30)])

    def crash(self: Journal, batch: object, *, save: bool = False) -> None:
        raise Crash

    monkeypatch.setattr(Journal, "mark_shipped", crash)
    shipper = Shipper(journal=j, conninfo=pg_url, batch=100)
    with pytest.raises(Crash):  # the rows are committed, the marker is not moved
        shipper.ship_once()
    shipper.close()
    monkeypatch.undo()
    assert len(rows(pg_url)) == 30
    j.close()
    j = open_journal(tmp_path)  # the restart: the marker never moved
    assert j.backlog_records == 30
    shipper = Shipper(journal=j, conninfo=pg_url, batch=7)
    assert shipper.ship_once() == 0  # every row was already there
    shipper.close()
    assert j.backlog_records == 0 and j.backlog_bytes == 0
    j.close()
    assert rows(pg_url) == [("inst-a", s) for s in range(1, 31)]


def test_a_crash_while_the_marker_file_lags_resends_exactly_once(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_reader, "MARKER_EVERY_S", 3600.0)
    j = open_journal(tmp_path)
    append_all(j, [[entry(i)] for i in range(30)])
    shipper = Shipper(journal=j, conninfo=pg_url, batch=7)
    assert shipper.ship_once() == 30
    shipper.close()
    assert read_marker(j.directory) is None  # shipped, the file not yet written
    shutil.copytree(j.directory, tmp_path / "crashed" / "inst-a")  # the disk at a crash now
    j.close()
    crashed = open_journal(tmp_path / "crashed")
    assert crashed.backlog_records == 30
    shipper = Shipper(journal=crashed, conninfo=pg_url, batch=7)
    assert shipper.ship_once() == 0  # every row was already there
    shipper.close()
    assert crashed.backlog_records == 0
    crashed.close()
    assert rows(pg_url) == [("inst-a", s) for s in range(1, 31)]


def test_an_idle_shipper_brings_the_marker_file_up_to_date(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_reader, "MARKER_EVERY_S", 3600.0)
    j = open_journal(tmp_path)
    shipper = Shipper(journal=j, conninfo=pg_url, idle_s=0.05, gather_s=0.01)
    shipper.start()
    try:
        append_all(j, [[entry(i)] for i in range(10)])
        wait_for(lambda: (m := read_marker(j.directory)) is not None and m.seq == 10)
    finally:
        shipper.stop()
        j.close()


class Refusing:
    """A projector refusing some seqs now, whose verdict may change (an escalation's does)."""

    kinds = frozenset({"decision"})

    def __init__(self, refuse: set[int]) -> None:
        self.refuse = refuse

    def project(self, records: Sequence[AuditRecord]) -> Plan:
        for r in records:
            if r.seq in self.refuse:
                raise ProjectionError(r, "not applicable now")
        return
        yield


def count(url: str, table: str, seq: int) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table} "
                           "WHERE instance_id = 'inst-a' AND seq = %s", (seq,)).fetchone()
    assert row is not None
    return int(row[0])


def test_a_batch_with_quarantined_records_saves_the_marker_at_once(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_reader, "MARKER_EVERY_S", 3600.0)
    j = open_journal(tmp_path)
    append_all(j, [[entry(i)] for i in range(10)])
    projector = Refusing({5})
    shipper = Shipper(journal=j, conninfo=pg_url, projectors=[projector])
    shipper.ship_once()
    shipper.close()
    marker = read_marker(j.directory)
    assert marker is not None and marker.seq == 10
    shutil.copytree(j.directory, tmp_path / "crashed" / "inst-a")  # the disk at a crash now
    j.close()
    projector.refuse = set()  # sent again now, seq 5 would be taken
    crashed = open_journal(tmp_path / "crashed")
    shipper = Shipper(journal=crashed, conninfo=pg_url, projectors=[projector])
    assert shipper.ship_once() == 0
    shipper.close()
    crashed.close()
    assert (count(pg_url, "audit_decisions", 5), count(pg_url, "audit_quarantine", 5)) == (0, 1)


def test_a_crash_inside_remove_leaves_an_exact_marker(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_reader, "MARKER_EVERY_S", 3600.0)
    dead = open_journal(tmp_path, instance_id="dead")
    append_all(dead, [[entry(i)] for i in range(10)])
    dead.close()
    [orphan] = adopt_orphans(tmp_path, exclude="live")
    shipper = Shipper(journal=orphan, conninfo=pg_url)  # as the main journal: not removed
    assert shipper.ship_once() == 10
    shipper.close()

    def crash(directory: Path) -> None:  # after the segments are unlinked
        raise Crash

    monkeypatch.setattr(journal_module, "fsync_dir", crash)
    with pytest.raises(Crash):
        orphan.remove()
    monkeypatch.undo()
    reused = open_journal(tmp_path, instance_id="dead")  # a new server under the same id
    assert reused.last_seq == 10
    append_all(reused, [[entry(11)]])
    shipper = Shipper(journal=reused, conninfo=pg_url)
    assert shipper.ship_once() == 1  # seq 11: no fork
    shipper.close()
    reused.close()


def test_outage_grows_the_backlog_then_drains_it(
    tmp_path: Path, pg_proxy: TcpProxy, pg_url: str
) -> None:
    j = open_journal(tmp_path)
    shipper = Shipper(journal=j, conninfo=pg_proxy.url, batch=50, backoff_s=(0.05, 0.2))
    shipper.start()
    append_all(j, [[entry(i)] for i in range(10)])
    wait_for(lambda: shipper.backlog_records == 0)
    pg_proxy.cut()
    append_all(j, [[entry(i)] for i in range(10, 60)])  # decisions go on
    wait_for(lambda: shipper.last_error is not None)
    assert shipper.backlog_records == 50 and shipper.backlog_bytes > 0
    time.sleep(0.3)
    assert shipper.lag_s > 0.2
    pg_proxy.restore()
    wait_for(lambda: shipper.backlog_records == 0)
    assert shipper.lag_s == 0 and shipper.shipped_records == 60
    shipper.stop()
    j.close()
    assert rows(pg_url) == [("inst-a", s) for s in range(1, 61)]


def test_stop_makes_a_final_attempt(tmp_path: Path, pg_url: str) -> None:
    j = open_journal(tmp_path)
    shipper = Shipper(journal=j, conninfo=pg_url, idle_s=30)
    shipper.start()
    append_all(j, [[entry(1)], [entry(2)]])
    j.close()
    shipper.stop()
    assert len(rows(pg_url)) == 2


def test_an_orphaned_journal_is_shipped_and_removed(tmp_path: Path, pg_url: str) -> None:
    dead = open_journal(tmp_path, instance_id="dead")
    append_all(dead, [[entry(1)], [entry(2)]])
    dead.close()
    live = open_journal(tmp_path, instance_id="live")
    shipper = Shipper(journal=live, conninfo=pg_url,
                      orphans=adopt_orphans(tmp_path, exclude="live"))
    assert shipper.ship_once() == 2
    shipper.close()
    assert not (tmp_path / "dead").exists()
    live.close()
    assert rows(pg_url) == [("dead", 1), ("dead", 2)]


def test_a_reused_instance_id_with_another_chain_is_not_shipped(
    tmp_path: Path, pg_url: str
) -> None:
    first = open_journal(tmp_path / "one")
    append_all(first, [[entry(1)]])
    shipper = Shipper(journal=first, conninfo=pg_url)
    shipper.ship_once()
    shipper.close()
    first.close()
    second = open_journal(tmp_path / "two")  # same instance id, journal lost
    append_all(second, [[entry(2)]])
    shipper = Shipper(journal=second, conninfo=pg_url)
    with pytest.raises(ChainConflict, match="seq 1"):
        shipper.ship_once()
    shipper.close()
    assert second.backlog_records == 1
    second.close()
