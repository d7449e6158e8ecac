"""The shadow plan and the servers' shadow reports in PostgreSQL (0010).

Implements the ShadowStore port (automatic rollbacks are the policy history's:
:class:`~acgs.adapters.pg_policies.PgPolicyStore`). Changes of the plan NOTIFY
the channel of activations (:data:`~acgs.adapters.pg_policies.CHANNEL`) in
their transaction, so every server's policy reconciliation wakes for them.
Every method raises :class:`~acgs.errors.Unavailable` when PostgreSQL cannot be reached.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from acgs.adapters import pg_event_chain
from acgs.adapters.pg_policies import CHANNEL, reachable
from acgs.domain import events
from acgs.domain.model import Caller
from acgs.errors import NotFound
from acgs.service_layer.policy_shadow import ShadowPlan, ShadowReport
from acgs.service_layer.ports import EventEntry

_PLAN = ("SELECT coalesce(candidate_revision, ''), sample, examples, generation "
         "FROM policy_shadow")


class PgShadowStore:
    """On the policy lifecycle's autocommit pool."""

    def __init__(self, *, pool: AsyncConnectionPool[Any], channel: str = CHANNEL) -> None:
        self._pool = pool
        self._channel = channel

    async def shadow_plan(self) -> ShadowPlan | None:
        """The fleet's plan; None before any shadow was started."""
        async with reachable(), self._pool.connection() as conn:
            row = await (await conn.execute(_PLAN)).fetchone()
        return ShadowPlan(*row) if row else None

    async def set_shadow(self, *, revision: str, sample: float, examples: int,
                         actor: Caller) -> ShadowPlan:
        """Replace the plan (``revision`` "": none) with a new generation; notify the fleet.

        Its ``policy.shadow_started``/``policy.shadow_stopped`` event, done by ``actor``,
        is appended to the admin chain in the same transaction."""
        async with reachable(), self._pool.connection() as conn, conn.transaction():
            try:
                await conn.execute(
                    "INSERT INTO policy_shadow AS s (candidate_revision, sample, examples, "
                    "changed_by) VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
                    "candidate_revision = EXCLUDED.candidate_revision, sample = EXCLUDED.sample,"
                    " examples = EXCLUDED.examples, changed_by = EXCLUDED.changed_by, "
                    "generation = s.generation + 1, changed_at = now()",
                    (revision or None, sample, examples, actor.id))
            except psycopg.errors.ForeignKeyViolation as err:
                raise NotFound(f"no policy version {revision!r}") from err
            row = await (await conn.execute(_PLAN)).fetchone()
            assert row is not None
            plan = ShadowPlan(*row)
            event: events.Event = (
                events.PolicyShadowStarted(plan.revision, plan.sample, plan.examples,
                                           plan.generation) if plan.revision
                else events.PolicyShadowStopped(plan.generation))
            async with conn.cursor() as cur:
                await pg_event_chain.append_async(cur, [EventEntry(event, actor)])
            await conn.execute("SELECT pg_notify(%s, %s)", (self._channel, f"shadow {row[3]}"))
        return plan

    async def put_shadow_report(self, report: ShadowReport) -> None:
        """Upsert this server's report (one row per server: the latest generation only)."""
        async with reachable(), self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO policy_shadow_reports (instance_id, generation, candidate_revision,"
                " live_revision, evaluated, dropped, counts, examples) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (instance_id) DO UPDATE SET "
                "generation = EXCLUDED.generation, candidate_revision = "
                "EXCLUDED.candidate_revision, live_revision = EXCLUDED.live_revision, "
                "evaluated = EXCLUDED.evaluated, dropped = EXCLUDED.dropped, counts = "
                "EXCLUDED.counts, examples = EXCLUDED.examples, updated_at = now()",
                (report.instance_id, report.generation, report.candidate_revision,
                 report.live_revision, report.evaluated, report.dropped,
                 json.dumps(report.counts), json.dumps(report.examples)))

    async def shadow_reports(self, *, generation: int) -> list[ShadowReport]:
        """Every server's report of ``generation``, by instance id."""
        async with reachable(), self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT instance_id, generation, candidate_revision, live_revision, evaluated, "
                "dropped, counts, examples FROM policy_shadow_reports WHERE generation = %s "
                "ORDER BY instance_id", (generation,))
            rows = await cur.fetchall()
        return [ShadowReport(*row) for row in rows]
