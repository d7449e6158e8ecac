"""The ports the escalation use cases consume (adapters: :mod:`acgs.adapters.pg_escalations`,
:mod:`acgs.adapters.pg_notify`, :mod:`acgs.adapters.journal`, :mod:`acgs.metrics`)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from acgs.domain.escalation import Escalation, EscalationEvent, EscalationFilter, EscalationPage
from acgs.service_layer.ports import Entry, EventEntry


class Transaction(Protocol):
    """One write transaction of the store; committed when its block ends normally."""

    async def due(self, *, limit: int) -> tuple[list[Escalation], dt.datetime]:
        """Pending escalations past their expiry (locked; other servers skip them)."""
        ...

    async def lock(self, escalation_id: str) -> tuple[Escalation, dt.datetime]:
        """The escalation, locked until the end of the transaction, and the database's now.

        Raises InvalidRequest (not a UUID) or NotFound."""
        ...

    async def request_json(self, decision_id: str) -> str | None:
        """The audited request of decision ``decision_id``, read in this transaction."""
        ...

    async def apply(self, entry: EventEntry) -> Escalation | None:
        """Apply the journaled ``escalation.changed`` event ``entry`` (as the shipper will);
        the escalation after it, or None when it moved on since (nothing applied)."""
        ...


class EscalationStore(Protocol):
    """Where escalations live. Every method raises ``Unavailable`` when it cannot be reached."""

    def transaction(self) -> AbstractAsyncContextManager[Transaction]: ...

    async def get(self, escalation_id: str) -> tuple[Escalation, dt.datetime]: ...

    async def list_page(self, where: EscalationFilter, *, page_size: int,
                   cursor: str = "") -> tuple[EscalationPage, dt.datetime]: ...

    async def events_after(self, seq: int, *, limit: int) -> list[EscalationEvent]: ...

    async def last_seq(self) -> int: ...

    async def any_due(self) -> bool: ...

    async def open_counts(self) -> dict[tuple[str, str], int]: ...

    async def closed_after(self, seq: int, *, limit: int = 1000) -> tuple[set[str], int]: ...

    async def open_incident(self, entry: EventEntry) -> None:
        """Record ``entry`` (``incident.opened``) and open its escalation, in one step."""
        ...


class Bell(Protocol):
    """Rings when escalation events were recorded (by any server); see PgBell."""

    closed: bool

    def next_ring(self) -> asyncio.Future[None]: ...

    async def wait(self, ring: asyncio.Future[None], *, timeout_s: float) -> None: ...


class ReservingSink(Protocol):
    """The audit journal: an AuditSink that can take a record past its backlog bound."""

    async def append(self, entries: Sequence[Entry], *, reserve: bool = False) -> None: ...


class EscalationTelemetry(Protocol):
    """What the escalation use cases report to metrics (see :mod:`acgs.metrics`)."""

    def escalation_created(self, *, reason: str) -> None: ...

    def escalation_limited(self) -> None:
        """A decision denied instead of opening an escalation past its caller's cap."""
        ...

    def escalation_resolved(self, *, reason: str, outcome: str, duration_s: float) -> None: ...

    def set_open_escalations(self, counts: Mapping[tuple[str, str], int]) -> None: ...
