"""Escalations in-process on a real PostgreSQL: journal → shipper projection → rules → expiry."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import psycopg
import pytest
from acgs import CONSTITUTIONAL_HASH
from acgs.adapters.journal import Journal
from acgs.adapters.pg_audit import Shipper
from acgs.adapters.pg_audit_queries import AuditQueries
from acgs.adapters.pg_escalations import PgEscalationStore, PgTransaction
from acgs.adapters.pg_notify import PgBell
from acgs.adapters.projectors.registry import projectors
from acgs.domain import canonical, events
from acgs.domain.escalation import EscalationFilter, State, Verdict
from acgs.domain.model import Caller, Decision, Effect, Severity, Violation, new_decision_id
from acgs.errors import AuditUnavailable, InvalidTransition, SelfResolution, Unavailable
from acgs.metrics import NullTelemetry
from acgs.service_layer.escalations import EscalationService
from acgs.service_layer.escalator import JournalEscalator
from acgs.service_layer.ports import AuditEntry, Entry, EventEntry
from psycopg_pool import AsyncConnectionPool

from tests.audit_support import entry, open_journal

pytestmark = pytest.mark.postgres

AGENT = Caller(id="acgs_00000000000000a1", role="agent")
ADMIN_1 = Caller(id="acgs_00000000000000b1", role="admin")
ADMIN_2 = Caller(id="acgs_00000000000000b2", role="admin")
PROJECTORS = projectors(idempotency_window_s=600, group_s=0)
INPUT = {"tenant_id": "t1", "principal": {"id": "agent-7", "tenant_id": "t1"},
         "action": {"type": "fund_transfer"}}


@dataclass
class Rig:
    journal: Journal
    shipper: Shipper
    store: PgEscalationStore
    escalator: JournalEscalator
    service: EscalationService
    url: str
    pool: AsyncConnectionPool

    async def ship(self) -> None:
        await asyncio.to_thread(self.shipper.ship_once)

    async def ship_twice(self) -> None:
        """Ship, then ship the same records again from a copy of the journal taken before
        (what a crash between the commit and the journal's shipped marker leaves)."""
        copies = self.journal.directory.parent / f"copy-{uuid.uuid4()}"
        shutil.copytree(self.journal.directory, copies / self.journal.instance_id)
        await self.ship()
        again = open_journal(copies, instance_id=self.journal.instance_id)
        shipper = Shipper(journal=again, conninfo=self.url, projectors=PROJECTORS)
        try:
            assert await asyncio.to_thread(shipper.ship_once) == 0  # nothing inserted twice
        finally:
            shipper.close()
            again.close()

    def query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url) as conn:
            return conn.execute(sql, params).fetchall()

    def records(self, kind: str) -> list[tuple[Any, ...]]:
        """(event id, caller id, caller role, escalation id, data) of the shipped ``kind``."""
        return self.query("SELECT decision_id::text, caller_id, caller_role, escalation_id, "
                          "data FROM audit_decisions WHERE kind = %s ORDER BY seq", kind)

    def projected(self) -> list[tuple[Any, ...]]:
        """(escalation id, kind, actor, event id) of every escalation event, in seq order."""
        return self.query("SELECT escalation_id::text, kind, actor_id, event_id::text "
                          "FROM escalation_events ORDER BY seq")

    async def escalate(self, *, approvals: int = 0, twice: bool = False) -> tuple[Decision, str]:
        """A durable ESCALATE decision with its opening, shipped; (decision, escalation id)."""
        decision_id = new_decision_id()
        decision = Decision(
            decision_id=decision_id, request_id=f"r-{decision_id}", effect=Effect.ESCALATE,
            violations=(Violation("high_impact_action", Severity.HIGH, "needs a human"),),
            policy_revision="rev-1", constitutional_hash=CONSTITUTIONAL_HASH, cached=False,
            latency_us=100, decided_at_ns=time.time_ns(), required_approvals=approvals)
        escalation_id, opening = self.escalator.opening(
            decision, reason="high_impact_action", caller=AGENT, policy_input=INPUT)
        assert opening is not None
        decided = AuditEntry("decision", replace(decision, escalation_id=escalation_id), AGENT,
                             json.dumps({"request_id": decision.request_id, "input": INPUT}))
        await self.journal.append([opening, decided])
        await (self.ship_twice() if twice else self.ship())
        return decision, escalation_id

    def kinds(self) -> list[tuple[str, str]]:
        with psycopg.connect(self.url) as conn:
            return conn.execute("SELECT kind, effect FROM audit_decisions "
                                "ORDER BY seq").fetchall()


@asynccontextmanager
async def rig(tmp_path: Path, url: str, *, ttl_s: float = 3600.0, **journal: Any
              ) -> AsyncIterator[Rig]:
    j = open_journal(tmp_path, **journal)
    shipper = Shipper(journal=j, conninfo=url, projectors=PROJECTORS)
    async with AsyncConnectionPool(url, min_size=1, max_size=2, open=False,
                                   kwargs={"autocommit": True}) as pool:
        store = PgEscalationStore(pool=pool)
        telemetry = NullTelemetry()
        escalator = JournalEscalator(journal=j, store=store, telemetry=telemetry,
                                     instance_id="inst-a", constitutional_hash=CONSTITUTIONAL_HASH,
                                     ttl_s=ttl_s)
        service = EscalationService(store=store, audit=j, bell=PgBell(conninfo=url),
                                    telemetry=telemetry, instance_id="inst-a",
                                    constitutional_hash=CONSTITUTIONAL_HASH)
        try:
            yield Rig(j, shipper, store, escalator, service, url, pool)
        finally:
            shipper.close()
            j.close()


def run(tmp_path: Path, url: str, body: Callable[[Rig], Awaitable[None]], **kw: Any) -> None:
    async def go() -> None:
        async with rig(tmp_path, url, **kw) as r:
            await body(r)

    asyncio.run(go())


def test_opening_ships_with_its_decision_exactly_once(tmp_path: Path, pg_url: str) -> None:
    async def body(r: Rig) -> None:
        decision, escalation_id = await r.escalate(twice=True)  # shipped, then shipped again
        e = await r.service.get(escalation_id, ADMIN_1)
        assert (e.state, e.decision_id, e.reason) == (State.OPEN, decision.decision_id,
                                                      "high_impact_action")
        assert (e.requester_id, e.principal_id, e.tenant_id) == (AGENT.id, "agent-7", "t1")
        assert e.required_approvals == 1 and e.last_event_seq > 0 and e.count == 1
        opening = r.records("escalation.opened")
        assert [(o[1], o[2], o[3]) for o in opening] == [(AGENT.id, "agent", escalation_id)]
        assert r.projected() == [(escalation_id, "opened", AGENT.id, opening[0][0])]
        assert len(r.query("SELECT id FROM escalations")) == 1

    run(tmp_path, pg_url, body)


def test_resolution_rules(tmp_path: Path, pg_url: str) -> None:
    async def body(r: Rig) -> None:
        _, escalation_id = await r.escalate(approvals=2)
        # The requesting token, and a token whose identity is the request's principal.
        for own in (AGENT, Caller(id="acgs_00000000000000c1", role="admin", identity="agent-7")):
            with pytest.raises(SelfResolution):
                await r.service.resolve(escalation_id, own, verdict=Verdict.APPROVE)
        await r.service.acknowledge(escalation_id, ADMIN_1)
        with pytest.raises(InvalidTransition):
            await r.service.acknowledge(escalation_id, ADMIN_2)
        first = await r.service.resolve(escalation_id, ADMIN_1, verdict=Verdict.APPROVE)
        again = await r.service.resolve(escalation_id, ADMIN_1, verdict=Verdict.APPROVE)
        assert first.state is again.state is State.ACKNOWLEDGED and len(again.approvals) == 1
        done = await r.service.resolve(escalation_id, ADMIN_2, verdict=Verdict.APPROVE,
                                       comment="ok")
        assert done.state is State.APPROVED and done.approval_decision_id
        assert [a.approver_id for a in done.approvals] == [ADMIN_1.id, ADMIN_2.id]
        for verdict in Verdict:
            with pytest.raises(InvalidTransition):
                await r.service.resolve(escalation_id, ADMIN_1, verdict=verdict)
        await r.ship()
        assert r.kinds() == [("escalation.opened", "DENY"), ("decision", "ESCALATE")] + [
            ("escalation.changed", "DENY")] * 3 + [("decision", "ALLOW")]
        _, denied_id = await r.escalate(approvals=3)
        denied = await r.service.resolve(denied_id, ADMIN_1, verdict=Verdict.DENY)
        assert denied.state is State.DENIED and not denied.approval_decision_id

    run(tmp_path, pg_url, body)


def test_due_escalation_is_expired_on_read_and_refused(tmp_path: Path, pg_url: str) -> None:
    async def body(r: Rig) -> None:
        _, escalation_id = await r.escalate()
        await asyncio.sleep(0.6)
        assert (await r.service.get(escalation_id, ADMIN_1)).state is State.EXPIRED
        with psycopg.connect(pg_url) as conn:  # the read made it so, with an event
            assert conn.execute("SELECT state FROM escalations").fetchone() == ("expired",)
        with pytest.raises(InvalidTransition, match="already expired"):
            await r.service.resolve(escalation_id, ADMIN_1, verdict=Verdict.APPROVE)
        assert [e.kind for e in await r.store.events_after(0, limit=10)] == ["opened", "expired"]
        assert await r.service.sweep() == 0

    run(tmp_path, pg_url, body, ttl_s=0.5)


def test_incident_is_opened_once_even_past_a_full_journal(tmp_path: Path, pg_url: str) -> None:
    async def body(r: Rig) -> None:
        with pytest.raises(AuditUnavailable):  # fill the journal past its backlog bound
            for n in range(100):
                await r.journal.append([entry(n)])
        violation = Violation("audit_unavailable", Severity.CRITICAL, "journal full")
        ids = {await r.escalator.incident(reason="audit_unavailable", key="k", caller=AGENT,
                                          violation=violation) for _ in range(3)}
        assert len(ids) == 1 and not r.escalator.outbox  # journaled, past the bound
        await r.ship_twice()
        incident = r.records(events.INCIDENT_OPENED)
        assert [(row[1], row[2], row[3]) for row in incident] == [(AGENT.id, "agent", *ids)]
        assert r.projected() == [(*ids, "opened", AGENT.id, incident[0][0])]
        page = await r.service.list_escalations(EscalationFilter(), page_size=10)
        assert [(e.id, e.reason, e.decision_id) for e in page.escalations] == [
            (ids.pop(), "audit_unavailable", "")]

    run(tmp_path, pg_url, body, max_unshipped_bytes=4096)


ALICE = Caller(id="acgs_00000000000000d1", role="admin", identity="alice@example")


def changes(r: Rig) -> list[tuple[str, str, str, events.EscalationChanged]]:
    """(event id, caller id, caller role, payload) of every shipped escalation.changed."""
    found = []
    for event_id, caller_id, role, _, data in r.records(events.ESCALATION_CHANGED):
        payload = events.decode(events.ESCALATION_CHANGED, data)
        assert isinstance(payload, events.EscalationChanged)
        found.append((event_id, caller_id, role, payload))
    return found


def test_every_change_is_an_event_by_its_actor_applied_once(tmp_path: Path,
                                                           pg_url: str) -> None:
    async def body(r: Rig) -> None:
        decision, approved_id = await r.escalate(approvals=2)
        await r.service.acknowledge(approved_id, ADMIN_1, comment="looking")
        await r.service.resolve(approved_id, ALICE, verdict=Verdict.APPROVE, comment="fine")
        done = await r.service.resolve(approved_id, ADMIN_2, verdict=Verdict.APPROVE)
        _, denied_id = await r.escalate()
        await r.service.resolve(denied_id, ADMIN_1, verdict=Verdict.DENY, comment="no")
        await r.ship_twice()  # applied by the service, then shipped twice: applied once

        made = changes(r)
        assert [(p.escalation_id, p.change, caller, role) for _, caller, role, p in made] == [
            (approved_id, "acknowledged", ADMIN_1.id, "admin"),
            (approved_id, "approval", ALICE.id, "admin"),
            (approved_id, "approved", ADMIN_2.id, "admin"),
            (denied_id, "denied", ADMIN_1.id, "admin")]
        approval = made[1][3]
        assert [(a.approver_id, a.approver_identity, a.comment) for a in approval.approvals] == [
            (ALICE.id, "alice@example", "fine")]
        assert (made[0][3].from_state, made[0][3].state) == (State.OPEN, State.ACKNOWLEDGED)
        assert (made[3][3].resolved_by, made[3][3].resolution_comment) == (ADMIN_1.id, "no")
        opened = [(eid, "opened", AGENT.id, event_id)
                  for event_id, _, _, eid, _ in r.records(events.ESCALATION_OPENED)]
        assert r.projected() == [opened[0], *[(p.escalation_id, p.change, caller, event_id)
                                              for event_id, caller, _, p in made[:3]],
                                 opened[1], (denied_id, "denied", ADMIN_1.id, made[3][0])]
        # The approval's ALLOW decision names the escalation; the escalation names it.
        allow = [row for row in r.records(events.DECISION) if row[4]]
        assert [(row[0], row[1], row[3]) for row in allow] == [
            (done.approval_decision_id, ADMIN_2.id, approved_id)]
        assert events.decode(events.DECISION, allow[0][4]) == events.ApprovalOf(
            approved_id, decision.decision_id, (ALICE.id, ADMIN_2.id))
        rows = r.query("SELECT id::text, state, count, approval_decision_id::text "
                       "FROM escalations ORDER BY created_at")
        assert rows == [(approved_id, "approved", 1, done.approval_decision_id),
                        (denied_id, "denied", 1, None)]
        assert r.query("SELECT count(*) FROM audit_quarantine") == [(0,)]

    run(tmp_path, pg_url, body)


def test_expiry_is_an_event_of_the_server(tmp_path: Path, pg_url: str) -> None:
    async def body(r: Rig) -> None:
        _, escalation_id = await r.escalate()
        await asyncio.sleep(0.6)
        assert await r.service.sweep() == 1
        await r.ship_twice()
        made = changes(r)
        assert [(p.escalation_id, p.change, caller, role, p.resolved_by)
                for _, caller, role, p in made] == [
            (escalation_id, "expired", r.service.system.id, "system", r.service.system.id)]
        assert r.projected()[1:] == [(escalation_id, "expired", r.service.system.id,
                                      made[0][0])]
        assert r.query("SELECT state FROM escalations") == [("expired",)]

    run(tmp_path, pg_url, body, ttl_s=0.5)


class CommitFails(PgEscalationStore):
    """A store whose write transactions fail at their commit (after the change applied)."""

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PgTransaction]:
        async with super().transaction() as tx:
            yield tx
            raise Unavailable("the commit failed")


def test_a_change_whose_commit_failed_is_applied_by_the_shipper_unless_superseded(
        tmp_path: Path, pg_url: str) -> None:
    async def body(r: Rig) -> None:
        failing = EscalationService(
            store=CommitFails(pool=r.pool), audit=r.journal, bell=PgBell(conninfo=r.url),
            telemetry=NullTelemetry(), instance_id="inst-a",
            constitutional_hash=CONSTITUTIONAL_HASH)
        _, later_id = await r.escalate()
        _, moved_id = await r.escalate()
        for escalation_id in (later_id, moved_id):
            with pytest.raises(Unavailable):  # journaled, then the commit failed
                await failing.acknowledge(escalation_id, ADMIN_1)
            assert (await r.service.get(escalation_id, ADMIN_1)).state is State.OPEN
        await r.service.resolve(moved_id, ADMIN_2, verdict=Verdict.DENY)  # it moved on
        await r.ship()

        assert r.query("SELECT id::text, state, acknowledged_by FROM escalations "
                       "ORDER BY created_at") == [(later_id, "acknowledged", ADMIN_1.id),
                                                  (moved_id, "denied", None)]
        acked = [event_id for event_id, _, _, p in changes(r) if p.change == "acknowledged"]
        held = r.query("SELECT q.seq, q.reason FROM audit_quarantine q")
        assert len(held) == 1 and len(acked) == 1  # the other is held, not shipped
        record = r.query("SELECT decision_id::text FROM audit_decisions WHERE seq = %s "
                         "AND instance_id = 'inst-a'", held[0][0])
        assert record == []  # quarantined, not shipped
        assert "projection failed" in held[0][1] and "superseded" in held[0][1]
        assert f"escalation {moved_id} is denied" in held[0][1]
        assert [(eid, kind) for eid, kind, _, _ in r.projected()] == [
            (later_id, "opened"), (moved_id, "opened"), (moved_id, "denied"),
            (later_id, "acknowledged")]  # the denial was applied at once, the rest shipped
        report = await AuditQueries(pool=r.pool).verify_chain("inst-a")
        assert report.ok, report  # the quarantined record is verified in its place

    run(tmp_path, pg_url, body)


@dataclass(frozen=True, slots=True)
class Malformed(events.Event):
    """An escalation.opened payload that is not an escalation."""

    KIND: ClassVar[str] = events.ESCALATION_OPENED

    def to_data(self) -> dict[str, Any]:
        return {"escalation": {"id": "not-a-uuid", "state": "open"}}


def test_a_malformed_opening_is_quarantined_with_its_reason(tmp_path: Path,
                                                            pg_url: str) -> None:
    async def body(r: Rig) -> None:
        await r.journal.append([EventEntry(Malformed(), AGENT)])
        _, escalation_id = await r.escalate()  # shipped in the same batch: it is opened
        held = r.query("SELECT seq, reason FROM audit_quarantine")
        assert [h[0] for h in held] == [1]
        assert "projection failed" in held[0][1] and "does not decode" in held[0][1]
        assert r.query("SELECT id::text FROM escalations") == [(escalation_id,)]

    run(tmp_path, pg_url, body)


def test_a_legacy_opening_record_still_opens_its_escalation(tmp_path: Path,
                                                            pg_url: str) -> None:
    """Records as the code before typed events wrote them: kind "escalation" with the
    opening in request_json, kind "decide", schema 0 (a journal left by an old server)."""
    async def body(r: Rig) -> None:
        decision = Decision(
            decision_id=new_decision_id(), request_id="r-old", effect=Effect.ESCALATE,
            violations=(Violation("high_impact_action", Severity.HIGH, "needs a human"),),
            policy_revision="rev-1", constitutional_hash=CONSTITUTIONAL_HASH, cached=False,
            latency_us=100, decided_at_ns=time.time_ns())
        escalation_id, opening = r.escalator.opening(
            decision, reason="high_impact_action", caller=AGENT, policy_input=INPUT)
        assert opening is not None and isinstance(opening.event, events.EscalationOpened)
        e = opening.event.escalation
        detail = {"event": "opened", "id": e.id, "state": "open", "reason": e.reason,
                  "decision_id": e.decision_id, **e.spec()}
        old = AuditEntry("escalation", replace(decision, decision_id=new_decision_id(),
                                               latency_us=0, escalation_id=e.id), AGENT,
                         canonical.dumps({"escalation": detail, "input": INPUT}))
        decided = AuditEntry("decide", replace(decision, escalation_id=e.id), AGENT,
                             json.dumps({"request_id": "r-old", "input": INPUT}))
        writes = r.journal._record

        def schema_0(entry: Any, *, seq: int, prev_hash: str) -> Any:
            return replace(writes(entry, seq=seq, prev_hash=prev_hash), schema=0)

        r.journal._record = schema_0  # type: ignore[method-assign]
        await r.journal.append([old, decided])
        await r.ship()
        assert r.query("SELECT kind, schema FROM audit_decisions ORDER BY seq") == [
            ("escalation", 0), ("decide", 0)]
        got = await r.service.get(escalation_id, ADMIN_1)
        assert (got.id, got.decision_id, got.state, got.count) == (
            escalation_id, decision.decision_id, State.OPEN, 1)
        assert [(k, a) for _, k, a, _ in r.projected()] == [("opened", AGENT.id)]
        report = await AuditQueries(pool=r.pool).verify_chain("inst-a")
        assert report.ok, report

    run(tmp_path, pg_url, body)


class Refusing:
    """A journal that takes nothing (its disk failed)."""

    async def append(self, entries: Sequence[Entry], *, reserve: bool = False) -> None:
        raise AuditUnavailable("disk failed")


def test_an_incident_no_journal_takes_is_recorded_in_the_admin_chain_with_its_row(
        tmp_path: Path, pg_url: str) -> None:
    async def body(r: Rig) -> None:
        escalator = JournalEscalator(journal=Refusing(), store=r.store,
                                     telemetry=NullTelemetry(), instance_id="inst-a",
                                     constitutional_hash=CONSTITUTIONAL_HASH)
        violation = Violation("audit_unavailable", Severity.CRITICAL, "disk failed")
        escalation_id = await escalator.incident(reason="audit_unavailable", key="k",
                                                 caller=AGENT, violation=violation)
        assert not escalator.outbox
        rows = r.query("SELECT decision_id::text, kind, caller_id, escalation_id, data "
                       "FROM audit_decisions WHERE instance_id = 'admin'")
        assert [row[1:4] for row in rows] == [("incident.opened", AGENT.id, escalation_id)]
        payload = events.decode(events.INCIDENT_OPENED, rows[0][4])
        assert isinstance(payload, events.IncidentOpened)
        assert (payload.escalation.id, payload.escalation.reason) == (escalation_id,
                                                                      "audit_unavailable")
        assert r.projected() == [(escalation_id, "opened", AGENT.id, rows[0][0])]
        assert r.query("SELECT reason, decision_id FROM escalations") == [
            ("audit_unavailable", None)]
        report = await AuditQueries(pool=r.pool).verify_chain("admin")
        assert report.ok and report.checked == 1

    run(tmp_path, pg_url, body)


class AnswerLost(PgEscalationStore):
    """A store whose first open_incident commits, then loses the answer (a connection
    dropped after COMMIT, or the caller's timeout just after it)."""

    lost = 1

    async def open_incident(self, entry: EventEntry) -> None:
        await super().open_incident(entry)
        if self.lost:
            self.lost -= 1
            raise Unavailable("connection lost after the commit")


class Recovered:
    """A journal that refuses until ``healed`` is set, then takes entries into ``taken``."""

    def __init__(self) -> None:
        self.healed = False
        self.taken: list[Entry] = []

    async def append(self, entries: Sequence[Entry], *, reserve: bool = False) -> None:
        if not self.healed:
            raise AuditUnavailable("disk failed")
        self.taken.extend(entries)


def test_an_incident_whose_commit_answer_was_lost_is_recorded_once(
        tmp_path: Path, pg_url: str) -> None:
    """The retry of an incident PostgreSQL may hold already is the same event (one event
    id), recorded once: not journaled anew (the journal healed meanwhile), not appended to
    the admin chain a second time."""
    async def body(r: Rig) -> None:
        journal = Recovered()
        store = AnswerLost(pool=r.pool)
        escalator = JournalEscalator(journal=journal, store=store, telemetry=NullTelemetry(),
                                     instance_id="inst-a",
                                     constitutional_hash=CONSTITUTIONAL_HASH)
        violation = Violation("audit_unavailable", Severity.CRITICAL, "disk failed")
        escalation_id = await escalator.incident(reason="audit_unavailable", key="k",
                                                 caller=AGENT, violation=violation)
        assert len(escalator.outbox) == 1  # the outcome is unknown to this server
        journal.healed = True
        await escalator.retry_outbox()
        await escalator.retry_outbox()
        assert not escalator.outbox and journal.taken == []
        rows = r.query("SELECT decision_id::text, kind, escalation_id FROM audit_decisions "
                       "WHERE instance_id = 'admin'")
        assert [row[1:] for row in rows] == [("incident.opened", escalation_id)]
        assert r.projected() == [(escalation_id, "opened", AGENT.id, rows[0][0])]
        report = await AuditQueries(pool=r.pool).verify_chain("admin")
        assert report.ok and report.checked == 1

    run(tmp_path, pg_url, body)


def test_the_allow_of_a_superseded_approval_is_quarantined_with_it(tmp_path: Path,
                                                                   pg_url: str) -> None:
    async def body(r: Rig) -> None:
        failing = EscalationService(
            store=CommitFails(pool=r.pool), audit=r.journal, bell=PgBell(conninfo=r.url),
            telemetry=NullTelemetry(), instance_id="inst-a",
            constitutional_hash=CONSTITUTIONAL_HASH)
        _, escalation_id = await r.escalate()
        with pytest.raises(Unavailable):  # the approval and its ALLOW journaled, not applied
            await failing.resolve(escalation_id, ADMIN_1, verdict=Verdict.APPROVE)
        await r.service.resolve(escalation_id, ADMIN_2, verdict=Verdict.DENY)
        await r.ship()
        held = r.query("SELECT reason FROM audit_quarantine ORDER BY seq")
        assert len(held) == 2
        assert "superseded" in held[0][0]
        assert f"escalation {escalation_id} was not approved by this decision" in held[1][0]
        assert [row for row in r.records(events.DECISION) if row[4]] == []  # no stray ALLOW
        assert r.query("SELECT state, approval_decision_id FROM escalations") == [
            ("denied", None)]

    run(tmp_path, pg_url, body)


def test_concurrent_approvals_both_count(tmp_path: Path, pg_url: str) -> None:
    async def body(r: Rig) -> None:
        _, escalation_id = await r.escalate(approvals=2)
        await asyncio.gather(
            r.service.resolve(escalation_id, ADMIN_1, verdict=Verdict.APPROVE),
            r.service.resolve(escalation_id, ADMIN_2, verdict=Verdict.APPROVE))
        e = await r.service.get(escalation_id, ADMIN_1)
        assert e.state is State.APPROVED
        assert sorted(a.approver_id for a in e.approvals) == [ADMIN_1.id, ADMIN_2.id]
        await r.ship()
        # The changes are made one after the other under the escalation's lock: neither
        # is computed on a state the other changed, so nothing is superseded or quarantined.
        assert r.query("SELECT reason FROM audit_quarantine") == []
        made = changes(r)
        assert [(eid, kind) for eid, kind, _, _ in r.projected()][1:] == [
            (escalation_id, p.change) for _, _, _, p in made] == [
            (escalation_id, "approval"), (escalation_id, "approved")]

    run(tmp_path, pg_url, body)


def test_a_second_pending_incident_of_a_dedup_key_reads_as_the_first(
        tmp_path: Path, pg_url: str) -> None:
    async def body(r: Rig) -> None:
        violation = Violation("constitution_mismatch", Severity.HIGH, "another constitution")
        ids = []
        for server in ("inst-a", "inst-b"):  # each server raises it once, neither journal takes it
            escalator = JournalEscalator(journal=Refusing(), store=r.store,
                                         telemetry=NullTelemetry(), instance_id=server,
                                         constitutional_hash=CONSTITUTIONAL_HASH)
            ids.append(await escalator.incident(reason="constitution_mismatch",
                                                key="constitution_mismatch:agent",
                                                caller=AGENT, violation=violation))
        assert ids[0] != ids[1]
        assert r.query("SELECT id::text FROM escalations") == [(ids[0],)]
        assert (await r.service.get(ids[1], ADMIN_1)).id == ids[0]
        assert r.query("SELECT kind FROM audit_decisions WHERE instance_id = 'admin'") == [
            ("incident.opened",), ("incident.opened",)]

    run(tmp_path, pg_url, body)


def test_final_approvals_at_once_do_not_starve_on_the_pool(tmp_path: Path, pg_url: str) -> None:
    """An approval that completes reads the escalated request while it holds the escalation
    lock: on its own transaction's connection, never a second one from the pool, which the
    transactions queued behind that lock may all hold (the first approval then waited for a
    connection until the pool's timeout and failed UNAVAILABLE)."""
    async def body(r: Rig) -> None:
        async with AsyncConnectionPool(r.url, min_size=2, max_size=2, open=False, timeout=2.0,
                                       kwargs={"autocommit": True}) as pool:
            service = EscalationService(
                store=PgEscalationStore(pool=pool), audit=r.journal,
                bell=PgBell(conninfo=r.url), telemetry=NullTelemetry(), instance_id="inst-a",
                constitutional_hash=CONSTITUTIONAL_HASH)
            ids = [(await r.escalate())[1] for _ in range(2)]
            done = await asyncio.gather(*(
                service.resolve(i, ADMIN_1, verdict=Verdict.APPROVE) for i in ids))
        assert [e.state for e in done] == [State.APPROVED, State.APPROVED]
        assert all(e.approval_decision_id for e in done)

    run(tmp_path, pg_url, body)
