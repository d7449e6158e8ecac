"""The Audit API reads events: ListEvents over every kind, legacy records included, and the
decision reads, exports and chain checks over chains holding every kind.

One server chain (``inst-e``) holds a record of every event kind, journaled and shipped
as a server does (a signed checkpoint included); one chain (``legacy``) holds records
written before typed events (schema 0); the ``admin`` chain holds token events appended
in PostgreSQL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import psycopg
import pytest
from acgs import CONSTITUTIONAL_HASH
from acgs.adapters import pg_event_chain
from acgs.adapters.audit_signing import CheckpointSigner, TrustedKeys
from acgs.adapters.pg_audit import COLUMNS, Shipper, row_of
from acgs.adapters.pg_audit_queries import AuditQueries, decode_cursor
from acgs.adapters.projectors.checkpoints import CheckpointProjector
from acgs.domain import canonical, events
from acgs.domain.audit import ALTERED, GENESIS_HASH, AuditRecord
from acgs.domain.audit_export import export_line, read_export, verify_export
from acgs.domain.audit_query import DecisionFilter, EventFilter, Page, event_kinds
from acgs.domain.model import Caller, Effect
from acgs.entrypoints.audit_servicer import AuditServicer, record_from_proto
from acgs.entrypoints.callers import AnonymousAuthenticator, CallerResolver
from acgs.entrypoints.grpc_server import GrpcServer
from acgs.errors import InvalidRequest, NotFound
from acgs.service_layer.checkpointer import Checkpointer
from acgs.service_layer.ports import EventEntry
from acgs.v1 import audit_pb2 as pb
from acgs.v1 import audit_pb2_grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import timestamp_pb2
from psycopg_pool import AsyncConnectionPool

from tests.audit_support import BASE_NS, CALLER, entry, open_journal
from tests.unit.test_events import SAMPLES

pytestmark = pytest.mark.postgres
T = TypeVar("T")
SIGNER = CheckpointSigner(private_key=Ed25519PrivateKey.generate())
ADMIN = Caller(id="alice@host-1", role="admin")
STEP = 1_000_000_000  # one second between the events of inst-e
LEGACY = ("decide", "evaluate", "escalation", "escalation", "approval")


def with_queries(url: str, fn: Callable[[AuditQueries], Awaitable[T]]) -> T:
    async def go() -> T:
        async with AsyncConnectionPool(url, min_size=1, max_size=2, open=False) as pool:
            return await fn(AuditQueries(pool=pool, max_page=100, verify_chunk=4,
                                         keys=TrustedKeys(keys=[SIGNER.public_key])))

    return asyncio.run(go())


def server_chain(tmp_path: Path, url: str) -> None:
    """inst-e: a decision, an evaluation, one event of every other kind, a checkpoint."""
    journal = open_journal(tmp_path, instance_id="inst-e")
    checkpointer = Checkpointer(journal=journal, signer=SIGNER, instance_id="inst-e",
                                constitutional_hash=CONSTITUTIONAL_HASH, interval_s=0)
    decision = entry(1, at_ns=BASE_NS)
    evaluation = dataclasses.replace(entry(2, at_ns=BASE_NS + STEP), kind=events.EVALUATION)
    typed = [EventEntry(e, ADMIN if e.KIND.startswith(("policy", "token")) else CALLER,
                        at_ns=BASE_NS + (n + 2) * STEP)
             for n, e in enumerate(s for s in SAMPLES if s.KIND != events.DECISION)]

    async def go() -> None:
        for one in [decision, evaluation, *typed]:
            await journal.append([one])
        assert await checkpointer.checkpoint() is not None

    asyncio.run(go())
    shipper = Shipper(journal=journal, conninfo=url, projectors=(CheckpointProjector(),))
    shipper.ship_once()
    shipper.close()
    journal.close()


def legacy_chain(url: str) -> list[AuditRecord]:
    """Records as servers wrote them before typed events: schema 0, the old kinds."""
    esc = SAMPLES[1]
    assert isinstance(esc, events.EscalationOpened)
    opened = canonical.dumps({"escalation": {"event": "opened", **esc.escalation.spec()}})
    approved = canonical.dumps({"escalation": {"event": "approved", "id": esc.escalation.id,
                                               "decision_id": "d0", "approvers": ["alice"]}})
    requests = ("{}", "{}", opened, approved, approved)
    records, prev = [], GENESIS_HASH
    for seq, (kind, request_json) in enumerate(zip(LEGACY, requests, strict=True), start=1):
        record = AuditRecord(
            decision_id=f"00000000-0000-7000-8000-00000000000{seq}", instance_id="legacy",
            seq=seq, decided_at_us=BASE_NS // 1000 - 10_000_000 + seq, kind=kind,
            caller_id="svc-old", caller_role="agent", request_id=f"req-{seq}", tenant_id="t1",
            principal_id="p1", request_json=request_json, effect=Effect.ALLOW, violations=(),
            policy_revision="rev-0", constitutional_hash=CONSTITUTIONAL_HASH, cached=False,
            latency_us=0, escalation_id="", prev_hash="").sealed(seq=seq, prev_hash=prev)
        prev = record.record_hash
        records.append(record)
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.executemany(f"INSERT INTO audit_decisions ({', '.join(COLUMNS)}) "
                        f"VALUES ({', '.join(['%s'] * len(COLUMNS))})",
                        [row_of(r) for r in records])
    return records


def admin_chain(url: str) -> None:
    with psycopg.connect(url) as conn, conn.transaction(), conn.cursor() as cur:
        pg_event_chain.append_sync(cur, [
            EventEntry(events.TokenCreated("acgs_00000000000000aa", "ci", "agent", "", None),
                       ADMIN, at_ns=BASE_NS + 100 * STEP),
            EventEntry(events.TokenRevoked("acgs_00000000000000aa", "ci"), ADMIN,
                       at_ns=BASE_NS + 101 * STEP)])


@pytest.fixture
def trail(tmp_path: Path, pg_url: str) -> str:
    server_chain(tmp_path, pg_url)
    legacy_chain(pg_url)
    admin_chain(pg_url)
    return pg_url


def every_page(url: str, where: EventFilter, size: int) -> list[AuditRecord]:
    async def go(q: AuditQueries) -> list[AuditRecord]:
        out: list[AuditRecord] = []
        cursor = ""
        while True:
            page = await q.list_events(where, page_size=size, cursor=cursor)
            assert len(page.records) <= size
            out += page.records
            if not page.next_cursor:
                return out
            cursor = page.next_cursor

    return with_queries(url, go)


def kinds_of(records: list[AuditRecord]) -> list[str]:
    return [r.kind for r in records]


def test_every_event_is_listed_once_in_order(trail: str) -> None:
    everything = every_page(trail, EventFilter(), 100)
    assert len(everything) == 5 + 14 + 2  # legacy, inst-e (the checkpoint included), admin
    assert {r.kind for r in everything} == {*events.KINDS, *LEGACY}
    order = [(r.decided_at_us, r.instance_id, r.seq) for r in everything]
    assert order == sorted(set(order))
    for size in (1, 3, 7):
        assert every_page(trail, EventFilter(), size) == everything


def test_kind_filters_find_legacy_records_by_the_event_they_are(trail: str) -> None:
    def find(*kinds: str, size: int = 100) -> list[tuple[str, str]]:
        return [(r.instance_id, r.kind)
                for r in every_page(trail, EventFilter(kinds=event_kinds(kinds)), size)]

    assert find("decision") == [("legacy", "decide"), ("legacy", "approval"),
                                ("inst-e", "decision")]
    assert find("evaluation") == [("legacy", "evaluate"), ("inst-e", "evaluation")]
    # The legacy "escalation" records: one opening, one change (and a page of one
    # record still holds one record when a row of the other one is passed over).
    for size in (1, 2, 100):
        assert find("escalation.opened", size=size) == [("legacy", "escalation"),
                                                        ("inst-e", "escalation.opened")]
        assert find("escalation.changed", size=size) == [("legacy", "escalation"),
                                                         ("inst-e", "escalation.changed")]
    assert find("token.created", "token.revoked") == [
        ("inst-e", "token.created"), ("inst-e", "token.revoked"),
        ("admin", "token.created"), ("admin", "token.revoked")]
    assert find("policy.activated") == [("inst-e", "policy.activated")]
    assert find("checkpoint") == [("inst-e", "checkpoint")]
    assert find("incident.opened") == [("inst-e", "incident.opened")]
    with pytest.raises(InvalidRequest, match=r"'token\.deleted'"):
        event_kinds(["token.created", "token.deleted"])
    with pytest.raises(InvalidRequest, match="'decide'"):  # legacy names are not kinds
        event_kinds(["decide"])


class CountingQueries(AuditQueries):
    """AuditQueries that count their queries and the rows they read."""

    queries = 0
    rows = 0

    async def _fetch(self, query: Any, params: list[Any]) -> list[tuple[Any, ...]]:
        rows = await super()._fetch(query, params)
        CountingQueries.queries += 1
        CountingQueries.rows += len(rows)
        return rows


def test_a_kind_filter_over_legacy_escalations_reads_a_bounded_amount_per_call(
        pg_url: str) -> None:
    """A legacy "escalation" record is an opening or a change by its request, told apart in
    Python: a filter for one of them passes over rows of the other. One ListEvents call
    reads a bounded number of rows in a bounded number of queries, whatever the page size
    (it read one query per row passed over, until the whole trail had been read); a page
    may come back short, with a next_page_token to go on."""
    esc = SAMPLES[1]
    assert isinstance(esc, events.EscalationOpened)
    changed = canonical.dumps({"escalation": {"event": "acknowledged",
                                              "id": esc.escalation.id}})
    n, records, prev = 2500, [], GENESIS_HASH
    for seq in range(1, n + 1):
        record = AuditRecord(
            decision_id=f"00000000-0000-7000-8000-{seq:012d}", instance_id="legacy",
            seq=seq, decided_at_us=BASE_NS // 1000 + seq, kind="escalation",
            caller_id="svc-old", caller_role="admin", request_id="", tenant_id="",
            principal_id="", request_json=changed, effect=Effect.DENY, violations=(),
            policy_revision="", constitutional_hash=CONSTITUTIONAL_HASH, cached=False,
            latency_us=0, escalation_id=esc.escalation.id, prev_hash="",
        ).sealed(seq=seq, prev_hash=prev)
        prev = record.record_hash
        records.append(record)
    with psycopg.connect(pg_url) as conn, conn.cursor() as cur:
        cur.executemany(f"INSERT INTO audit_decisions ({', '.join(COLUMNS)}) "
                        f"VALUES ({', '.join(['%s'] * len(COLUMNS))})",
                        [row_of(r) for r in records])
    where = EventFilter(kinds=event_kinds(["escalation.opened"]))

    async def go() -> list[AuditRecord]:
        async with AsyncConnectionPool(pg_url, min_size=1, max_size=2, open=False) as pool:
            q = CountingQueries(pool=pool, max_page=100)
            CountingQueries.queries = CountingQueries.rows = 0
            page = await q.list_events(where, page_size=1)
            assert CountingQueries.queries <= 10 and CountingQueries.rows <= 1000
            assert page.records == [] and page.next_cursor  # short, not the last page
            found, cursor = [], page.next_cursor
            while cursor:  # going on reaches the end, every row read once
                page = await q.list_events(where, page_size=1, cursor=cursor)
                found += page.records
                cursor = page.next_cursor
            assert CountingQueries.rows == n
            return found

    assert asyncio.run(go()) == []


def test_actor_instance_and_time_filters(trail: str) -> None:
    by_alice = every_page(trail, EventFilter(actor=ADMIN.id), 100)
    assert kinds_of(by_alice) == ["policy.version_created", "policy.version_signed",
                                  "policy.activated",
                                  "policy.rolled_back", "policy.shadow_started",
                                  "policy.shadow_stopped", "token.created", "token.revoked",
                                  "token.created", "token.revoked"]
    admin = every_page(trail, EventFilter(instance_id="admin"), 100)
    assert [(r.seq, r.caller_id, r.caller_role) for r in admin] == [
        (1, ADMIN.id, "admin"), (2, ADMIN.id, "admin")]
    since, until = (BASE_NS + STEP) // 1000, (BASE_NS + 4 * STEP) // 1000
    window = every_page(trail, EventFilter(since_us=since, until_us=until), 100)
    assert kinds_of(window) == ["evaluation", "escalation.opened", "incident.opened"]
    both = every_page(trail, EventFilter(kinds=frozenset({"token.revoked"}),
                                         actor=ADMIN.id, instance_id="admin"), 100)
    assert [(r.instance_id, r.seq) for r in both] == [("admin", 2)]
    for bad in (EventFilter(since_us=until, until_us=since),):
        with pytest.raises(InvalidRequest, match="time range"):
            with_queries(trail, lambda q, b=bad: q.list_events(b))


def test_bad_page_tokens_and_sizes_are_invalid(trail: str) -> None:
    for token in ("!!", "W10=", "WzEsMiwzXQ==", "a" * 2000):
        with pytest.raises(InvalidRequest, match="page_token"):
            with_queries(trail, lambda q, t=token: q.list_events(EventFilter(), cursor=t))
    for size in (0, -1, 101):
        with pytest.raises(InvalidRequest, match="page_size"):
            with_queries(trail, lambda q, s=size: q.list_events(EventFilter(), page_size=s))


def test_following_resumes_after_the_last_event_read(trail: str) -> None:
    where = EventFilter(instance_id="admin")
    first: Page = with_queries(trail, lambda q: q.list_events(where, page_size=10))
    assert len(first.records) == 2 and not first.next_cursor
    assert decode_cursor(first.resume_cursor)[1:] == ("admin", 2)
    with psycopg.connect(trail) as conn, conn.transaction(), conn.cursor() as cur:
        pg_event_chain.append_sync(cur, [EventEntry(events.TokenRevoked("t9"), ADMIN)])
    later = with_queries(trail, lambda q: q.list_events(where, cursor=first.resume_cursor))
    assert [(r.seq, r.kind) for r in later.records] == [(3, "token.revoked")]
    idle = with_queries(trail, lambda q: q.list_events(where, cursor=later.resume_cursor))
    assert idle.records == [] and idle.resume_cursor == later.resume_cursor


def test_the_decision_reads_see_decisions_only(trail: str) -> None:
    page = with_queries(trail, lambda q: q.list_decisions(DecisionFilter(), page_size=100))
    assert kinds_of(page.records) == ["decide", "evaluate", "approval", "decision",
                                      "evaluation"]
    for record in page.records:
        assert with_queries(trail, lambda q, r=record: q.get_decision(r.decision_id)) == record
    token = every_page(trail, EventFilter(instance_id="admin"), 10)[0]
    with pytest.raises(NotFound, match=r"token\.created event, not a decision"):
        with_queries(trail, lambda q: q.get_decision(token.decision_id))


def test_every_chain_of_every_kind_verifies_online_and_exported(trail: str) -> None:
    for chain, count in (("inst-e", 14), ("legacy", 5), ("admin", 2)):
        report = with_queries(trail, lambda q, c=chain: q.verify_chain(c))
        assert report.ok and report.checked == count, report
    assert with_queries(trail, lambda q: q.verify_chain("inst-e")).checkpoint_seq == 13
    reports = verify_export(read_export(export(trail)), TrustedKeys(keys=[SIGNER.public_key]))
    assert [(r.instance_id, r.ok, r.checked) for r in reports] == [
        ("admin", True, 2), ("inst-e", True, 14), ("legacy", True, 5)]
    lines = [json.loads(line) for line in export(trail)]
    assert {(d["kind"], d.get("schema", 0), bool(d.get("data"))) for d in lines
            if d["instance_id"] == "inst-e" and d["kind"].startswith("token")} == {
        ("token.created", 1, True), ("token.revoked", 1, True)}


def export(url: str) -> list[str]:
    async def go(q: AuditQueries) -> list[str]:
        return [export_line(r) async for r in q.export(DecisionFilter(), page_size=7)]

    return with_queries(url, go)


def test_an_edit_of_any_events_data_is_named_altered(trail: str) -> None:
    with psycopg.connect(trail, autocommit=True) as conn:
        edited = conn.execute("SELECT instance_id, seq, kind, data FROM audit_decisions "
                              "WHERE data <> '' ORDER BY instance_id, seq").fetchall()
    assert {row[2] for row in edited} == set(events.PAYLOADS)  # every kind with a payload
    for instance, seq, kind, data in edited:
        changed = data.replace('"', "'", 1)  # one byte of the payload
        with psycopg.connect(trail, autocommit=True) as conn:
            conn.execute("UPDATE audit_decisions SET data = %s WHERE instance_id = %s "
                         "AND seq = %s", (changed, instance, seq))
        try:
            report = with_queries(trail, lambda q, i=instance: q.verify_chain(i))
            assert report.broken is not None, kind
            assert (report.broken.seq, report.broken.reason) == (seq, ALTERED), kind
            offline = {r.instance_id: r for r in verify_export(
                read_export(export(trail)), TrustedKeys(keys=[SIGNER.public_key]))}
            broken = offline[instance].broken
            assert broken is not None and (broken.seq, broken.reason) == (seq, ALTERED), kind
        finally:
            with psycopg.connect(trail, autocommit=True) as conn:
                conn.execute("UPDATE audit_decisions SET data = %s WHERE instance_id = %s "
                             "AND seq = %s", (data, instance, seq))
    assert with_queries(trail, lambda q: q.verify_chain("inst-e")).ok


async def _grpc(url: str, calls: Callable[[audit_pb2_grpc.AuditStub], Awaitable[None]]) -> None:
    async with AsyncConnectionPool(url, min_size=1, max_size=2, open=False) as pool:
        servicer = AuditServicer(reader=AuditQueries(pool=pool),
                                 callers=CallerResolver(authenticator=AnonymousAuthenticator(),
                                                        access=None))
        server = GrpcServer(address="127.0.0.1:0", max_message_bytes=1 << 20,
                            services=[(pb.DESCRIPTOR.services_by_name["Audit"], servicer)])
        port = await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await calls(audit_pb2_grpc.AuditStub(channel))
        finally:
            await server.stop(1)


def test_list_events_over_grpc(trail: str) -> None:
    async def calls(stub: audit_pb2_grpc.AuditStub) -> None:
        seen: list[Any] = []
        token = ""
        while True:
            page = await stub.ListEvents(pb.ListEventsRequest(
                filter=pb.EventFilter(kinds=["token.created", "token.revoked"]), page_size=3,
                page_token=token))
            seen += page.events
            token = page.next_page_token
            if not token:
                break
        assert [(e.instance_id, e.kind, e.caller_id) for e in seen] == [
            ("inst-e", "token.created", ADMIN.id), ("inst-e", "token.revoked", ADMIN.id),
            ("admin", "token.created", ADMIN.id), ("admin", "token.revoked", ADMIN.id)]
        assert all(e.schema == 1 and events.decode(e.kind, e.data) for e in seen)
        since, until = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
        since.FromNanoseconds(BASE_NS + 100 * STEP)
        until.FromNanoseconds(BASE_NS + 102 * STEP)  # the checkpoint was made now: later
        late = await stub.ListEvents(pb.ListEventsRequest(
            filter=pb.EventFilter(since=since, until=until)))
        assert [e.kind for e in late.events] == ["token.created", "token.revoked"]
        assert late.resume_token and not late.next_page_token
        for request, words in (
            (pb.ListEventsRequest(filter=pb.EventFilter(kinds=["policy.deleted"])),
             "'policy.deleted'"),
            (pb.ListEventsRequest(page_token="%%"), "page_token"),
            (pb.ListEventsRequest(page_size=-1), "page_size"),
            (pb.ListEventsRequest(filter=pb.EventFilter(
                since=timestamp_pb2.Timestamp(seconds=2**40))), "filter.since"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ListEvents(request)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert words in (err.value.details() or "")
        # What `acgs audit export` writes (through the proto) verifies offline, every kind.
        exported = [export_line(record_from_proto(r))
                    async for r in stub.ExportDecisions(pb.ExportDecisionsRequest())]
        reports = verify_export(read_export(exported), TrustedKeys(keys=[SIGNER.public_key]))
        assert [(r.instance_id, r.ok, r.checked) for r in reports] == [
            ("admin", True, 2), ("inst-e", True, 14), ("legacy", True, 5)]

    asyncio.run(_grpc(trail, calls))
