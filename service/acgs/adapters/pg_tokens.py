"""The token table (``auth_tokens``, migrations/0002_tokens.sql) in PostgreSQL.

Servers read it (``load``, every second); ``acgs token`` and a development
server's start write it. Every change is recorded as an event
(``token.created``, ``token.revoked``: :mod:`acgs.domain.events`) on the
PostgreSQL-side ``admin`` chain (:mod:`acgs.adapters.pg_event_chain`) in the
transaction that makes it: the change and its event commit together or not at
all. An event names the token (id, name, role, identity, expiry), never its
secret nor the secret's hash. Every method raises psycopg.Error (or
psycopg_pool.PoolTimeout) when PostgreSQL cannot be reached: the caller
decides whether that is fatal.
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg_pool import AsyncConnectionPool

from acgs.adapters import pg_event_chain
from acgs.domain import events
from acgs.domain.model import Caller
from acgs.domain.tokens import TokenRecord
from acgs.service_layer.ports import EventEntry

_COLUMNS = ("id, name, role, secret_hash, created_by, created_at, revoked_at, expires_at, "
            "identity")


def created(record: TokenRecord) -> events.TokenCreated:
    """The event of ``record``'s creation: what the token is, never its secret or hash."""
    return events.TokenCreated(token_id=record.id, name=record.name, role=record.role,
                               identity=record.identity or "", expires_at=record.expires_at)


class PgTokenStore:
    """Reads and writes ``auth_tokens`` through ``pool`` (opened and closed by its owner)."""

    def __init__(self, *, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def load(self) -> Sequence[TokenRecord]:
        """Every token, revoked and expired ones included, oldest first."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(f"SELECT {_COLUMNS} FROM auth_tokens ORDER BY created_at, id")
            return [TokenRecord(*row) for row in await cur.fetchall()]

    async def insert(self, record: TokenRecord, *, actor: Caller) -> bool:
        """Store a new token (its hash) and its ``token.created`` event done by ``actor``;
        False, with nothing stored or recorded, when its id is already stored."""
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.execute(
                "INSERT INTO auth_tokens (id, name, role, secret_hash, created_by, expires_at, "
                "identity) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                (record.id, record.name, record.role, record.secret_hash, record.created_by,
                 record.expires_at, record.identity),
            )
            if cur.rowcount != 1:
                return False
            await pg_event_chain.append_async(cur, [EventEntry(created(record), actor)])
            return True

    async def revoke(self, token_id: str, *, actor: Caller) -> bool:
        """Revoke the token ``token_id`` and record ``token.revoked`` done by ``actor``;
        False, with nothing recorded, when no unrevoked token has that id."""
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.execute(
                "UPDATE auth_tokens SET revoked_at = now() "
                "WHERE id = %s AND revoked_at IS NULL RETURNING name", (token_id,))
            row = await cur.fetchone()
            if row is None:
                return False
            event = events.TokenRevoked(token_id=token_id, name=str(row[0]))
            await pg_event_chain.append_async(cur, [EventEntry(event, actor)])
            return True
