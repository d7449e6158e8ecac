"""Policy versions and the fleet in PostgreSQL (migration 0004): the PolicyStore port.

Versions are immutable (insert once, by revision). ``policy_state`` is a
single row: the fleet's desired revision, the one it replaced, and a
generation bumped on every activation; an activation NOTIFYs ``channel`` in
its transaction, so listeners wake only once it is committed. Each server
upserts its ``policy_instances`` row on every heartbeat; liveness is judged by
the database's clock. Every method raises :class:`~acgs.errors.Unavailable`
when PostgreSQL cannot be reached.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from acgs.domain.policy_version import CheckedPolicy, FleetState, InstanceInfo, PolicyVersion
from acgs.errors import NotFound, Unavailable

CHANNEL = "acgs_policy_state"
_COLUMNS = "revision, name, version, created_by, created_at, signature"
_STATE = "SELECT desired_revision, coalesce(previous_revision, ''), generation FROM policy_state"


@asynccontextmanager
async def reachable() -> AsyncIterator[None]:
    """The policy database's connection errors as Unavailable (shared by pg_shadow)."""
    try:
        yield
    except (psycopg.OperationalError, PoolTimeout) as err:
        raise Unavailable(f"policy database unreachable: {err}") from err


def _version(row: tuple[Any, ...], *, full: bool = False) -> PolicyVersion:
    revision, name, version, created_by, created_at, signature = row[:6]
    if not full:
        return PolicyVersion(revision=revision, name=name, version=version,
                             created_by=created_by, created_at=created_at, signature=signature)
    modules, data_json, manifest_json = row[6:9]
    return PolicyVersion(revision=revision, name=name, version=version, created_by=created_by,
                         created_at=created_at, signature=signature,
                         modules=tuple(sorted(modules.items())), data_json=data_json,
                         manifest_json=manifest_json)


class PgPolicyStore:
    """Policy versions, the fleet's desired state and its instances, on an autocommit pool."""

    def __init__(self, *, pool: AsyncConnectionPool[Any], channel: str = CHANNEL) -> None:
        self._pool = pool
        self._channel = channel

    async def insert_version(self, policy: CheckedPolicy, *, signature: str,
                             created_by: str) -> PolicyVersion:
        """Store ``policy`` unless its revision exists already; return the stored version."""
        async with reachable(), self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO policy_versions (revision, name, version, modules, data_json, "
                "manifest_json, signature, created_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (revision) DO NOTHING",
                (policy.revision, policy.name, policy.version, json.dumps(dict(policy.modules)),
                 policy.data_json, policy.manifest_json, signature, created_by))
        return await self.get_version(policy.revision, full=False)

    async def get_version(self, revision: str, *, full: bool = True) -> PolicyVersion:
        """One version (with its sources when ``full``); NotFound when absent."""
        columns = _COLUMNS + (", modules, data_json, manifest_json" if full else "")
        async with reachable(), self._pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {columns} FROM policy_versions WHERE revision = %s", (revision,))
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"no policy version {revision!r}")
        return _version(row, full=full)

    async def list_versions(self) -> list[PolicyVersion]:
        """Every version, newest first, without sources."""
        async with reachable(), self._pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM policy_versions ORDER BY created_at DESC, revision")
            return [_version(row) for row in await cur.fetchall()]

    async def state(self) -> FleetState | None:
        """The fleet's desired revision; None before any was set."""
        async with reachable(), self._pool.connection() as conn:
            row = await (await conn.execute(_STATE)).fetchone()
        return FleetState(*row) if row else None

    async def set_desired(self, revision: str, *, activated_by: str,
                          only_if_unset: bool = False) -> FleetState:
        """Make ``revision`` (stored) the desired one and notify the fleet; return the state.

        The replaced revision becomes ``previous_revision`` (unchanged when the
        revision is desired already). With ``only_if_unset`` nothing changes
        when a desired revision exists. Raises NotFound for an unknown revision.
        """
        async with reachable(), self._pool.connection() as conn, conn.transaction():
            try:
                await conn.execute(
                    "INSERT INTO policy_state AS s (desired_revision, activated_by) "
                    "VALUES (%s, %s) ON CONFLICT (id) DO "
                    + ("NOTHING" if only_if_unset else
                       "UPDATE SET previous_revision = CASE WHEN s.desired_revision = "
                       "EXCLUDED.desired_revision THEN s.previous_revision "
                       "ELSE s.desired_revision END, desired_revision = EXCLUDED.desired_revision,"
                       " generation = s.generation + 1, activated_by = EXCLUDED.activated_by, "
                       "activated_at = now()"),
                    (revision, activated_by))
            except psycopg.errors.ForeignKeyViolation as err:
                raise NotFound(f"no policy version {revision!r}") from err
            row = await (await conn.execute(_STATE)).fetchone()
            assert row is not None
            await conn.execute("SELECT pg_notify(%s, %s)", (self._channel, str(row[0])))
        return FleetState(*row)

    async def heartbeat(self, *, instance_id: str, address: str, active_revision: str,
                        serving: bool) -> None:
        """Upsert this server's row with the database's ``now()``."""
        async with reachable(), self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO policy_instances (instance_id, address, active_revision, serving) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (instance_id) DO UPDATE SET "
                "address = EXCLUDED.address, active_revision = EXCLUDED.active_revision, "
                "serving = EXCLUDED.serving, last_heartbeat = now()",
                (instance_id, address, active_revision, serving))

    async def leave(self, instance_id: str) -> None:
        """Remove this server from the fleet (it stopped: no activation waits for it)."""
        async with reachable(), self._pool.connection() as conn:
            await conn.execute("DELETE FROM policy_instances WHERE instance_id = %s",
                               (instance_id,))

    async def instances(self, *, live_within_s: float) -> list[InstanceInfo]:
        """Every known server, by id; ``live`` when its heartbeat is within ``live_within_s``."""
        async with reachable(), self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT instance_id, address, active_revision, serving, last_heartbeat, "
                "last_heartbeat >= now() - make_interval(secs => %s) "
                "FROM policy_instances ORDER BY instance_id", (live_within_s,))
            rows = await cur.fetchall()
        return [InstanceInfo(*row) for row in rows]

    async def forget_instances(self, *, older_than: dt.timedelta) -> int:
        """Delete rows of servers silent for ``older_than``; return how many."""
        async with reachable(), self._pool.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM policy_instances WHERE last_heartbeat < now() - %s", (older_than,))
            return int(cur.rowcount)
