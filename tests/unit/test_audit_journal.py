"""The local journal: durable group commit, line checks and recovery, the backlog bound."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
from pathlib import Path

import pytest
from acgs.adapters import journal as journal_module
from acgs.adapters import journal_reader
from acgs.adapters.journal import Journal, adopt_orphans
from acgs.adapters.journal_files import (
    list_segments,
    read_marker,
    segment_path,
    verify_directory,
)
from acgs.adapters.journal_lines import DamagedLine, checksummed, parse_line
from acgs.domain.audit import GENESIS_HASH, AuditRecord, ChainChecker
from acgs.errors import AuditUnavailable, ConfigurationError

from tests.audit_support import append_all, entry, open_journal


def records_on_disk(directory: Path) -> list[AuditRecord]:
    out = []
    for first in list_segments(directory):
        data = segment_path(directory, first).read_bytes()
        out += [parse_line(line) for line in data.splitlines()]
    return out


def assert_chain(records: list[AuditRecord]) -> None:
    checker = ChainChecker(expect_seq=records[0].seq,
                           prev_hash=GENESIS_HASH if records[0].seq == 1 else records[0].prev_hash)
    for r in records:
        assert checker.feed(r) is None


def test_appends_are_chained_masked_and_in_order(tmp_path: Path) -> None:
    j = open_journal(tmp_path, mask_fields=["principal.attributes.ssn"])
    append_all(j, [[entry(i)] for i in range(20)] + [[entry(100), entry(101)]])
    j.close()
    records = records_on_disk(j.directory)
    assert [r.seq for r in records] == list(range(1, 23))
    assert_chain(records)
    assert all("123-45-6789" not in r.request_json for r in records)
    assert {(r.tenant_id, r.principal_id, r.instance_id) for r in records} == {
        ("t1", "p1", "inst-a")}


def test_concurrent_appends_share_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = os.fdatasync
    monkeypatch.setattr(journal_module.os, "fdatasync", lambda fd: (calls.append(fd), real(fd)))
    j = open_journal(tmp_path)
    append_all(j, [[entry(i)] for i in range(64)])
    j.close()
    assert j.last_seq == 64 and 1 <= len(calls) < 64


def test_reopening_continues_the_chain(tmp_path: Path) -> None:
    j = open_journal(tmp_path)
    append_all(j, [[entry(1)], [entry(2)]])
    j.close()
    j = open_journal(tmp_path)
    assert j.last_seq == 2
    append_all(j, [[entry(3)]])
    j.close()
    assert_chain(records_on_disk(j.directory))


@pytest.mark.parametrize("damage", ["torn", "garbage", "altered"])
def test_a_damaged_tail_keeps_its_seq_and_is_never_reused(tmp_path: Path, damage: str) -> None:
    j = open_journal(tmp_path)
    append_all(j, [[entry(i)] for i in range(5)])
    j.close()
    path = segment_path(j.directory, list_segments(j.directory)[-1])
    data = path.read_bytes()
    lines = data.split(b"\n")
    if damage == "torn":  # the last record only half written
        path.write_bytes(data[: len(data) - len(lines[-2]) // 2 - 1])
    elif damage == "garbage":  # zeros where a crash left unwritten pages
        path.write_bytes(data + b"\0" * 4096)
    else:  # a complete line whose content no longer matches its checksum
        path.write_bytes(data.replace(b'"latency_us":124', b'"latency_us":999'))
    j = open_journal(tmp_path)
    damaged_seq = 6 if damage == "garbage" else 5  # the damaged line holds its seq
    assert j.last_seq == damaged_seq
    append_all(j, [[entry(9)]])
    batch = j.read_unshipped(100)
    j.close()
    assert [d.seq for d in batch.damaged] == [damaged_seq]
    assert [r.seq for r in batch.records] == [s for s in range(1, damaged_seq + 2)
                                              if s != damaged_seq]
    assert batch.damaged[0].source.startswith(path.name + "@")
    checker = ChainChecker(quarantined=frozenset({damaged_seq}))
    assert all(checker.feed(r) is None for r in batch.records)
    assert checker.passed_quarantined == [damaged_seq]


def damage_byte(path: Path, line_no: int) -> bytes:
    """Overwrite one byte in the middle of line ``line_no`` (0-based); that line's bytes."""
    data = bytearray(path.read_bytes())
    start = sum(len(x) + 1 for x in bytes(data).split(b"\n")[:line_no])
    data[start + 40] = ord("#") if data[start + 40] != ord("#") else ord("%")
    path.write_bytes(bytes(data))
    return bytes(data).split(b"\n")[line_no]


def test_a_damaged_middle_line_is_named_and_the_intact_lines_after_it_are_kept(
        tmp_path: Path) -> None:
    j = open_journal(tmp_path)
    append_all(j, [[entry(i)] for i in range(6)])
    j.close()
    path = segment_path(j.directory, 1)
    bad = damage_byte(path, 2)  # seq 3
    j = open_journal(tmp_path)
    assert j.last_seq == 6  # nothing cut
    append_all(j, [[entry(7)]])
    batch = j.read_unshipped(100)
    assert [r.seq for r in batch.records] == [1, 2, 4, 5, 6, 7]
    assert [(d.seq, d.line) for d in batch.damaged] == [(3, bad)]
    j.mark_shipped(batch)
    j.close()
    j = open_journal(tmp_path)  # after the marker passed a damaged line: no seq reused
    append_all(j, [[entry(8)]])
    assert [r.seq for r in j.read_unshipped(100).records] == [8]
    j.close()


def test_a_line_damaged_under_a_running_reader_is_reported_not_raised(tmp_path: Path) -> None:
    j = open_journal(tmp_path)
    append_all(j, [[entry(i)] for i in range(4)])
    damage_byte(segment_path(j.directory, 1), 1)
    batch = j.read_unshipped(100)
    assert [r.seq for r in batch.records] == [1, 3, 4] and [d.seq for d in batch.damaged] == [2]
    assert "checksum" in batch.damaged[0].reason
    j.close()


def test_lines_written_before_checksums_are_checked_by_their_hash(tmp_path: Path) -> None:
    j = open_journal(tmp_path)
    append_all(j, [[entry(i)] for i in range(3)])
    j.close()
    path = segment_path(j.directory, 1)
    legacy = [AuditRecord.from_json(x).to_json().encode() for x in path.read_bytes().splitlines()]
    assert all(b"line_crc" not in x for x in legacy)
    legacy[1] = legacy[1].replace(b'"latency_us":121', b'"latency_us":999')
    path.write_bytes(b"\n".join(legacy) + b"\n")
    assert parse_line(legacy[0]).seq == 1
    with pytest.raises(DamagedLine, match="record_hash"):
        parse_line(legacy[1])
    j = open_journal(tmp_path)
    batch = j.read_unshipped(100)
    assert [r.seq for r in batch.records] == [1, 3] and [d.seq for d in batch.damaged] == [2]
    j.close()


def test_a_checksummed_line_is_plain_json(tmp_path: Path) -> None:
    j = open_journal(tmp_path)
    append_all(j, [[entry(1)]])
    j.close()
    line = segment_path(j.directory, 1).read_bytes().rstrip(b"\n")
    assert len(json.loads(line)["line_crc"]) == 8
    assert parse_line(line) == AuditRecord.from_json(line)
    assert checksummed(AuditRecord.from_json(line).to_json().encode()) == line


def test_the_backlog_bound_refuses_then_recovers(tmp_path: Path) -> None:
    j = open_journal(tmp_path, max_unshipped_bytes=8000)
    append_all(j, [[entry(i)] for i in range(8)])
    with pytest.raises(AuditUnavailable, match="bound of 8000 bytes"):
        append_all(j, [[entry(i) for i in range(8)]])
    assert j.last_seq == 8 and j.backlog_bytes <= 8000  # nothing of the refused batch is kept
    j.mark_shipped(j.read_unshipped(100))
    assert j.backlog_bytes == 0 and j.backlog_records == 0
    append_all(j, [[entry(99)]])
    j.close()


def test_rotation_marker_and_deletion_of_shipped_segments(tmp_path: Path) -> None:
    j = open_journal(tmp_path, segment_bytes=2000)
    for i in range(10):
        append_all(j, [[entry(i)]])
    assert len(list_segments(j.directory)) >= 3
    batch = j.read_unshipped(6)
    assert [r.seq for r in batch.records] == [1, 2, 3, 4, 5, 6]
    j.mark_shipped(batch)
    assert min(list_segments(j.directory)) > 1
    j.close()
    j = open_journal(tmp_path, segment_bytes=2000)
    assert (j.shipped_seq, j.backlog_records) == (6, 4)
    assert [r.seq for r in j.read_unshipped(100).records] == [7, 8, 9, 10]
    j.close()


def test_a_failed_write_refuses_this_and_later_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    j = open_journal(tmp_path)
    append_all(j, [[entry(1)]])

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal_module.os, "write", full)
    with pytest.raises(AuditUnavailable, match="No space left"):
        append_all(j, [[entry(2)]])
    monkeypatch.undo()
    with pytest.raises(AuditUnavailable, match="failed"):
        append_all(j, [[entry(3)]])
    j.close()
    assert [r.seq for r in records_on_disk(j.directory)] == [1]


def test_interval_mode_ships_only_synced_records(tmp_path: Path) -> None:
    j = open_journal(tmp_path, fsync_interval_ms=200)
    append_all(j, [[entry(1)]])
    assert j.read_unshipped(10).records == []  # written, not yet fsynced
    assert j.wait_for_data(2.0)
    assert [r.seq for r in j.read_unshipped(10).records] == [1]
    j.close()


def test_orphans_are_adopted_but_live_journals_are_not(tmp_path: Path) -> None:
    dead = open_journal(tmp_path, instance_id="dead")
    append_all(dead, [[entry(1)]])
    dead.close()
    live = open_journal(tmp_path, instance_id="live")
    orphans = adopt_orphans(tmp_path, exclude="me")
    assert [o.instance_id for o in orphans] == ["dead"]
    with pytest.raises(AuditUnavailable):
        append_all(orphans[0], [[entry(2)]])
    orphans[0].mark_shipped(orphans[0].read_unshipped(10))
    orphans[0].remove()
    assert not (tmp_path / "dead").exists()
    with pytest.raises(ConfigurationError, match="owned by another live process"):
        open_journal(tmp_path, instance_id="live")
    live.close()


def test_unsafe_instance_ids_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        Journal(directory=tmp_path, instance_id="../etc")


def test_the_admin_chain_s_name_is_no_instance_id(tmp_path: Path) -> None:
    """"admin" names PostgreSQL's chain of admin events (acgs.adapters.pg_event_chain): a
    journal of that name would ship records onto that chain's seqs, and the shipper then
    refuses every batch as a chain conflict (or the admin chain goes on after the server's
    records). Such a server is refused at start, and such a directory is never adopted."""
    with pytest.raises(ConfigurationError, match="'admin' names the chain of admin events"):
        Journal(directory=tmp_path / "admin", instance_id="admin")
    (tmp_path / "admin").mkdir()
    assert adopt_orphans(tmp_path, exclude="me") == []


def test_a_cancelled_caller_does_not_lose_its_record(tmp_path: Path) -> None:
    j = open_journal(tmp_path)

    async def go() -> None:
        task = asyncio.ensure_future(j.append([entry(1)]))
        await asyncio.sleep(0)
        task.cancel()
        await j.append([entry(2)])

    asyncio.run(go())
    j.close()
    assert [r.seq for r in records_on_disk(j.directory)] == [1, 2]


def test_verify_directory_checks_a_journal_offline(tmp_path: Path) -> None:
    j = open_journal(tmp_path, segment_bytes=2000)
    for i in range(6):
        append_all(j, [[entry(i)]])
    j.close()
    assert verify_directory(j.directory) == (6, None)
    path = segment_path(j.directory, list_segments(j.directory)[1])
    path.write_bytes(path.read_bytes().replace(b'"effect":"ALLOW"', b'"effect":"DENY"', 1))
    checked, broken = verify_directory(j.directory)
    assert broken is not None and broken.reason == "altered" and checked == broken.seq - 1


def test_the_marker_file_lags_shipping_and_a_crash_only_resends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_reader, "MARKER_EVERY_S", 3600.0)
    j = open_journal(tmp_path)
    append_all(j, [[entry(i)] for i in range(5)])
    j.mark_shipped(j.read_unshipped(3))
    assert (j.shipped_seq, j.backlog_records) == (3, 2)
    assert read_marker(j.directory) is None  # not written yet
    # A crash now: a copy of the directory as the disk holds it, opened by a new process.
    shutil.copytree(j.directory, tmp_path / "crashed" / "inst-a")
    crashed = open_journal(tmp_path / "crashed", read_only=True)
    assert (crashed.shipped_seq, crashed.backlog_records) == (0, 5)  # sent again, nothing lost
    assert [r.seq for r in crashed.read_unshipped(100).records] == [1, 2, 3, 4, 5]
    j.mark_shipped(j.read_unshipped(100))
    j.save_marker()
    saved = read_marker(j.directory)
    assert saved is not None and saved.seq == 5
    append_all(j, [[entry(6)]])
    j.mark_shipped(j.read_unshipped(100))
    assert read_marker(j.directory) == saved
    j.close()  # closing saves it
    closed = read_marker(j.directory)
    assert closed is not None and closed.seq == 6
    j = open_journal(tmp_path)
    assert (j.shipped_seq, j.backlog_records) == (6, 0)
    monkeypatch.setattr(journal_reader, "MARKER_EVERY_S", 0.0)
    append_all(j, [[entry(7)]])
    j.mark_shipped(j.read_unshipped(100))  # the interval passed: written at once
    now = read_marker(j.directory)
    assert now is not None and now.seq == 7
    j.close()


def test_the_marker_is_written_at_once_past_a_damaged_line_or_a_completed_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_reader, "MARKER_EVERY_S", 3600.0)
    j = open_journal(tmp_path)
    append_all(j, [[entry(i)] for i in range(3)])
    damage_byte(segment_path(j.directory, 1), 1)  # seq 2
    batch = j.read_unshipped(100)
    assert [d.seq for d in batch.damaged] == [2]
    j.mark_shipped(batch)  # seq 2 must never be given to another record
    marker = read_marker(j.directory)
    assert marker is not None and marker.seq == 3
    j.close()
    j = open_journal(tmp_path / "rotating", segment_bytes=2000)
    for i in range(10):
        append_all(j, [[entry(i)]])
    j.mark_shipped(j.read_unshipped(6))  # completes a segment, which is deleted
    marker = read_marker(j.directory)
    assert marker is not None and marker.seq == 6 and min(list_segments(j.directory)) > 1
    j.close()


def test_closing_a_journal_that_failed_to_open_leaves_the_owner_s_marker(
    tmp_path: Path,
) -> None:
    live = open_journal(tmp_path, instance_id="live")
    append_all(live, [[entry(i)] for i in range(5)])
    live.mark_shipped(live.read_unshipped(5))
    live.save_marker()
    other = Journal(directory=tmp_path / "live", instance_id="live")
    with pytest.raises(ConfigurationError):
        other.open()  # the directory is locked by ``live``
    other.close()
    marker = read_marker(live.directory)
    assert marker is not None and marker.seq == 5
    live.close()
