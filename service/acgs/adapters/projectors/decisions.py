"""The ``decision`` projector: ``request_id`` as an idempotency key across the fleet.

A server replays its own decisions (:mod:`acgs.service_layer.idempotency`); a
retry that reached another server (the first one died, a load balancer moved
it) is decided again there, and the two records meet only in PostgreSQL. This
projector is where they meet, the only writer of two tables:

- ``idempotency_keys``: per (caller, ``request_id``), the first decision
  PostgreSQL saw, the SHA-256 of its ``request_json`` (UTF-8) and its time. A
  later decision takes the key over only when its body differs or it came more
  than the window after the holder; an earlier one arriving late never does.
  Keys older than the window plus a day (past any journal that could still be
  late) are deleted, in each batch; those the batch itself names wait for a later
  one (one statement cannot both write a row and delete it).
- ``decision_retries``: every other decision of a key with the holder's digest
  within the window is linked to it (``retry_of``), once. Both records stay in
  ``audit_decisions``.

The key also names the escalation of the request (the first decision's; the
first escalated retry's, in journal order, when the first was not escalated),
which the escalation projector, running next, merges a retry's escalation into.

Approval decisions (``data`` names the escalation approved; legacy kind
"approval") answer no request and are never keys or retries. Legacy "decide"
records are decisions like any other. Each batch costs two statements whatever
its size (three when a retry brings a request's first escalation): the lock
that orders projections across servers, and one set-based statement over
arrays of typed columns. Nothing here parses JSON: the digest is computed in
Python from the record's bytes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from acgs.adapters.pg_escalations import LOCK_KEY
from acgs.adapters.projectors import Plan, Statement
from acgs.domain import events
from acgs.domain.audit import AuditRecord

LATE_S = 86400.0
"""How long past the window a key is kept for journals that reach PostgreSQL late."""

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_UUID_SQL = "'^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'"

# The escalations' lock (taken by every projection that writes keys or escalations, and
# by the escalation store): the projections of concurrent shippers apply one by one.
_LOCK = f"SELECT pg_advisory_xact_lock({LOCK_KEY})"

# One statement per batch. In its snapshot, ``idempotency_keys`` is the table as it was
# before the statement (the lock, taken in an earlier statement, makes that every
# committed projection's keys); a key the batch took is read from ``taken`` instead.
# The first decision of each key in the batch takes it, unless a live holder with the
# same body holds it (or an earlier decision: then it is that one's retry).
_PROJECT = """
WITH b AS (
    SELECT * FROM unnest(%(caller)b::text[], %(rid)b::text[], %(did)b::text[]::uuid[],
                         %(digest)b::bytea[], %(at_us)b::int8[], %(esc)b::text[])
        WITH ORDINALITY AS b(caller_id, request_id, decision_id, digest, at_us,
                             escalation_id, n)
), batch AS (
    SELECT caller_id, request_id, decision_id, digest, escalation_id, n,
           timestamptz 'epoch' + at_us * interval '1 microsecond' AS decided_at
      FROM b
), first AS (
    SELECT DISTINCT ON (caller_id, request_id) * FROM batch ORDER BY caller_id, request_id, n
), taken AS (
    INSERT INTO idempotency_keys AS k (caller_id, request_id, decision_id, digest,
                                       decided_at, escalation_id)
    SELECT caller_id, request_id, decision_id, digest, decided_at, escalation_id FROM first
    ON CONFLICT (caller_id, request_id) DO UPDATE
       SET decision_id = excluded.decision_id, digest = excluded.digest,
           decided_at = excluded.decided_at, escalation_id = excluded.escalation_id
     WHERE k.decided_at < excluded.decided_at
       AND (k.digest <> excluded.digest
            OR k.decided_at < excluded.decided_at - make_interval(secs => %(window)s))
    RETURNING k.caller_id, k.request_id, k.decision_id, k.digest, k.decided_at
), held AS (
    SELECT * FROM taken
    UNION ALL
    SELECT k.caller_id, k.request_id, k.decision_id, k.digest, k.decided_at
      FROM idempotency_keys k JOIN first f USING (caller_id, request_id)
     WHERE NOT EXISTS (SELECT 1 FROM taken t
                        WHERE t.caller_id = k.caller_id AND t.request_id = k.request_id)
), old AS (
    DELETE FROM idempotency_keys k
     WHERE k.decided_at < now() - make_interval(secs => %(keep)s)
       AND NOT EXISTS (SELECT 1 FROM first f
                        WHERE f.caller_id = k.caller_id AND f.request_id = k.request_id)
)
INSERT INTO decision_retries (decision_id, retry_of)
SELECT batch.decision_id, held.decision_id
  FROM batch JOIN held USING (caller_id, request_id)
 WHERE held.decision_id <> batch.decision_id AND held.digest = batch.digest
   AND abs(extract(epoch FROM batch.decided_at - held.decided_at)) <= %(window)s
ON CONFLICT (decision_id) DO NOTHING
RETURNING decision_id::text
"""

# A request whose first decision was not escalated takes the escalation of its first
# retry that was (the escalation projector merges later retries' escalations into it).
_ADOPT = f"""
UPDATE idempotency_keys k SET escalation_id = v.escalation_id
  FROM unnest(%b::text[], %b::text[], %b::text[]) AS v(caller_id, request_id, escalation_id)
 WHERE k.caller_id = v.caller_id AND k.request_id = v.request_id
   AND k.escalation_id !~ {_UUID_SQL}
"""


def keyed(record: AuditRecord) -> bool:
    """Whether ``record`` (a decision) is one of a request under an idempotency key:
    it names a ``request_id`` and is no approval's ALLOW."""
    return bool(record.request_id) and not record.data and record.kind != "approval"


class DecisionProjector:
    """Maintains ``idempotency_keys`` and ``decision_retries`` (see the module docstring);
    ``window_s`` is ACGS_IDEMPOTENCY_WINDOW_S."""

    kinds = frozenset({events.DECISION})

    def __init__(self, *, window_s: float) -> None:
        if not window_s >= 0:
            raise ValueError(f"the idempotency window must be >= 0 s, not {window_s!r}")
        self._window_s = float(window_s)

    def project(self, records: Sequence[AuditRecord]) -> Plan:
        chosen = [r for r in records if keyed(r)]
        if not chosen:
            return
        yield Statement(_LOCK)
        sha256 = hashlib.sha256
        linked = yield Statement(_PROJECT, {
            "caller": [r.caller_id for r in chosen],
            "rid": [r.request_id for r in chosen],
            "did": [r.decision_id for r in chosen],
            "digest": [sha256(r.request_json.encode()).digest() for r in chosen],
            "at_us": [r.decided_at_us for r in chosen],
            "esc": [r.escalation_id for r in chosen],
            "window": self._window_s,
            "keep": self._window_s + LATE_S,
        })
        if not linked:
            return
        retries = {row[0] for row in linked}
        adopt: dict[tuple[str, str], str] = {}
        for r in chosen:  # journal order: the first escalated retry of each request
            if r.decision_id.lower() in retries and _UUID.fullmatch(r.escalation_id):
                adopt.setdefault((r.caller_id, r.request_id), r.escalation_id)
        if adopt:
            yield Statement(_ADOPT, ([k[0] for k in adopt], [k[1] for k in adopt],
                                     list(adopt.values())))
