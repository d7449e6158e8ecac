"""The escalations' part of the composition root (called by :mod:`acgs.bootstrap`).

Escalations live in the audit trail's database and are opened through its
journal, so they exist only with the audit trail (``ACGS_AUDIT_ENABLED``).
Start: the listener for event notifications, then one expiry sweep (an
escalation that expired while every server was down is expired before this
server reports SERVING), then the periodic sweeper. Stop: ``stoppers`` end
the watch streams as soon as the server stops serving (watchers resume on
another server from their cursor); closers, run after the gRPC server
stopped and before the journal closes, stop the sweeper (retrying the
incident outbox once more), the listener and the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from psycopg_pool import AsyncConnectionPool

from acgs.adapters.gated_pool import GatedPool
from acgs.adapters.pg_escalations import PgEscalationStore
from acgs.adapters.pg_notify import PgBell
from acgs.bootstrap_audit import AuditTrail
from acgs.config import Settings
from acgs.entrypoints.callers import CallerResolver
from acgs.entrypoints.escalations_servicer import EscalationsServicer
from acgs.errors import AuditUnavailable, Unavailable
from acgs.service_layer.escalation_ports import EscalationTelemetry
from acgs.service_layer.escalations import EscalationService
from acgs.service_layer.escalator import JournalEscalator
from acgs.v1 import escalations_pb2

logger = logging.getLogger("acgs.bootstrap")

Closer = Callable[[], Awaitable[None]]


class Sweeper:
    """Expires due escalations, retries the incident outbox and closes the escalation groups
    other servers resolved, every ``interval_s``."""

    def __init__(self, *, service: EscalationService, escalator: JournalEscalator,
                 interval_s: float) -> None:
        self._service = service
        self._escalator = escalator
        self._interval_s = max(0.1, interval_s)
        self._task: asyncio.Task[None] | None = None
        self._seq: int | None = None  # escalation events read for closed groups

    async def start(self) -> None:
        """One sweep now (awaited), then one every interval in the background."""
        await self._once()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="acgs-sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._once()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self._once()

    async def _once(self) -> None:
        try:
            await self._escalator.retry_outbox()
            # A group resolved on another server stops taking this server's decisions.
            closed, self._seq = await self._service.closed_since(self._seq)
            self._escalator.closed_elsewhere(closed)
            expired = await self._service.sweep()
            if expired:
                logger.info("expired %d escalation(s)", expired)
        except (Unavailable, AuditUnavailable) as err:
            logger.warning("escalation sweep failed, retrying later: %s", err)
        except Exception:
            logger.exception("escalation sweep failed")


@dataclass
class Escalations:
    """The wired escalations: the DecisionService's escalator, the use cases, the lifecycle."""

    escalator: JournalEscalator
    service: EscalationService
    starters: list[Closer] = field(default_factory=list)
    closers: list[Closer] = field(default_factory=list)
    stoppers: list[Closer] = field(default_factory=list)

    def services(self, callers: CallerResolver) -> list[tuple[Any, object]]:
        """acgs.v1.Escalations for the gRPC server."""
        servicer = EscalationsServicer(service=self.service, callers=callers)
        return [(escalations_pb2.DESCRIPTOR.services_by_name["Escalations"], servicer)]


async def build_escalations(settings: Settings, *, trail: AuditTrail,
                            telemetry: EscalationTelemetry) -> Escalations:
    """Wire escalations on the audit trail's (migrated) database; see the module docstring."""
    pool = GatedPool(trail.conninfo, min_size=1, max_size=4, open=False,
                     name="acgs-escalations", timeout=5.0,
                     check=AsyncConnectionPool.check_connection, kwargs={"autocommit": True})
    pool.gate = lambda: trail.database.ready  # not before the migration and its check
    await pool.open()
    store = PgEscalationStore(pool=pool)
    bell = PgBell(conninfo=trail.conninfo)
    escalator = JournalEscalator(
        journal=trail.journal, store=store, telemetry=telemetry,
        instance_id=settings.instance_id, constitutional_hash=settings.constitutional_hash,
        ttl_s=settings.escalation_ttl_s,
        required_approvals=settings.escalation_required_approvals,
        group_window_s=settings.escalation_group_s)
    service = EscalationService(
        store=store, audit=trail.journal, bell=bell, telemetry=telemetry,
        instance_id=settings.instance_id, constitutional_hash=settings.constitutional_hash,
        on_closed=escalator.closed)
    sweeper = Sweeper(service=service, escalator=escalator,
                      interval_s=settings.escalation_sweep_s)
    return Escalations(escalator=escalator, service=service,
                       starters=[bell.start, sweeper.start],
                       closers=[pool.close, bell.close, sweeper.stop],  # run reversed
                       stoppers=[bell.close])
