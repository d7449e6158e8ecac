"""Signed checkpoints in PostgreSQL (migration 0007): reading the shipper's copy.

The copy is made by :mod:`acgs.adapters.projectors.checkpoints`.
"""

from __future__ import annotations

from psycopg import sql

from acgs.adapters.pg_audit import COLUMNS

SELECT = sql.SQL("SELECT {} FROM audit_checkpoints").format(
    sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS))

SOURCE = "audit_checkpoints"
"""The ``source`` of a record read from the checkpoints' own table (in exports)."""


def chains_sql() -> sql.Composable:
    """Every instance with records or checkpoints: first/last seq, records, checkpoints."""
    return sql.SQL(
        "SELECT i.instance_id, coalesce(d.first, 0), coalesce(d.last, 0), coalesce(d.n, 0), "
        "coalesce(c.n, 0) FROM (SELECT instance_id FROM audit_decisions UNION "
        "SELECT instance_id FROM audit_checkpoints) i "
        "LEFT JOIN (SELECT instance_id, min(seq) AS first, max(seq) AS last, count(*) AS n "
        "FROM audit_decisions GROUP BY instance_id) d ON d.instance_id = i.instance_id "
        "LEFT JOIN (SELECT instance_id, count(*) AS n FROM audit_checkpoints "
        "GROUP BY instance_id) c ON c.instance_id = i.instance_id ORDER BY i.instance_id")
