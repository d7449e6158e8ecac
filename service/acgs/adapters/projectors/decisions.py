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
records are decisions like any other.

Each batch costs one statement whatever its size (two when a retry brings a
request's first escalation), which first takes the lock that orders projections
across servers. It runs at the shipper's rate, for every decision, on the
server's CPU: so only the records' seqs and the SHA-256 digests of their
``request_json`` (computed here from the record's bytes, as one bytea of 32-byte
digests) travel from Python; the other columns are read from the
``audit_decisions`` rows the shipper inserted earlier in the same transaction
(a projector runs after that insert; run before it, the projector says so
rather than project nothing). Nothing here parses JSON.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from hashlib import sha256 as _sha256

from acgs.adapters.projectors import Plan, Statement
from acgs.adapters.projectors.escalations import LOCK_KEY
from acgs.domain import events
from acgs.domain.audit import AuditRecord

LATE_S = 86400.0
"""How long past the window a key is kept for journals that reach PostgreSQL late."""

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_UUID_SQL = "'^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'"
# When the batch's first decision of a key takes it from its holder ``k``.
_TAKES_OVER = ("(k.decided_at < excluded.decided_at AND (k.digest <> excluded.digest "
               "OR k.decided_at < excluded.decided_at - make_interval(secs => %(window)s)))")

# One statement per batch, whatever its size. It first takes the escalations' advisory
# lock (taken by every projection that writes keys or escalations, and by the escalation
# store), so the projections of concurrent shippers apply one after another: ``first``
# reads ``lock``, so no key is written before the lock is held. Each key the batch names
# is then read from the upsert's RETURNING, never from the statement's snapshot (taken
# before the lock): a conflicting key is always "updated", to itself unless the batch's
# first decision of it takes it over (another body, or past the window; never an
# earlier decision arriving late), so RETURNING yields every key as it now stands.
_PROJECT = f"""
WITH lock AS MATERIALIZED (
    SELECT pg_advisory_xact_lock({LOCK_KEY})
), batch AS (
    SELECT a.caller_id, a.request_id, a.decision_id, a.decided_at, a.escalation_id, b.n,
           substring(%(digests)b::bytea FROM (b.n::int - 1) * 32 + 1 FOR 32) AS digest
      FROM unnest(%(seqs)b::int8[]) WITH ORDINALITY AS b(seq, n)
      JOIN audit_decisions a ON a.instance_id = %(instance)s AND a.seq = b.seq
), first AS (
    SELECT DISTINCT ON (caller_id, request_id) batch.*
      FROM batch CROSS JOIN lock ORDER BY caller_id, request_id, n
), held AS (
    INSERT INTO idempotency_keys AS k (caller_id, request_id, decision_id, digest,
                                       decided_at, escalation_id)
    SELECT caller_id, request_id, decision_id, digest, decided_at, escalation_id FROM first
    ON CONFLICT (caller_id, request_id) DO UPDATE SET
        decision_id = CASE WHEN {_TAKES_OVER} THEN excluded.decision_id ELSE k.decision_id END,
        digest = CASE WHEN {_TAKES_OVER} THEN excluded.digest ELSE k.digest END,
        decided_at = CASE WHEN {_TAKES_OVER} THEN excluded.decided_at ELSE k.decided_at END,
        escalation_id = CASE WHEN {_TAKES_OVER} THEN excluded.escalation_id
                             ELSE k.escalation_id END
    RETURNING k.caller_id, k.request_id, k.decision_id, k.digest, k.decided_at
), old AS (
    DELETE FROM idempotency_keys k
     WHERE k.decided_at < now() - make_interval(secs => %(keep)s)
       AND NOT EXISTS (SELECT 1 FROM first f
                        WHERE f.caller_id = k.caller_id AND f.request_id = k.request_id)
), linked AS (
    INSERT INTO decision_retries (decision_id, retry_of)
    SELECT batch.decision_id, held.decision_id
      FROM batch JOIN held USING (caller_id, request_id)
     WHERE held.decision_id <> batch.decision_id AND held.digest = batch.digest
       AND abs(extract(epoch FROM batch.decided_at - held.decided_at)) <= %(window)s
    ON CONFLICT (decision_id) DO NOTHING
    RETURNING decision_id
)
SELECT (SELECT count(*) FROM batch), array(SELECT decision_id::text FROM linked)
"""

# A request whose first decision was not escalated takes the escalation of its first
# retry that was (the escalation projector merges later retries' escalations into it).
_ADOPT = f"""
UPDATE idempotency_keys k SET escalation_id = v.escalation_id
  FROM unnest(%b::text[], %b::text[], %b::text[]) AS v(caller_id, request_id, escalation_id)
 WHERE k.caller_id = v.caller_id AND k.request_id = v.request_id
   AND k.escalation_id !~ {_UUID_SQL}
"""


class DecisionProjector:
    """Maintains ``idempotency_keys`` and ``decision_retries`` (see the module docstring);
    ``window_s`` is ACGS_IDEMPOTENCY_WINDOW_S."""

    kinds = frozenset({events.DECISION})

    def __init__(self, *, window_s: float) -> None:
        if not window_s >= 0:
            raise ValueError(f"the idempotency window must be >= 0 s, not {window_s!r}")
        self._window_s = float(window_s)

    def project(self, records: Sequence[AuditRecord]) -> Plan:
        keyed = [r for r in records if r.request_id and not r.data and r.kind != "approval"]
        retries: set[str] = set()
        for instance, chosen in _chains(keyed):  # the shipper's batches are of one chain
            rows = yield Statement(_PROJECT, {
                "instance": instance,
                "seqs": [r.seq for r in chosen],
                "digests": b"".join([_sha256(r.request_json.encode()).digest()
                                     for r in chosen]),
                "window": self._window_s,
                "keep": self._window_s + LATE_S,
            })
            found, linked = rows[0]
            if found != len(chosen):
                raise RuntimeError(
                    f"{len(chosen) - found} of {len(chosen)} decisions of {instance} are not "
                    "in audit_decisions: the decision projector runs after they are inserted")
            retries.update(linked)
        if not retries:
            return
        adopt: dict[tuple[str, str], str] = {}
        for r in keyed:  # journal order: a request's first escalated retry
            if (r.escalation_id and r.decision_id.lower() in retries
                    and _UUID.fullmatch(r.escalation_id)):
                adopt.setdefault((r.caller_id, r.request_id), r.escalation_id)
        if adopt:
            yield Statement(_ADOPT, ([k[0] for k in adopt], [k[1] for k in adopt],
                                     list(adopt.values())))


def _chains(records: list[AuditRecord]) -> list[tuple[str, list[AuditRecord]]]:
    """``records`` by chain, in order (one chain, the shipper's case, without a copy)."""
    if not records:
        return []
    if all(r.instance_id == records[0].instance_id for r in records):
        return [(records[0].instance_id, records)]
    chains: dict[str, list[AuditRecord]] = {}
    for r in records:
        chains.setdefault(r.instance_id, []).append(r)
    return list(chains.items())
