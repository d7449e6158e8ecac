"""What the audit trail is asked, and what it answers: filters, pages, chain reports."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from acgs.domain import events
from acgs.domain.audit import AuditRecord, ChainBreak
from acgs.domain.model import Effect
from acgs.errors import InvalidRequest


@dataclass(frozen=True, slots=True)
class DecisionFilter:
    """Which records to list; empty fields match everything. ``until_us`` is exclusive."""

    since_us: int | None = None
    until_us: int | None = None
    principal_id: str = ""
    tenant_id: str = ""
    effect: Effect | None = None
    policy_revision: str = ""
    instance_id: str = ""


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events to list; empty fields match everything. ``kinds`` are event kinds
    (:data:`acgs.domain.events.KINDS`), ``actor`` a caller id, ``until_us`` exclusive."""

    kinds: frozenset[str] = frozenset()
    actor: str = ""
    since_us: int | None = None
    until_us: int | None = None
    instance_id: str = ""
    after_seq: int = 0  # only records of ``instance_id`` after this seq

    def matches(self, record: AuditRecord) -> bool:
        """Whether ``record`` is an event of ``kinds`` (a legacy record by the event it is)."""
        return not self.kinds or events.kind_of(
            record.kind, record.schema, record.request_json) in self.kinds


def event_kinds(names: Iterable[str]) -> frozenset[str]:
    """``names`` as a set of event kinds; InvalidRequest naming the first unknown one."""
    kinds = frozenset(names)
    for name in sorted(kinds):
        if name not in events.KINDS:
            raise InvalidRequest(f"unknown event kind {name!r}; kinds are "
                                 f"{', '.join(events.KINDS)}")
    return kinds


LEGACY_ESCALATION_KINDS = frozenset({events.ESCALATION_OPENED, events.ESCALATION_CHANGED,
                                     events.INCIDENT_OPENED})
"""The events a legacy "escalation" record may be (:func:`events.kind_of` tells which)."""


def stored_kinds(kinds: frozenset[str]) -> frozenset[str]:
    """The values of the records' ``kind`` column that may hold events of ``kinds``: the
    kinds themselves and the legacy kinds (schema 0) that :func:`events.kind_of` maps to
    them. A legacy "escalation" may be opened (an incident, or not) or changed:
    :meth:`EventFilter.matches` tells, from the record."""
    stored = set(kinds)
    stored.update(old for old, new in events.LEGACY_KINDS.items() if new in kinds)
    if kinds & LEGACY_ESCALATION_KINDS:
        stored.add("escalation")
    return frozenset(stored)


@dataclass(frozen=True, slots=True)
class Page:
    records: list[AuditRecord]
    next_cursor: str  # "" after the last page
    resume_cursor: str = ""  # after the last record read (events: to follow the trail)


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A seq of a chain whose journal line sits in quarantine, where it was read, and why."""

    seq: int
    source: str
    reason: str


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The outcome of a chain check: ``ok``, or the first break."""

    instance_id: str
    from_seq: int
    last_seq: int  # the last seq checked and found good (from_seq - 1 if none)
    checked: int
    broken: ChainBreak | None
    quarantined: tuple[Quarantined, ...] = ()
    """Seqs held by quarantined lines (present, not records): see acgs.adapters.pg_quarantine."""
    # Signed checkpoints (acgs.domain.chain_verify): the latest valid one, if any.
    checkpoint_seq: int = 0  # the seq it signed
    checkpoint_record_seq: int = 0  # its own record's seq (checkpoint_seq + 1)
    checkpoint_at_us: int = 0
    checkpoints_checked: int = 0
    keys_used: tuple[str, ...] = ()  # key ids of the keys whose signatures were accepted
    trust: str = ""  # which keys the verifier trusts, and why
    notes: tuple[str, ...] = ()  # what this check could not prove

    @property
    def ok(self) -> bool:
        return self.broken is None


@dataclass(frozen=True, slots=True)
class ChainInfo:
    instance_id: str
    first_seq: int
    last_seq: int
    records: int
    checkpoints: int = 0  # signed checkpoints kept apart from the chain (audit_checkpoints)
