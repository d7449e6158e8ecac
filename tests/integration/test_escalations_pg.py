"""Escalations in-process on a real PostgreSQL: journal → shipper projection → rules → expiry."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from acgs import CONSTITUTIONAL_HASH
from acgs.adapters.journal import Journal
from acgs.adapters.pg_audit import Shipper
from acgs.adapters.pg_escalations import PgEscalationStore
from acgs.adapters.pg_notify import PgBell
from acgs.adapters.projectors.registry import projectors
from acgs.domain.escalation import EscalationFilter, State, Verdict
from acgs.domain.model import Caller, Decision, Effect, Severity, Violation, new_decision_id
from acgs.errors import AuditUnavailable, InvalidTransition, SelfResolution
from acgs.metrics import NullTelemetry
from acgs.service_layer.escalations import EscalationService
from acgs.service_layer.escalator import JournalEscalator
from acgs.service_layer.ports import AuditEntry
from psycopg_pool import AsyncConnectionPool

from tests.audit_support import entry, open_journal

pytestmark = pytest.mark.postgres

AGENT = Caller(id="acgs_00000000000000a1", role="agent")
ADMIN_1 = Caller(id="acgs_00000000000000b1", role="admin")
ADMIN_2 = Caller(id="acgs_00000000000000b2", role="admin")
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

    async def ship(self) -> None:
        await asyncio.to_thread(self.shipper.ship_once)

    async def escalate(self, *, approvals: int = 0) -> tuple[Decision, str]:
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
        await self.ship()
        return decision, escalation_id

    def kinds(self) -> list[tuple[str, str]]:
        with psycopg.connect(self.url) as conn:
            return conn.execute("SELECT kind, effect FROM audit_decisions "
                                "ORDER BY seq").fetchall()


@asynccontextmanager
async def rig(tmp_path: Path, url: str, *, ttl_s: float = 3600.0, **journal: Any
              ) -> AsyncIterator[Rig]:
    j = open_journal(tmp_path, **journal)
    shipper = Shipper(journal=j, conninfo=url,
                      projectors=projectors(idempotency_window_s=600.0, group_s=0.0))
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
            yield Rig(j, shipper, store, escalator, service, url)
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
        decision, escalation_id = await r.escalate()
        e = await r.service.get(escalation_id, ADMIN_1)
        assert (e.state, e.decision_id, e.reason) == (State.OPEN, decision.decision_id,
                                                      "high_impact_action")
        assert (e.requester_id, e.principal_id, e.tenant_id) == (AGENT.id, "agent-7", "t1")
        assert e.required_approvals == 1 and e.last_event_seq > 0
        await r.store.insert(e)  # opening it again (a re-shipped record) changes nothing
        events = await r.store.events_after(0, limit=10)
        assert [(ev.kind, ev.escalation.id) for ev in events] == [("opened", escalation_id)]

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
        assert r.kinds()[:2] == [("escalation", "ESCALATE"), ("decision", "ESCALATE")]
        assert r.kinds()[2:] == [("escalation", "ESCALATE"), ("escalation", "ESCALATE"),
                                 ("escalation", "ALLOW"), ("approval", "ALLOW")]
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
        await r.ship()
        page = await r.service.list_escalations(EscalationFilter(), page_size=10)
        assert [(e.id, e.reason, e.decision_id) for e in page.escalations] == [
            (ids.pop(), "audit_unavailable", "")]

    run(tmp_path, pg_url, body, max_unshipped_bytes=4096)
