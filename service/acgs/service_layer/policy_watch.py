"""What a server watches in its own answers: a fresh activation that fails safe, and the shadow.

:class:`PolicyWatch` is the DecisionService's observer: every answered
decision goes to the :class:`RollbackWatch` and to the shadow's sampler.

Auto-rollback: for ``window_s`` after this server activates a revision, the
watch counts the decisions made under it and those that were fail-safe
because the policy could not decide (an evaluation error, an undefined or
malformed decision; not an audit refusal). Once at least ``min_decisions``
were made and more than ``share`` of them failed safe, the fleet is rolled
back, if the bad revision is still desired (one server's rollback is the
fleet's; the others find nothing left to do): the same rollback as an
admin's (the activation in force is popped from the policy history), with
this server as the actor and the reason recorded in the history and in its
policy.rolled_back event. It is logged, counted
(``acgs_policy_auto_rollbacks_total``) and opens a ``policy_rollback``
incident escalation, so humans see it. The
revision restored by a rollback is not watched again on this server (no
ping-pong between two versions that both fail).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from acgs.domain.model import FAIL_SAFE, Caller, Decision, Severity, Violation, timed_out
from acgs.errors import AcgsError, InvalidTransition
from acgs.service_layer.policy_ports import RollbackStore
from acgs.service_layer.policy_shadow import ShadowEvaluator

logger = logging.getLogger("acgs.policy.watch")
POLICY_ROLLBACK = "policy_rollback"  # the reason of the incident escalation


class Incidents(Protocol):
    """Opens incident escalations (the JournalEscalator)."""

    async def incident(self, *, reason: str, key: str, caller: Caller, violation: Violation,
                       policy_input: Mapping[str, Any] | None = None) -> str: ...


class RollbackTelemetry(Protocol):
    def policy_rolled_back(self) -> None: ...


class RollbackWatch:
    """Counts the first decisions of each activation; trips once on too many fail-safes."""

    def __init__(self, *, share: float, window_s: float, min_decisions: int,
                 on_trip: Callable[[str, str], Awaitable[None]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._share = share
        self._window_s = window_s
        self._min = max(1, min_decisions)
        self._on_trip = on_trip
        self._clock = clock
        self._revision = ""
        self._until = 0.0
        self._total = 0
        self._failed = 0
        self._restored = ""
        self._tasks: set[asyncio.Task[None]] = set()

    def activated(self, revision: str) -> None:
        """This server now serves ``revision``: watch its first ``window_s`` seconds."""
        if self._share <= 0 or revision == self._restored:
            self._revision = ""
            return
        self._revision, self._until = revision, self._clock() + self._window_s
        self._total = self._failed = 0

    def restored(self, revision: str) -> None:
        self._restored = revision

    def observe(self, decision: Decision) -> None:
        if not self._revision or decision.policy_revision != self._revision:
            return
        if self._clock() > self._until:
            self._revision = ""  # the window passed without trouble
            return
        self._total += 1
        # Only the policy's own failures: a timeout says the engine was busy (a caller can
        # make it so), not that the revision cannot decide.
        self._failed += any(v.principle == FAIL_SAFE and not timed_out(v)
                            for v in decision.violations)
        if self._total >= self._min and self._failed > self._share * self._total:
            revision, self._revision = self._revision, ""
            reason = (f"{self._failed} of the first {self._total} decisions under {revision} "
                      f"failed safe (over {self._share:.0%} within {self._window_s:g} s)")
            task = asyncio.get_running_loop().create_task(self._trip(revision, reason))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _trip(self, revision: str, reason: str) -> None:
        try:
            await self._on_trip(revision, reason)
        except Exception:  # supervised: logged, the server keeps serving
            logger.exception("automatic rollback of %s failed", revision)


class AutoRollback:
    """What a tripped watch does: roll the fleet back, once, and record it."""

    def __init__(self, *, store: RollbackStore, instance_id: str,
                 telemetry: RollbackTelemetry, incidents: Incidents | None) -> None:
        self._store = store
        self._instance_id = instance_id
        self._telemetry = telemetry
        self._incidents = incidents
        self.watch: RollbackWatch | None = None

    @property
    def actor(self) -> Caller:
        """Who an automatic rollback is recorded as done by: this server."""
        return Caller(id=self._instance_id, role="system")

    async def __call__(self, revision: str, reason: str) -> None:
        try:
            state = await self._store.roll_back(caller=self.actor, reason=reason,
                                                from_revision=revision)
        except InvalidTransition as err:  # another server or an admin acted first
            logger.warning("not rolling back automatically (%s): %s", reason, err)
            return
        except AcgsError as err:
            logger.error("automatic rollback of %s impossible: %s", revision, err)
            return
        if self.watch is not None:
            self.watch.restored(state.desired_revision)
        self._telemetry.policy_rolled_back()
        message = (f"policy {revision} rolled back to {state.desired_revision} "
                   f"automatically: {reason}")
        logger.error("%s", message)
        if self._incidents is not None:
            await self._incidents.incident(
                reason=POLICY_ROLLBACK, key=f"{POLICY_ROLLBACK}:{revision}",
                caller=self.actor,
                violation=Violation("fail_safe", Severity.CRITICAL, message))


class PolicyWatch:
    """The DecisionService's observer: the rollback watch, then the shadow's sampler."""

    def __init__(self, *, rollback: RollbackWatch | None, shadow: ShadowEvaluator | None) -> None:
        self._rollback = rollback
        self._shadow = shadow

    def observe(self, policy_input: Mapping[str, Any], decision: Decision) -> None:
        if self._rollback is not None:
            self._rollback.observe(decision)
        if self._shadow is not None:
            self._shadow.offer(policy_input, decision)
