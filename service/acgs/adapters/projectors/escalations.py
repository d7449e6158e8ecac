"""The escalation projector: the one writer of escalations, escalation_events, escalation_aliases.

It applies, in journal order:

* ``escalation.opened`` / ``incident.opened``: the escalation is created once
  (shipping its record again changes nothing). With grouping (``group_s`` > 0,
  ACGS_ESCALATION_GROUP_S), an opening whose group has a pending escalation
  opened within ``group_s`` of it (on another server) is merged into that one:
  its id becomes an alias, which reads as the escalation it was merged into.
  A second pending incident with the same ``dedup_key`` is merged the same way.
  Records written before typed events (kind "escalation", event "opened") open
  theirs too (:func:`acgs.adapters.projectors.typed`).
* ``escalation.changed``: the new state, approvals and resolution, applied
  once per event id (``escalation_events.event_id``, the record's id), and only
  to the escalation as the change found it: in ``from_state``, with the
  approvals it had. A change that finds the escalation moved on (its server's
  own commit failed and another change was made since) is refused with
  :class:`ProjectionError` "superseded", so its record is quarantined: the
  audit trail never shows a change applied over one it did not see. Legacy
  change records were applied by the server that made them: nothing to do.
* ``decision``: each decision carrying the id of an escalation it did not open
  (a later decision of a group, across servers too) adds to that escalation's
  ``count``; a retried decision (``decision_retries``, written by the decision
  projector that runs before this one) is not counted, and its escalation id
  becomes an alias of the first decision's escalation unless it stands on its
  own. An approval's ALLOW (a decision whose ``data`` names the escalation it
  approved) is checked against the escalation it names: if that escalation was
  not approved by this decision, the record is refused like a superseded change.

Every event recorded in ``escalation_events`` goes through the SQL function
``acgs_escalation_event`` (migration 0012): it takes the advisory lock that
makes event seqs visible in seq order and notifies the watchers; it reads the
escalation row, never any JSON of the journal. This projector takes the same
lock first, before any row lock, as every other writer does, so writers never
deadlock. Parameters are typed values: no SQL parses an event's JSON.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

from psycopg.types.json import Jsonb

from acgs.adapters.projectors import Plan, ProjectionError, Statement, typed
from acgs.domain import escalation as esc
from acgs.domain import events
from acgs.domain.audit import AuditRecord
from acgs.domain.escalation import Escalation

LOCK_KEY = 0x4AC6E5C1  # the escalation writers' advisory lock (migrations 0003, 0012)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

_LOCK = Statement("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
_KNOWN = ("SELECT EXISTS (SELECT 1 FROM escalation_aliases WHERE alias = %(id)s) "
          "OR EXISTS (SELECT 1 FROM escalations WHERE id = %(id)s)")
_GROUP_HEAD = (
    "SELECT id FROM escalations WHERE group_key = %s AND state IN ('open', 'acknowledged') "
    "AND expires_at > now() AND created_at BETWEEN %s AND %s AND id <> %s "
    "ORDER BY created_at, id LIMIT 1")
_DEDUP_HEAD = ("SELECT id FROM escalations WHERE dedup_key = %s "
               "AND state IN ('open', 'acknowledged') LIMIT 1")
_INSERT = (
    "INSERT INTO escalations (id, decision_id, reason, severity, message, requester_id, "
    "requester_role, principal_id, tenant_id, request_id, effect, violations, policy_revision, "
    "instance_id, constitutional_hash, required_approvals, dedup_key, created_at, expires_at, "
    "group_key, requester_identity, last_seen_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, "
    "%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING id")
# Kept flat: an alias always names a row of escalations (one hop).
_MERGE = (
    "WITH t AS (SELECT e.id FROM escalations e "
    "           WHERE e.id = acgs_escalation_target(%(target)s) AND e.id <> %(alias)s), "
    "flat AS (UPDATE escalation_aliases SET escalation_id = (SELECT id FROM t) "
    "         WHERE escalation_id = %(alias)s AND EXISTS (SELECT 1 FROM t)) "
    "INSERT INTO escalation_aliases (alias, escalation_id) SELECT %(alias)s, id FROM t "
    "ON CONFLICT (alias) DO NOTHING")
_EVENT = "SELECT acgs_escalation_event(%s, %s, %s, %s)"
_CURRENT = (
    "SELECT e.id, e.state, e.approvals, "
    "EXISTS (SELECT 1 FROM escalation_events v WHERE v.event_id = %s) "
    "FROM escalations e WHERE e.id = acgs_escalation_target(%s) FOR UPDATE")
_CHANGE = (
    "UPDATE escalations SET state = %s, approvals = %s, acknowledged_by = %s, "
    "acknowledged_at = %s, resolved_by = %s, resolved_at = %s, resolution_comment = %s, "
    "approval_decision_id = %s, updated_at = now() WHERE id = %s")
_APPROVED_BY = ("SELECT approval_decision_id FROM escalations "
                "WHERE id = acgs_escalation_target(%s)")
_RETRIES = (
    "SELECT x.decision_id, k.escalation_id "
    "FROM unnest(%s::uuid[], %s::text[], %s::text[]) AS x(decision_id, caller_id, request_id) "
    "JOIN decision_retries d ON d.decision_id = x.decision_id "
    "JOIN idempotency_keys k ON k.caller_id = x.caller_id AND k.request_id = x.request_id")
# The opening decision is in the count from the start (1); retries are not counted.
_COUNT = (
    "UPDATE escalations e SET count = e.count + c.n, "
    "last_seen_at = greatest(e.last_seen_at, c.last) "
    "FROM (SELECT t.id, count(*) AS n, max(t.at) AS last "
    "      FROM (SELECT acgs_escalation_target(x.esc) AS id, x.decision_id, x.at "
    "            FROM unnest(%s::uuid[], %s::uuid[], %s::timestamptz[]) "
    "                 AS x(decision_id, esc, at) "
    "            WHERE NOT EXISTS (SELECT 1 FROM decision_retries d "
    "                              WHERE d.decision_id = x.decision_id)) t "
    "      JOIN escalations x ON x.id = t.id "
    "      WHERE x.decision_id IS DISTINCT FROM t.decision_id GROUP BY t.id) c "
    "WHERE e.id = c.id")


class EscalationProjector:
    """See the module docstring. ``group_s``: ACGS_ESCALATION_GROUP_S (0: no merging of
    groups across servers)."""

    kinds = frozenset({events.ESCALATION_OPENED, events.INCIDENT_OPENED,
                       events.ESCALATION_CHANGED, events.DECISION})

    def __init__(self, *, group_s: float = 0.0) -> None:
        self._group = dt.timedelta(seconds=max(0.0, group_s))

    def project(self, records: Sequence[AuditRecord]) -> Plan:
        changes: list[AuditRecord] = []  # openings, changes and approvals, in journal order
        joined: list[tuple[AuditRecord, uuid.UUID, uuid.UUID]] = []  # (record, id, escalation)
        for record in records:
            if events.kind_of(record.kind, record.schema, record.request_json) != events.DECISION:
                changes.append(record)
            elif record.data or record.kind == "approval":
                if record.schema >= 1:  # legacy approvals were checked by their server
                    changes.append(record)
            elif record.escalation_id:
                joined.append((record, _event_id(record),
                               _uuid(record, record.escalation_id, "escalation_id")))
        if not changes and not joined:
            return
        yield _LOCK
        if joined:
            yield from _alias_retries(joined)
        for record in changes:
            event = typed(record)
            if isinstance(event, events.EscalationOpened):  # incidents too
                yield from self._open(record, event.escalation)
            elif isinstance(event, events.EscalationChanged):
                yield from _change(record, event)
            elif isinstance(event, events.ApprovalOf):
                yield from _check_approval(record, event)
        if joined:
            yield Statement(_COUNT, (
                [d for _, d, _ in joined], [key for _, _, key in joined],
                [_EPOCH + dt.timedelta(microseconds=r.decided_at_us) for r, _, _ in joined]))

    def _open(self, record: AuditRecord, e: Escalation) -> Plan:
        key = _uuid(record, e.id, "escalation id")
        known = yield Statement(_KNOWN, {"id": key})
        if known[0][0]:
            return  # shipped before, or merged into another escalation already
        if self._group and e.group_key:
            head = yield Statement(_GROUP_HEAD, (e.group_key, e.created_at - self._group,
                                                 e.created_at + self._group, key))
            if head:
                yield _merge(key, head[0][0])
                return
        opened = yield Statement(_INSERT, (
            key, _uuid(record, e.decision_id, "decision id") if e.decision_id else None,
            e.reason, e.severity.value, e.message, e.requester_id, e.requester_role,
            e.principal_id, e.tenant_id, e.request_id, e.effect.value,
            Jsonb([v.as_dict() for v in e.violations]), e.policy_revision, e.instance_id,
            e.constitutional_hash, e.required_approvals, e.dedup_key or None, e.created_at,
            e.expires_at, e.group_key or None, e.requester_identity, e.created_at))
        if opened:
            yield Statement(_EVENT, (key, esc.OPENED, e.requester_id, _event_id(record)))
            return
        # Not inserted although its id is new: a pending incident holds its dedup_key.
        if e.dedup_key:
            head = yield Statement(_DEDUP_HEAD, (e.dedup_key,))
            if head:
                yield _merge(key, head[0][0])
                return
        raise ProjectionError(record, f"escalation {e.id} could not be opened")


def _change(record: AuditRecord, event: events.EscalationChanged) -> Plan:
    key = _uuid(record, event.escalation_id, "escalation id")
    rows = yield Statement(_CURRENT, (_event_id(record), key))
    if not rows:
        raise ProjectionError(record, f"no escalation {event.escalation_id}")
    target, state, approvals, applied = rows[0]
    if applied:
        return  # applied by the server that made it (or shipped before)
    found = [str(a.get("approver_id")) for a in approvals or ()]
    made_on = [a.approver_id for a in event.approvals]
    if event.change in (esc.APPROVAL, esc.APPROVED):
        made_on = made_on[:-1]  # the approval this change added
    if state != event.from_state.value or found != made_on:
        raise ProjectionError(
            record, f"superseded: escalation {event.escalation_id} is {state} with approvals "
            f"{found}; the {event.change} change was made on {event.from_state.value} "
            f"with {made_on}")
    yield Statement(_CHANGE, (
        event.state.value,
        Jsonb([{"approver_id": a.approver_id, "approver_role": a.approver_role,
                "approved_at": a.approved_at.isoformat(), "comment": a.comment,
                "approver_identity": a.approver_identity} for a in event.approvals]),
        event.acknowledged_by or None, event.acknowledged_at, event.resolved_by or None,
        event.resolved_at, event.resolution_comment,
        _uuid(record, event.approval_decision_id, "approval decision id")
        if event.approval_decision_id else None, target))
    yield Statement(_EVENT, (target, event.change, record.caller_id, _event_id(record)))


def _check_approval(record: AuditRecord, event: events.ApprovalOf) -> Plan:
    key = _uuid(record, event.escalation_id, "approval_of")
    rows = yield Statement(_APPROVED_BY, (key,))
    approved_by = str(rows[0][0]) if rows and rows[0][0] is not None else ""
    if approved_by != record.decision_id:
        raise ProjectionError(record, f"escalation {event.escalation_id} was not approved by "
                              "this decision (its approval was superseded or never applied)")


def _alias_retries(joined: list[tuple[AuditRecord, uuid.UUID, uuid.UUID]]) -> Plan:
    """A retry's escalation id becomes an alias of its first decision's escalation (unless
    the retry's escalation stands on its own): what a loop of retries opened is one."""
    rows = yield Statement(_RETRIES, ([d for _, d, _ in joined],
                                      [r.caller_id for r, _, _ in joined],
                                      [r.request_id for r, _, _ in joined]))
    first = {decision: str(escalation_id) for decision, escalation_id in rows}
    for _, decision, key in joined:
        original = _maybe_uuid(first.get(decision, ""))
        if original is None or original == key:
            continue
        stands = yield Statement("SELECT 1 FROM escalations WHERE id = %s", (key,))
        if not stands:
            yield _merge(key, original)


def _merge(alias: uuid.UUID, target: uuid.UUID) -> Statement:
    return Statement(_MERGE, {"alias": alias, "target": target})


def _event_id(record: AuditRecord) -> uuid.UUID:
    return _uuid(record, record.decision_id, "event id")


def _uuid(record: AuditRecord, value: str, what: str) -> uuid.UUID:
    key = _maybe_uuid(value)
    if key is None:
        raise ProjectionError(record, f"its {what} {value!r} is not a UUID")
    return key


def _maybe_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
