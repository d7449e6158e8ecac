"""The token table (``auth_tokens``, migrations/0002_tokens.sql) in PostgreSQL.

Servers read it (``load``, every second); ``acgs token`` writes it. Every
method raises psycopg.Error (or psycopg_pool.PoolTimeout) when PostgreSQL
cannot be reached: the caller decides whether that is fatal.
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg_pool import AsyncConnectionPool

from acgs.domain.tokens import TokenRecord

_COLUMNS = ("id, name, role, secret_hash, created_by, created_at, revoked_at, expires_at, "
            "identity")


class PgTokenStore:
    """Reads and writes ``auth_tokens`` through ``pool`` (opened and closed by its owner)."""

    def __init__(self, *, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def load(self) -> Sequence[TokenRecord]:
        """Every token, revoked and expired ones included, oldest first."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(f"SELECT {_COLUMNS} FROM auth_tokens ORDER BY created_at, id")
            return [TokenRecord(*row) for row in await cur.fetchall()]

    async def insert(self, record: TokenRecord) -> None:
        """Store a new token (its hash); a token whose id is already stored is left as it is."""
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO auth_tokens (id, name, role, secret_hash, created_by, expires_at, "
                "identity) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                (record.id, record.name, record.role, record.secret_hash, record.created_by,
                 record.expires_at, record.identity),
            )

    async def revoke(self, token_id: str) -> bool:
        """Revoke the token ``token_id``; False when no unrevoked token has that id."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE auth_tokens SET revoked_at = now() "
                "WHERE id = %s AND revoked_at IS NULL", (token_id,))
            return cur.rowcount == 1
