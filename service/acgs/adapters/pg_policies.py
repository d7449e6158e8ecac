"""Policy versions, their activation history and the fleet in PostgreSQL: the PolicyStore port.

Versions are immutable (insert once, by revision: migration 0004). The
fleet's desired revision is the top of ``policy_history`` (migration 0014),
an append-only stack of activations and rollbacks
(:mod:`acgs.domain.policy_history`); ``policy_state`` is a view of its last
entry, with ``generation`` its seq. This store is the only writer of
``policy_versions`` and ``policy_history``: each change appends its audit
event (policy.version_created, policy.version_signed, policy.activated,
policy.rolled_back) to the
"admin" chain (:mod:`acgs.adapters.pg_event_chain`) in the transaction that
makes it, so the change and its event commit together or not at all. History
writers are serialised by a table lock (readers are not blocked); a change of
the desired revision NOTIFYs ``channel`` in its transaction, so listeners wake
only once it is committed. Storing a version that exists already changes
nothing and records nothing; the one change a stored version takes is its
signature, once, when it was stored unsigned (``attach_signature``). Each
server upserts its ``policy_instances`` row on every heartbeat; liveness is
judged by the database's clock. Every method raises
:class:`~acgs.errors.Unavailable` when PostgreSQL cannot be reached.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from acgs.adapters import pg_event_chain
from acgs.domain import events
from acgs.domain import policy_history as ph
from acgs.domain.model import Caller
from acgs.domain.policy_history import Head, HistoryEntry, Step
from acgs.domain.policy_version import CheckedPolicy, FleetState, InstanceInfo, PolicyVersion
from acgs.errors import NotFound, Unavailable
from acgs.service_layer.ports import EventEntry

CHANNEL = "acgs_policy_state"
_COLUMNS = "revision, name, version, created_by, created_at, signature, message"
_STATE = "SELECT desired_revision, coalesce(previous_revision, ''), generation FROM policy_state"
_HEAD = ("SELECT last.seq, top.seq, top.revision, coalesce(below.seq, 0), "
         "coalesce(below.revision, '') FROM policy_history last "
         "JOIN policy_history top ON top.seq = last.in_force "
         "LEFT JOIN policy_history below ON below.seq = top.beneath "
         "ORDER BY last.seq DESC LIMIT 1")
_HISTORY = ("SELECT seq, action, revision, coalesce(replaced_revision, ''), in_force, "
            "coalesce(beneath, 0), coalesce(undoes, 0), actor_id, actor_role, actor_identity, "
            "message, at, coalesce(event_id, ''), seq = (SELECT in_force FROM policy_history "
            "ORDER BY seq DESC LIMIT 1) FROM policy_history WHERE (%s = 0 OR seq < %s) "
            "ORDER BY seq DESC LIMIT %s")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@asynccontextmanager
async def reachable() -> AsyncIterator[None]:
    """The policy database's connection errors as Unavailable (shared by pg_shadow)."""
    try:
        yield
    except (psycopg.OperationalError, PoolTimeout) as err:
        raise Unavailable(f"policy database unreachable: {err}") from err


def _version(row: tuple[Any, ...], *, full: bool = False) -> PolicyVersion:
    revision, name, version, created_by, created_at, signature, message = row[:7]
    if not full:
        return PolicyVersion(revision=revision, name=name, version=version,
                             created_by=created_by, created_at=created_at, signature=signature,
                             message=message)
    modules, data_json, manifest_json = row[7:10]
    return PolicyVersion(revision=revision, name=name, version=version, created_by=created_by,
                         created_at=created_at, signature=signature,
                         modules=tuple(sorted(modules.items())), data_json=data_json,
                         manifest_json=manifest_json, message=message)


def _moment(entry: EventEntry) -> dt.datetime:
    """The event's time, to the microsecond its record keeps: the row's time too."""
    return _EPOCH + dt.timedelta(microseconds=entry.at_ns // 1000)


class PgPolicyStore:
    """Policy versions, the fleet's desired state and its instances, on an autocommit pool."""

    def __init__(self, *, pool: AsyncConnectionPool[Any], channel: str = CHANNEL) -> None:
        self._pool = pool
        self._channel = channel

    async def insert_version(self, policy: CheckedPolicy, *, signature: str, caller: Caller,
                             message: str = "") -> tuple[PolicyVersion, bool]:
        """Store ``policy`` and record policy.version_created, unless its revision exists
        already (then nothing changes: the first upload's message and uploader stay).
        Returns the stored version and whether this call stored it."""
        entry = EventEntry(events.PolicyVersionCreated(
            revision=policy.revision, name=policy.name, version=policy.version,
            message=message, signed=bool(signature), tests_passed=policy.tests_passed), caller)
        async with self._transaction() as cur:
            await cur.execute(
                "INSERT INTO policy_versions (revision, name, version, modules, data_json, "
                "manifest_json, signature, created_by, message, created_at) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (revision) DO NOTHING "
                "RETURNING revision",
                (policy.revision, policy.name, policy.version,
                 json.dumps(dict(policy.modules)), policy.data_json, policy.manifest_json,
                 signature, caller.id, message, _moment(entry)))
            created = await cur.fetchone() is not None
            if created:
                await pg_event_chain.append_async(cur, [entry])
            await cur.execute(f"SELECT {_COLUMNS} FROM policy_versions WHERE revision = %s",
                              (policy.revision,))
            row = await cur.fetchone()
        assert row is not None
        return _version(row), created

    async def attach_signature(self, revision: str, *, signature: str, caller: Caller,
                               message: str = "",
                               replacing: str = "") -> tuple[PolicyVersion, bool]:
        """Give the version ``revision`` its ``signature`` (checked by the caller) and record
        policy.version_signed, when its stored signature is still ``replacing`` (default:
        stored unsigned; the caller passes a stored signature only when it does not verify
        under the trusted keys); otherwise it keeps its signature and nothing is recorded.
        Returns the stored version and whether this call signed it; NotFound when absent."""
        async with self._transaction() as cur:
            await cur.execute(
                "UPDATE policy_versions SET signature = %s WHERE revision = %s "
                "AND signature = %s AND %s <> '' AND %s <> %s RETURNING name, version",
                (signature, revision, replacing, signature, signature, replacing))
            updated = await cur.fetchone()
            if updated is not None:
                await pg_event_chain.append_async(cur, [EventEntry(events.PolicyVersionSigned(
                    revision=revision, name=updated[0], version=updated[1], message=message),
                    caller)])
            await cur.execute(f"SELECT {_COLUMNS} FROM policy_versions WHERE revision = %s",
                              (revision,))
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"no policy version {revision!r}")
        return _version(row), updated is not None

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

    async def activate(self, revision: str, *, caller: Caller, message: str = "",
                       only_if_unset: bool = False) -> FleetState:
        """Push an activation of ``revision`` (stored) and notify the fleet; return the state.

        Nothing changes, and nothing is recorded, when ``revision`` is desired
        already, or with ``only_if_unset`` when any revision is. Raises NotFound
        for an unknown revision.
        """
        async with self._transaction() as cur:
            head = await self._head(cur)
            step = ph.activation(head, revision, only_if_unset=only_if_unset)
            if step is None:
                row = await (await cur.execute(_STATE)).fetchone()
                assert row is not None
                return FleetState(*row)
            await cur.execute("SELECT 1 FROM policy_versions WHERE revision = %s",
                              (revision,))
            if await cur.fetchone() is None:
                raise NotFound(f"no policy version {revision!r}")
            event = events.PolicyActivated(
                revision=step.revision, previous_revision=step.replaced_revision,
                history_seq=step.seq, message=message)
            return await self._record(cur, step, EventEntry(event, caller), message)

    async def roll_back(self, *, caller: Caller, reason: str = "",
                        from_revision: str = "") -> FleetState:
        """Pop the activation in force: the one beneath it is in force again (see
        :func:`acgs.domain.policy_history.rollback`); notify the fleet; return the state.

        With ``from_revision``, only while that revision is the desired one.
        Raises InvalidTransition when nothing is beneath (or ``from_revision`` is
        not desired); nothing is then changed or recorded.
        """
        async with self._transaction() as cur:
            step = ph.rollback(await self._head(cur), from_revision=from_revision)
            event = events.PolicyRolledBack(
                revision=step.revision, rolled_back_revision=step.replaced_revision,
                history_seq=step.seq, reason=reason)
            return await self._record(cur, step, EventEntry(event, caller), reason)

    async def history(self, *, limit: int, before_seq: int = 0) -> list[HistoryEntry]:
        """Up to ``limit`` entries, newest first, older than ``before_seq`` (0: the newest)."""
        async with reachable(), self._pool.connection() as conn:
            cur = await conn.execute(_HISTORY, (before_seq, before_seq, limit))
            return [HistoryEntry(*row) for row in await cur.fetchall()]

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[psycopg.AsyncCursor[TupleRow]]:
        """A cursor in a transaction: what it writes commits at the end, or nothing does."""
        async with (reachable(), self._pool.connection() as conn, conn.transaction(),
                    conn.cursor() as cur):
            yield cur

    async def _head(self, cur: psycopg.AsyncCursor[TupleRow]) -> Head | None:
        """Where the history stands, locked against other writers until the commit."""
        await cur.execute("LOCK TABLE policy_history IN EXCLUSIVE MODE")
        row = await (await cur.execute(_HEAD)).fetchone()
        return Head(*row) if row else None

    async def _record(self, cur: psycopg.AsyncCursor[TupleRow], step: Step, entry: EventEntry,
                      message: str) -> FleetState:
        """Write ``step`` and its event, and notify the fleet (in the caller's transaction)."""
        await cur.execute(
            "INSERT INTO policy_history (seq, action, revision, replaced_revision, in_force, "
            "beneath, undoes, actor_id, actor_role, actor_identity, message, at, event_id) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (step.seq, step.action, step.revision, step.replaced_revision or None,
             step.in_force, step.beneath or None, step.undoes or None, entry.caller.id,
             entry.caller.role, entry.caller.identity, message, _moment(entry),
             entry.event_id))
        await pg_event_chain.append_async(cur, [entry])
        await cur.execute("SELECT pg_notify(%s, %s)", (self._channel, step.revision))
        return FleetState(step.revision, step.replaced_revision, step.seq)

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
