"""The decision projector on a real PostgreSQL: idempotency keys and retry links, once.

Journals are written as journal files (new records with their line checksum,
legacy "decide"/"approval" records as the plain lines older servers wrote) and
read back by the real Journal, then shipped by a real Shipper with the
registry's projectors, one record per batch where the order of arrival matters.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from acgs.adapters.journal import Journal
from acgs.adapters.journal_files import segment_path
from acgs.adapters.journal_lines import checksummed
from acgs.adapters.pg_audit import COLUMNS, Shipper, row_of
from acgs.adapters.pg_escalations import LOCK_KEY
from acgs.adapters.projectors import Plan, Statement, drive_sync, run_sync
from acgs.adapters.projectors.decisions import DecisionProjector
from acgs.adapters.projectors.registry import projectors
from acgs.domain import events
from acgs.domain.audit import GENESIS_HASH, AuditRecord
from acgs.domain.model import Effect

pytestmark = pytest.mark.postgres

WINDOW_S = 600
NOW_US = time.time_ns() // 1000
BODY = '{"input":{"action":{"type":"fund_transfer"}},"request_id":"k-1"}'
OTHER_BODY = '{"input":{"action":{"type":"fund_transfer","n":2}},"request_id":"k-1"}'


def decision(*, rid: str = "k-1", body: str = BODY, at_us: int = NOW_US,
             caller: str = "svc-a", kind: str = "decision", schema: int = 1, data: str = "",
             escalation_id: str = "") -> AuditRecord:
    return AuditRecord(
        decision_id=str(uuid.uuid4()), instance_id="", seq=0, decided_at_us=at_us, kind=kind,
        caller_id=caller, caller_role="agent", request_id=rid, tenant_id="t1",
        principal_id="p1", request_json=body, effect=Effect.ALLOW, violations=(),
        policy_revision="rev-1", constitutional_hash="cdd01ef066bc6cf2", cached=False,
        latency_us=100, escalation_id=escalation_id, prev_hash="", schema=schema, data=data)


def journal(root: Path, instance: str, records: Sequence[AuditRecord]) -> Journal:
    """A journal directory holding ``records`` (in order) as written, opened for shipping."""
    directory = root / instance
    directory.mkdir(parents=True)
    lines, prev = [], GENESIS_HASH
    for seq, record in enumerate(records, 1):
        sealed = replace(record, instance_id=instance).sealed(seq=seq, prev_hash=prev)
        prev = sealed.record_hash
        line = sealed.to_json().encode()
        lines.append(checksummed(line) if sealed.schema else line)  # legacy: no checksum
    segment_path(directory, 1).write_bytes(b"".join(line + b"\n" for line in lines))
    opened = Journal(directory=directory, instance_id=instance)
    opened.open()
    return opened


def ship(url: str, source: Journal, *, batch: int = 1000) -> int:
    shipper = Shipper(journal=source, conninfo=url, batch=batch,
                      projectors=projectors(idempotency_window_s=WINDOW_S, group_s=0))
    try:
        return shipper.ship_once()
    finally:
        shipper.close()


def query(url: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def keys(url: str) -> list[tuple[Any, ...]]:
    return query(url, "SELECT caller_id, request_id, decision_id::text, escalation_id "
                      "FROM idempotency_keys ORDER BY caller_id, request_id")


def retries(url: str) -> set[tuple[str, str]]:
    return {(r[0], r[1]) for r in query(
        url, "SELECT decision_id::text, retry_of::text FROM decision_retries")}


def test_the_key_and_the_retry_link_are_made_once(tmp_path: Path, pg_url: str) -> None:
    first, retry = decision(), decision(at_us=NOW_US + 1_000_000)
    other_caller = decision(caller="svc-b", at_us=NOW_US + 2_000_000)  # a key space of its own
    records = [first, retry, other_caller]
    a = journal(tmp_path, "inst-a", records)
    shutil.copytree(a.directory, tmp_path / "copy" / "inst-a")  # unshipped: a lost marker
    assert ship(pg_url, a) == 3
    a.close()
    made = (keys(pg_url), retries(pg_url),
            query(pg_url, "SELECT linked_at FROM decision_retries"))
    assert made[0] == [("svc-a", "k-1", first.decision_id, ""),
                       ("svc-b", "k-1", other_caller.decision_id, "")]
    assert made[1] == {(retry.decision_id, first.decision_id)}
    # The key's time is the record's, to the microsecond; its digest the body's SHA-256.
    assert query(pg_url, "SELECT k.decided_at = a.decided_at, "
                         "k.digest = sha256(convert_to(a.request_json, 'UTF8')) "
                         "FROM idempotency_keys k JOIN audit_decisions a "
                         "ON a.decision_id = k.decision_id") == [(True, True), (True, True)]
    again = Journal(directory=tmp_path / "copy" / "inst-a", instance_id="inst-a")
    again.open()
    assert ship(pg_url, again) == 0  # the batch sent again: its rows exist already
    again.close()
    # The projector run again over the same records (a service projecting what it
    # journaled, then the shipper): nothing changes either.
    stored = [replace(r, instance_id="inst-a", seq=n) for n, r in enumerate(records, 1)]
    with psycopg.connect(pg_url) as conn, conn.transaction(), conn.cursor() as cur:
        run_sync(cur, projectors(idempotency_window_s=WINDOW_S, group_s=0), stored)
    assert (keys(pg_url), retries(pg_url),
            query(pg_url, "SELECT linked_at FROM decision_retries")) == made


@pytest.mark.parametrize("original_first", [True, False])
def test_retries_link_to_the_first_decision_postgresql_saw(
        tmp_path: Path, pg_url: str, original_first: bool) -> None:
    first = decision()
    retry = decision(at_us=NOW_US + 5_000_000)
    a, b = journal(tmp_path, "inst-a", [first]), journal(tmp_path, "inst-b", [retry])
    for server in (a, b) if original_first else (b, a):
        ship(pg_url, server)
        server.close()
    seen, linked = (first, retry) if original_first else (retry, first)
    assert keys(pg_url) == [("svc-a", "k-1", seen.decision_id, "")]
    assert retries(pg_url) == {(linked.decision_id, seen.decision_id)}


def test_another_body_under_the_key_is_not_a_retry(tmp_path: Path, pg_url: str) -> None:
    first = decision()
    changed = decision(body=OTHER_BODY, at_us=NOW_US + 1_000_000)
    changed_again = decision(body=OTHER_BODY, at_us=NOW_US + 2_000_000)
    a = journal(tmp_path, "inst-a", [first, changed, changed_again])
    ship(pg_url, a, batch=1)
    a.close()
    # The other body takes the key over (only the first decision's server could have
    # refused it); a repeat of that body is its retry.
    assert keys(pg_url) == [("svc-a", "k-1", changed.decision_id, "")]
    assert retries(pg_url) == {(changed_again.decision_id, changed.decision_id)}


def test_within_one_batch_the_first_decision_keeps_the_key(tmp_path: Path, pg_url: str) -> None:
    first = decision()
    changed = decision(body=OTHER_BODY, at_us=NOW_US + 1_000_000)
    repeat = decision(at_us=NOW_US + 2_000_000)
    a = journal(tmp_path, "inst-a", [first, changed, repeat])
    ship(pg_url, a)
    a.close()
    assert keys(pg_url) == [("svc-a", "k-1", first.decision_id, "")]
    assert retries(pg_url) == {(repeat.decision_id, first.decision_id)}


def test_a_key_past_the_window_is_replaced_and_old_keys_are_deleted(
        tmp_path: Path, pg_url: str) -> None:
    ancient = decision(rid="k-0", at_us=NOW_US - (WINDOW_S + 86400 + 60) * 1_000_000)
    first = decision()
    late = decision(at_us=NOW_US + (WINDOW_S + 1) * 1_000_000)
    late_retry = decision(at_us=NOW_US + (WINDOW_S + 2) * 1_000_000)
    a = journal(tmp_path, "inst-a", [ancient, first, late, late_retry])
    ship(pg_url, a, batch=1)
    a.close()
    # The key past its window went to the next decision with the same body (no retry of
    # the first); the key past the window and a day went when the next batch shipped.
    assert keys(pg_url) == [("svc-a", "k-1", late.decision_id, "")]
    assert retries(pg_url) == {(late_retry.decision_id, late.decision_id)}


def test_a_legacy_decide_record_is_projected(tmp_path: Path, pg_url: str) -> None:
    first = decision(kind="decide", schema=0)
    retry = decision(kind="decide", schema=0, at_us=NOW_US + 1_000_000)
    new_retry = decision(at_us=NOW_US + 2_000_000)  # after an upgrade, on another server
    old = journal(tmp_path, "inst-old", [first, retry])
    new = journal(tmp_path, "inst-new", [new_retry])
    assert ship(pg_url, old) == 2 and ship(pg_url, new) == 1
    old.close()
    new.close()
    assert query(pg_url, "SELECT kind, schema FROM audit_decisions ORDER BY decided_at") == [
        ("decide", 0), ("decide", 0), ("decision", 1)]
    assert keys(pg_url) == [("svc-a", "k-1", first.decision_id, "")]
    assert retries(pg_url) == {(retry.decision_id, first.decision_id),
                               (new_retry.decision_id, first.decision_id)}


def test_approval_decisions_are_not_keys_nor_retries(tmp_path: Path, pg_url: str) -> None:
    """An approval's ALLOW repeats the escalated request (its request_id and body), but
    answers no request: it neither retries the escalated decision nor takes its key."""
    escalation_id = str(uuid.uuid4())
    escalated = decision(rid="k-9", escalation_id=escalation_id)
    approved = decision(rid="k-9", escalation_id=escalation_id, at_us=NOW_US + 1_000_000,
                        data=events.encode(events.ApprovalOf(
                            escalation_id, escalated.decision_id, ("ops-1",))))
    legacy = decision(rid="k-8", kind="approval", schema=0, at_us=NOW_US + 2_000_000,
                      escalation_id=str(uuid.uuid4()))
    a = journal(tmp_path, "inst-a", [escalated, approved])
    old = journal(tmp_path, "inst-old", [legacy])
    ship(pg_url, a)
    ship(pg_url, old)
    a.close()
    old.close()
    assert keys(pg_url) == [("svc-a", "k-9", escalated.decision_id, escalation_id)]
    assert retries(pg_url) == set()


def test_a_request_takes_its_first_escalated_retrys_escalation(
        tmp_path: Path, pg_url: str) -> None:
    """The escalation projector merges a retry's escalation into the key's: a first
    decision without one (it was allowed; the retry met another policy) takes the first
    escalated retry's."""
    first = decision(rid="k-3")
    escalated = [decision(rid="k-3", at_us=NOW_US + n * 1_000_000,
                          escalation_id=str(uuid.uuid4())) for n in (1, 2)]
    a = journal(tmp_path, "inst-a", [first, *escalated])
    ship(pg_url, a)
    a.close()
    assert keys(pg_url) == [("svc-a", "k-3", first.decision_id, escalated[0].escalation_id)]
    assert retries(pg_url) == {(e.decision_id, first.decision_id) for e in escalated}


def test_a_batch_of_5000_decisions_projects_in_one_statement(pg_url: str) -> None:
    """Set-based: what a batch costs does not grow with its size (every decision here has
    a request_id; one in ten retries the one before it, one in five hundred escalated)."""
    records, prev = [], GENESIS_HASH
    for n in range(5000):
        retry = n % 10 == 9
        rid = f"k-{n - 1 if retry else n}"
        esc = str(uuid.uuid4()) if retry and n % 500 == 499 else ""
        record = replace(decision(rid=rid, body=f'{{"request_id":"{rid}"}}', escalation_id=esc,
                                  at_us=NOW_US + n), instance_id="inst-a").sealed(
            seq=n + 1, prev_hash=prev)
        records.append(record)
        prev = record.record_hash
    executed: list[Statement] = []

    def counted(plan: Plan) -> Plan:
        try:
            statement = next(plan)
            while True:
                executed.append(statement)
                statement = plan.send((yield statement))
        except StopIteration:
            return

    projector = DecisionProjector(window_s=WINDOW_S)
    with psycopg.connect(pg_url) as conn, conn.transaction(), conn.cursor() as cur:
        with cur.copy(f"COPY audit_decisions ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for record in records:  # what the shipper does before it runs the projectors
                copy.write_row(row_of(record))
        drive_sync(cur, counted(projector.project(records)))
    # The projection, and the one update of the keys that 10 escalated retries bring.
    assert len(executed) == 2 and not any(s.many for s in executed)
    assert query(pg_url, "SELECT count(*), count(*) FILTER (WHERE escalation_id <> '') "
                         "FROM idempotency_keys") == [(4500, 10)]
    assert query(pg_url, "SELECT count(*) FROM decision_retries") == [(500,)]
    executed.clear()
    with psycopg.connect(pg_url) as conn, conn.transaction(), conn.cursor() as cur:
        drive_sync(cur, counted(projector.project(records)))  # nothing new: no update
    assert len(executed) == 1


def test_run_before_its_records_are_inserted_the_projector_says_so(pg_url: str) -> None:
    records = [replace(decision(), instance_id="inst-a", seq=1)]
    with psycopg.connect(pg_url) as conn, conn.transaction(), conn.cursor() as cur, \
            pytest.raises(RuntimeError, match="1 of 1 decisions of inst-a are not in "
                                              "audit_decisions"):
        run_sync(cur, [DecisionProjector(window_s=WINDOW_S)], records)


def test_a_negative_window_is_refused() -> None:
    with pytest.raises(ValueError, match="window"):
        DecisionProjector(window_s=-1)


def test_a_projection_waits_for_the_escalations_lock(tmp_path: Path, pg_url: str) -> None:
    """Projections of concurrent shippers (and the escalation store) apply one by one."""
    a = journal(tmp_path, "inst-a", [decision()])
    shipped: list[int] = []
    with psycopg.connect(pg_url) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        worker = threading.Thread(target=lambda: shipped.append(ship(pg_url, a)))
        worker.start()
        worker.join(1.0)
        assert worker.is_alive() and keys(pg_url) == []  # nothing written without the lock
        holder.rollback()
    worker.join(10.0)
    a.close()
    assert shipped == [1] and len(keys(pg_url)) == 1


def test_servers_shipping_the_same_request_at_once_link_it_once(
        tmp_path: Path, pg_url: str) -> None:
    records = {name: [decision(rid=f"k-{n}", body=f'{{"n":{n}}}', at_us=NOW_US + n)
                      for n in range(200)] for name in ("inst-a", "inst-b")}
    journals = [journal(tmp_path, name, rs) for name, rs in records.items()]
    barrier = threading.Barrier(len(journals))

    def run(j: Journal) -> None:
        barrier.wait()
        ship(pg_url, j, batch=20)

    workers = [threading.Thread(target=run, args=(j,)) for j in journals]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60.0)
    for j in journals:
        j.close()
    held = {k[1]: k[2] for k in keys(pg_url)}
    assert len(held) == 200
    # Each request: one key, held by one server's decision; the other's is its retry.
    assert retries(pg_url) == {
        (r.decision_id, held[r.request_id]) for rs in records.values() for r in rs
        if r.decision_id != held[r.request_id]}
    assert len(retries(pg_url)) == 200
