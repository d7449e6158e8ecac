"""The escalations' parts (after the callers, before the policy lifecycle, whose automatic
rollbacks open incidents through the escalator).

Escalations live in the audit trail's database and are opened through its
journal, so they exist only with the audit trail (``ACGS_AUDIT_ENABLED``).
Parts, in start order: one expiry sweep, awaited (an escalation that expired
while every server was down is expired before this server reports SERVING),
then the periodic sweep (``escalation-sweeper``, every ACGS_ESCALATION_SWEEP_S;
its last round runs at stop, after the gRPC server stopped and before the
journal closes, retrying the incident outbox once more). Both are held while
the database is unreachable. The bell that wakes the watchers of escalation
events is rung by the server's listener (see :mod:`acgs.lifecycle.policy`) and
closed as soon as the server stops serving, which ends the watch streams
(watchers resume on another server from their cursor).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from acgs.adapters.pg_escalations import PgEscalationStore
from acgs.adapters.pg_notify import PgBell
from acgs.config import Settings
from acgs.entrypoints.callers import CallerResolver
from acgs.entrypoints.escalations_servicer import EscalationsServicer
from acgs.errors import AuditUnavailable, Unavailable
from acgs.lifecycle.audit import AuditTrail
from acgs.lifecycle.offline import UNREACHABLE
from acgs.lifecycle.supervisor import Supervisor
from acgs.service_layer.escalation_ports import EscalationTelemetry
from acgs.service_layer.escalations import EscalationService
from acgs.service_layer.escalator import JournalEscalator
from acgs.v1 import escalations_pb2

logger = logging.getLogger("acgs.lifecycle")


class Sweeper:
    """One round: retries the incident outbox, closes the escalation groups other servers
    resolved, expires due escalations."""

    def __init__(self, *, service: EscalationService, escalator: JournalEscalator) -> None:
        self._service = service
        self._escalator = escalator
        self._seq: int | None = None  # escalation events read for closed groups

    async def round(self) -> None:
        await self._escalator.retry_outbox()
        # A group resolved on another server stops taking this server's decisions.
        closed, self._seq = await self._service.closed_since(self._seq)
        self._escalator.closed_elsewhere(closed)
        expired = await self._service.sweep()
        if expired:
            logger.info("expired %d escalation(s)", expired)


@dataclass
class Escalations:
    """The wired escalations: the DecisionService's escalator, the use cases, the bell."""

    escalator: JournalEscalator
    service: EscalationService
    bell: PgBell

    def services(self, callers: CallerResolver) -> list[tuple[Any, object]]:
        """acgs.v1.Escalations for the gRPC server."""
        servicer = EscalationsServicer(service=self.service, callers=callers)
        return [(escalations_pb2.DESCRIPTOR.services_by_name["Escalations"], servicer)]


def build_escalations(settings: Settings, parts: Supervisor, *, trail: AuditTrail,
                      telemetry: EscalationTelemetry) -> Escalations:
    """Wire escalations on the audit trail's database; see the module docstring."""
    database = trail.database
    store = PgEscalationStore(pool=database.pool)
    bell = PgBell(conninfo=database.conninfo)
    escalator = JournalEscalator(
        journal=trail.journal, store=store, telemetry=telemetry,
        instance_id=settings.instance_id, constitutional_hash=settings.constitutional_hash,
        ttl_s=settings.escalation_ttl_s,
        required_approvals=settings.escalation_required_approvals,
        group_window_s=settings.escalation_group_s,
        caller_limit=settings.escalation_caller_limit,
        caller_window_s=settings.escalation_caller_window_s)
    service = EscalationService(
        store=store, audit=trail.journal, bell=bell, telemetry=telemetry,
        instance_id=settings.instance_id, constitutional_hash=settings.constitutional_hash,
        on_closed=escalator.closed)
    sweeper = Sweeper(service=service, escalator=escalator)
    parts.every("escalation-sweeper", sweeper.round,
                interval_s=max(0.1, settings.escalation_sweep_s), first="await",
                stop=sweeper.round, held=database.offline,
                expected=(Unavailable, AuditUnavailable, *UNREACHABLE))
    parts.step("escalation-watchers", stop=bell.close, serving=True)
    return Escalations(escalator=escalator, service=service, bell=bell)
