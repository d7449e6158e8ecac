"""Whether the database can be used, and bringing it into use when it returns.

A server normally migrates its database (and checks the constitution it was
migrated for) before it serves. A server that starts while PostgreSQL is
unreachable serves from its journal and its local snapshot instead
(:mod:`acgs.adapters.local_snapshot`); everything that needs the database is
``defer``-red here. In the background, every ``retry_s``, the watch tries
``prepare`` (migrate + constitution check) until it succeeds; then it runs
the deferred starters in order (the shipper, policy sync, escalation
sweeper...), each retried while the database is unreachable, and from then
on probes the database every ``retry_s`` so that ``/ready`` and a metric show
when it is unreachable (decisions go on either way).

A database that answers but is refused (another constitution, a changed
migration) is never used: ``on_refused`` is called with the reason (the
server goes NOT_SERVING) and the watch stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from acgs.errors import AcgsError, ConfigurationError, ConstitutionMismatch

logger = logging.getLogger("acgs.database")

Step = Callable[[], Awaitable[None]]

UNREACHABLE_NOTE = ("database unreachable: decisions go on; audit records wait in the "
                    "journal; policy and tokens are the local snapshot's")


class DatabaseWatch:
    """``start`` .. ``stop``; ``ready`` once prepared, ``reachable`` as last seen."""

    def __init__(self, *, prepare: Step, probe: Step, prepared: bool, retry_s: float,
                 unreachable: tuple[type[BaseException], ...],
                 on_refused: Callable[[str], Awaitable[None]] | None = None) -> None:
        self._prepare = prepare
        self._probe = probe
        self._retry_s = max(0.05, retry_s)
        self._unreachable = unreachable
        self._deferred: list[Step] = []
        self._task: asyncio.Task[None] | None = None
        self.on_refused = on_refused
        self.ready = prepared
        """Migrated and checked by this process: the database may be used."""
        self.reachable = prepared
        self.refused = ""
        """Why the database was refused (it is then never used); empty otherwise."""

    def defer(self, steps: Sequence[Step]) -> None:
        """Run ``steps`` once the database is ready (now-ish if it already is: call before
        ``start``)."""
        self._deferred.extend(steps)

    def start_with(self, starters: list[Step], steps: Sequence[Step]) -> None:
        """Add ``steps`` to ``starters`` when the database is ready, else defer them."""
        if self.ready:
            starters.extend(steps)
        else:
            self.defer(steps)

    def note(self) -> str:
        """One line for ``/ready``'s body; empty while all is well."""
        if self.refused:
            return f"database refused: {self.refused}"
        return "" if self.reachable else UNREACHABLE_NOTE

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._supervise(),
                                                            name="acgs-database-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _supervise(self) -> None:
        """Restart the watch after any unexpected failure: it must outlive every one."""
        while True:
            try:
                await self._run()
                return
            except Exception:
                logger.exception("database watch failed; restarting it")
                await asyncio.sleep(self._retry_s)

    async def _run(self) -> None:
        if not self.ready:
            if not await self._bring_up():
                return
            deferred, self._deferred = self._deferred, []
            for step in deferred:
                await self._until_done(step)
        while True:
            await asyncio.sleep(self._retry_s)
            await self._check()

    async def _bring_up(self) -> bool:
        failing = ""
        while True:
            try:
                await self._prepare()
            except self._unreachable as err:
                self.reachable = False
                if str(err) != failing:  # once per distinct error, not every retry
                    logger.warning("database unreachable, retrying every %.1f s: %s",
                                   self._retry_s, err)
                failing = str(err)
                await asyncio.sleep(self._retry_s)
                continue
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

    async def _until_done(self, step: Step) -> None:
        """Run one deferred step, retried while the database is unreachable."""
        while True:
            try:
                await step()
                return
            except self._unreachable as err:
                logger.warning("deferred start step failed, retrying in %.1f s: %s",
                               self._retry_s, err)
                await asyncio.sleep(self._retry_s)
            except AcgsError as err:  # e.g. a desired policy that does not load: the
                logger.error("deferred start step failed: %s", err)  # reconciler retries it
                return
            except Exception:  # the steps after it still run
                logger.exception("deferred start step failed")
                return

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
