"""Whether the database can be used, and bringing it into use when it returns.

A server normally migrates its database (and checks the constitution it was
migrated for) before it serves. A server that starts while PostgreSQL is
unreachable serves from its journal and its local snapshot instead
(:mod:`acgs.adapters.local_snapshot`); everything that needs the database is
``defer``-red here. Its :meth:`DatabaseWatch.round` runs every ``retry_s``
under the supervisor (:mod:`acgs.lifecycle.supervisor`): it tries ``prepare``
(migrate + constitution check) until it succeeds; then it runs the deferred
starts in order (the shipper, policy sync, escalation sweeper...), each
retried while the database is unreachable, and from then on probes the
database so that ``/ready`` and a metric show when it is unreachable
(decisions go on either way).

A database that answers but is refused (another constitution, a changed
migration) is never used: ``on_refused`` is called with the reason (the
server goes NOT_SERVING) and the watch stops.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from acgs.errors import AcgsError, ConfigurationError, ConstitutionMismatch

logger = logging.getLogger("acgs.database")

Step = Callable[[], Awaitable[None]]

UNREACHABLE_NOTE = ("database unreachable: decisions go on; audit records wait in the "
                    "journal; policy and tokens are the local snapshot's")


class DatabaseWatch:
    """``round`` under a supervisor; ``ready`` once prepared, ``reachable`` as last seen."""

    def __init__(self, *, prepare: Step, probe: Step, prepared: bool, retry_s: float,
                 unreachable: tuple[type[BaseException], ...],
                 on_refused: Callable[[str], Awaitable[None]] | None = None) -> None:
        self._prepare = prepare
        self._probe = probe
        self.retry_s = max(0.05, retry_s)
        """How often :meth:`round` should run."""
        self._unreachable = unreachable
        self._deferred: list[Step] = []
        self._failing = ""
        self.on_refused = on_refused
        self.ready = prepared
        """Migrated and checked by this process: the database may be used."""
        self.reachable = prepared
        self.refused = ""
        """Why the database was refused (it is then never used); empty otherwise."""

    def defer(self, steps: Sequence[Step]) -> None:
        """Run ``steps`` once the database is ready (at the first round if it already is)."""
        self._deferred.extend(steps)

    def note(self) -> str:
        """One line for ``/ready``'s body; empty while all is well."""
        if self.refused:
            return f"database refused: {self.refused}"
        return "" if self.reachable else UNREACHABLE_NOTE

    async def round(self) -> None:
        """One round, run every ``retry_s`` by the supervisor: migrate and check the database
        until it is ready, then run the deferred steps, then probe it."""
        if self.refused:
            return
        if not self.ready and not await self._bring_up():
            return
        if self._deferred:
            await self._run_deferred()
        else:
            await self._check()

    async def _bring_up(self) -> bool:
        try:
            await self._prepare()
        except self._unreachable as err:
            self.reachable = False
            if str(err) != self._failing:  # once per distinct error, not every retry
                logger.warning("database unreachable, retrying every %.1f s: %s",
                               self.retry_s, err)
            self._failing = str(err)
            return False
        except (ConstitutionMismatch, ConfigurationError) as err:
            await self._refuse(str(err))
            return False
        self.ready = self.reachable = True
        logger.info("database reachable: migrated and checked; resuming shipping, "
                    "policy sync, token refresh and escalations")
        return True

    async def _refuse(self, reason: str) -> None:
        self.refused = reason
        logger.critical("database refused, never used by this server: %s", reason)
        if self.on_refused is not None:
            await self.on_refused(reason)

    async def _run_deferred(self) -> None:
        """Run the deferred steps in order; one that finds the database unreachable again is
        retried from there at the next round, one that fails otherwise is logged and skipped
        (the steps after it still run)."""
        while self._deferred:
            try:
                await self._deferred[0]()
            except self._unreachable as err:
                logger.warning("deferred start step failed, retrying in %.1f s: %s",
                               self.retry_s, err)
                return
            except AcgsError as err:  # e.g. a desired policy that does not load: the
                logger.error("deferred start step failed: %s", err)  # reconciler retries it
            except Exception:
                logger.exception("deferred start step failed")
            self._deferred.pop(0)

    async def _check(self) -> None:
        try:
            await self._probe()
        except self._unreachable as err:
            if self.reachable:
                logger.warning("database unreachable: %s", err)
            self.reachable = False
            return
        if not self.reachable:
            logger.info("database reachable again")
        self.reachable = True
