"""The shipper's fallback when PostgreSQL refuses a batch for its content.

A record can be refused for what it holds (an index row too large, a value
PostgreSQL cannot store, a CHECK): such a refusal repeats on every retry, so
retrying alone would wedge the trail behind one record. The batch is then
shipped again in one transaction, each refused slice halved under a savepoint
until the refused records stand alone; each is moved, verbatim (its journal
line) with the database's error text, to ``audit_quarantine``, along with the
batch's damaged lines (:mod:`acgs.adapters.journal_lines`), in the transaction
that ships the others.
Errors of other kinds (connection lost, a bug in our SQL) are not content: they
propagate and the shipper retries the whole batch later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import psycopg
from psycopg.rows import TupleRow

from acgs.adapters.journal_lines import Damaged
from acgs.adapters.journal_reader import ShipBatch
from acgs.adapters.projectors import ProjectionError

logger = logging.getLogger("acgs.audit.shipper")

# SQLSTATE classes that say "this data", not "this connection" or "this statement":
# 22 data exception, 23 integrity constraint violation, 54 program limit exceeded
# (e.g. "index row size exceeds btree maximum").
_CONTENT_CLASSES = frozenset({"22", "23", "54"})
_INSERT = ("INSERT INTO audit_quarantine (instance_id, seq, source, line, reason) "
           "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (instance_id, seq) DO NOTHING")
_MAX_REASON = 2000

ShipSlice = Callable[[psycopg.Cursor[TupleRow], int, int], int]
"""Ships the batch's records ``[lo:hi]`` in the open transaction; rows inserted."""


def refused_for_content(err: BaseException) -> bool:
    """True when PostgreSQL (or the encoding on the way) refused data, not the connection."""
    # UnicodeError: a string no encoding can carry; psycopg's own DataError (no SQLSTATE):
    # a value it will not send, such as NUL in text.
    # ProjectionError: an event its projector cannot apply (acgs.adapters.projectors).
    if isinstance(err, (UnicodeError, psycopg.DataError, psycopg.IntegrityError,
                        ProjectionError)):
        return True
    sqlstate = getattr(err, "sqlstate", None) if isinstance(err, psycopg.Error) else None
    return isinstance(sqlstate, str) and sqlstate[:2] in _CONTENT_CLASSES


def ship_bisecting(conn: psycopg.Connection[TupleRow], instance_id: str, batch: ShipBatch,
                   ship: ShipSlice) -> tuple[int, int]:
    """Ship ``batch`` (known to hold a refused record) in one transaction, halving each
    refused slice under a savepoint down to the records refused alone; quarantine those.

    One bad record among n costs about 2 log2(n) attempts. Slices are shipped in seq
    order. Returns (rows inserted, records quarantined); raises what is not a content error.
    """
    n = len(batch.records)
    inserted, refused = 0, []
    pending = [(0, n // 2), (n // 2, n)] if n > 1 else [(0, n)]
    with conn.transaction(), conn.cursor() as cur:
        while pending:
            lo, hi = pending.pop(0)
            if lo == hi:
                continue
            try:
                with conn.transaction():  # a savepoint: a refusal undoes this slice only
                    inserted += ship(cur, lo, hi)
            except Exception as err:
                if not refused_for_content(err):
                    raise
                if hi - lo > 1:
                    mid = (lo + hi) // 2
                    pending[0:0] = [(lo, mid), (mid, hi)]
                    continue
                refused.append(_refused(instance_id, batch, lo, err))
        quarantined = insert_quarantine(cur, instance_id, refused + batch.damaged)
    return inserted, quarantined


def _refused(instance_id: str, batch: ShipBatch, i: int, err: BaseException) -> Damaged:
    line, source = batch.lines[i]
    seq = batch.records[i].seq
    reason = (f"projection failed: {err}" if isinstance(err, ProjectionError)
              else f"refused by PostgreSQL: {describe(err)}")
    logger.critical("audit record %s seq %d quarantined: %s", instance_id, seq, reason)
    return Damaged(seq, source, line, reason)


def insert_quarantine(cur: psycopg.Cursor[TupleRow], instance_id: str,
                      items: Sequence[Damaged]) -> int:
    """Insert ``items`` into ``audit_quarantine`` (once per seq); the rows inserted."""
    count = 0
    for item in items:
        cur.execute(_INSERT, (instance_id, item.seq, item.source, item.line,
                              item.reason[:_MAX_REASON]))
        count += max(0, cur.rowcount)
    return count


def describe(err: BaseException) -> str:
    """The database's error as it said it: SQLSTATE and message."""
    sqlstate = getattr(err, "sqlstate", None)
    text = str(err).strip()
    return f"{sqlstate}: {text}" if sqlstate else f"{type(err).__name__}: {text}"
