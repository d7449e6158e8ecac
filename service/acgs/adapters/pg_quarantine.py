"""The shipper's fallback when PostgreSQL refuses a batch for its content.

A record can be refused for what it holds (an index row too large, a value
PostgreSQL cannot store, a CHECK): such a refusal repeats on every retry, so
retrying alone would wedge the trail behind one record. The batch is then
shipped again record by record, each under a savepoint, in one transaction; a
record refused again is moved, verbatim (its journal line) with the database's
error text, to ``audit_quarantine``, along with the batch's damaged lines
(:mod:`acgs.adapters.journal_lines`), in the transaction that ships the others.
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

logger = logging.getLogger("acgs.audit.shipper")

# SQLSTATE classes that say "this data", not "this connection" or "this statement":
# 22 data exception, 23 integrity constraint violation, 54 program limit exceeded
# (e.g. "index row size exceeds btree maximum").
_CONTENT_CLASSES = frozenset({"22", "23", "54"})
_INSERT = ("INSERT INTO audit_quarantine (instance_id, seq, source, line, reason) "
           "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (instance_id, seq) DO NOTHING")
_MAX_REASON = 2000

ShipOne = Callable[[psycopg.Cursor[TupleRow], int], int]
"""Ships the batch's record at an index in the open transaction; rows inserted."""


def refused_for_content(err: BaseException) -> bool:
    """True when PostgreSQL (or the encoding on the way) refused data, not the connection."""
    # UnicodeError: a string no encoding can carry; psycopg's own DataError (no SQLSTATE):
    # a value it will not send, such as NUL in text.
    if isinstance(err, (UnicodeError, psycopg.DataError, psycopg.IntegrityError)):
        return True
    sqlstate = getattr(err, "sqlstate", None) if isinstance(err, psycopg.Error) else None
    return isinstance(sqlstate, str) and sqlstate[:2] in _CONTENT_CLASSES


def ship_one_by_one(conn: psycopg.Connection[TupleRow], instance_id: str, batch: ShipBatch,
                    ship: ShipOne) -> tuple[int, int]:
    """Ship ``batch`` record by record in one transaction; quarantine what is refused.

    Returns (rows inserted, records quarantined). Raises what is not a content error.
    """
    inserted, refused = 0, []
    with conn.transaction(), conn.cursor() as cur:
        for i, record in enumerate(batch.records):
            try:
                with conn.transaction():  # a savepoint: a refusal undoes this record only
                    inserted += ship(cur, i)
            except Exception as err:
                if not refused_for_content(err):
                    raise
                line, source = batch.lines[i]
                reason = f"refused by PostgreSQL: {describe(err)}"
                refused.append(Damaged(record.seq, source, line, reason))
                logger.critical("audit record %s seq %d quarantined: %s", instance_id,
                                record.seq, reason)
        quarantined = insert_quarantine(cur, instance_id, refused + batch.damaged)
    return inserted, quarantined


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
