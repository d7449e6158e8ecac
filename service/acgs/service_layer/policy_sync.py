"""Keeps one server on the fleet's desired policy revision, and tells the fleet it does.

Every ``interval_s`` (a supervised round; sooner when the bell rings: PostgreSQL NOTIFY on an
activation) the server reads the desired revision; when it differs from the
revision it serves, it loads that version and activates it (``activate``:
fetch, verify, compile and warm, then one atomic swap), then heartbeats its
active revision and serving flag into the fleet table. This heartbeat is the
acknowledgement ActivatePolicyVersion waits for.

Trusted keys (``verify``): the revision served is verified before it is served, also when
no activation is needed (the seed of ACGS_POLICY_DIR is already active at start): its
stored signature must verify. ``catch_up`` raises when it does not (the start is refused);
a round that finds the revision served unverified verifies it, and while it does not
verify the server reports itself stale at once.

Freshness: while the served revision lags the desired one for longer than
``max_lag_s`` (the version does not load here, or the swap is slow), the
server reports itself stale (``on_fresh(False)``: NOT_SERVING) until it
catches up. ``rounds`` run after each heartbeat: other fleet state carried by
the same notifications (the shadow plan, :mod:`policy_shadow_fleet`). While
PostgreSQL is unreachable the last known desired revision stands: an outage
alone never makes a server stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from acgs.domain.policy_version import PolicyVersion
from acgs.errors import AcgsError, BadSignature
from acgs.service_layer.policy_ports import PolicyStore

logger = logging.getLogger("acgs.policy.sync")


class Bell(Protocol):
    """Rings on a notification (:class:`acgs.adapters.pg_notify.PgBell`)."""

    def next_ring(self) -> asyncio.Future[None]: ...


class PolicySync:
    """One server's reconciler: ``catch_up`` before serving, ``heartbeat``, then ``reconcile``
    every ``interval_s`` (or at ``next_ring``) under the supervisor; ``leave`` at stop."""

    def __init__(self, *, store: PolicyStore, instance_id: str,
                 activate: Callable[[PolicyVersion], Awaitable[None]],
                 active_revision: Callable[[], str], address: Callable[[], str],
                 serving: Callable[[], bool], on_fresh: Callable[[bool], Awaitable[None]],
                 bell: Bell | None = None, interval_s: float = 1.0,
                 max_lag_s: float = 10.0,
                 rounds: Sequence[Callable[[], Awaitable[None]]] = (),
                 verify: Callable[[PolicyVersion], None] | None = None) -> None:
        self._store = store
        self._instance_id = instance_id
        self._activate = activate
        self._active_revision = active_revision
        self._address = address
        self._serving = serving
        self._on_fresh = on_fresh
        self._bell = bell
        self.interval_s = interval_s
        self._max_lag_s = max_lag_s
        self._rounds = tuple(rounds)  # more fleet state that follows the same bell (shadow)
        self._verify = verify  # raises BadSignature (trusted keys); None: nothing to verify
        self._verified = ""  # the revision last activated or verified here
        self._desired = ""
        self._lag_since: float | None = None
        self._failed: str = ""

    @property
    def desired_revision(self) -> str:
        return self._desired

    async def catch_up(self) -> None:
        """Serve the desired revision before serving at all: raises what loading it raised
        (PolicyError, BadSignature, ConstitutionMismatch, Unavailable)."""
        state = await self._store.state()
        if state is None:
            return
        self._desired = state.desired_revision
        try:
            await self._serve(state.desired_revision)
        except BadSignature as err:
            raise BadSignature(f"the fleet's desired policy {state.desired_revision} cannot be "
                               f"served under ACGS_POLICY_TRUSTED_KEYS: {err}") from err

    def _unverified(self) -> bool:
        """Trusted keys are set and the revision served was not verified here."""
        return self._verify is not None and self._verified != self._active_revision()

    async def _serve(self, revision: str) -> None:
        """Activate ``revision`` (verified by the activation), or verify it when it is
        already active but unverified; nothing else."""
        if revision != self._active_revision():
            await self._activate(await self._store.get_version(revision))
            self._verified = revision
        elif self._verify is not None and self._verified != revision:
            self._verify(await self._store.get_version(revision))
            self._verified = revision

    def next_ring(self) -> asyncio.Future[None] | None:
        """The bell's next ring, taken before a round: a notification during the round
        starts the next one at once (None without a bell)."""
        return self._bell.next_ring() if self._bell is not None else None

    async def leave(self) -> None:
        """Leave the fleet (no activation waits for a stopped server); after the rounds end."""
        with contextlib.suppress(AcgsError):
            await self._store.leave(self._instance_id)

    async def reconcile(self) -> None:
        """One round: read the desired revision, catch up, heartbeat, judge freshness."""
        try:
            state = await self._store.state()
            if state is not None:
                self._desired = state.desired_revision
            if self._desired and (self._desired != self._active_revision()
                                  or self._unverified()):
                await self._load(self._desired)
        except AcgsError as err:
            logger.warning("policy reconciliation: %s", err)
        await self._judge_freshness()
        await self.heartbeat()
        for extra in self._rounds:
            try:
                await extra()
            except Exception:  # one part's failure never stops the reconciliation
                logger.exception("policy reconciliation round failed")

    async def _load(self, revision: str) -> None:
        try:
            await self._serve(revision)
            self._failed = ""
        except AcgsError as err:
            if self._failed != revision:  # once per revision: it is retried every round
                logger.error("cannot activate desired policy %s: %s", revision, err)
            self._failed = revision
            raise

    async def _judge_freshness(self) -> None:
        lagging = bool(self._desired) and self._desired != self._active_revision()
        now = time.monotonic()
        if not lagging:
            self._lag_since = None
        elif self._lag_since is None:
            self._lag_since = now
        stale = self._lag_since is not None and now - self._lag_since > self._max_lag_s
        # a revision served unverified under trusted keys: stale at once, no grace
        await self._on_fresh(not stale and not (bool(self._desired) and self._unverified()))

    async def heartbeat(self) -> None:
        """Tell the fleet the revision served (the first one before the rounds start)."""
        try:
            await self._store.heartbeat(instance_id=self._instance_id, address=self._address(),
                                        active_revision=self._active_revision(),
                                        serving=self._serving())
        except AcgsError as err:
            logger.warning("policy heartbeat failed: %s", err)
