"""Policy versions and their activation across the fleet: the use cases of acgs.v1.PolicyAdmin.

An upload is checked by the PolicyChecker (never in the server's own
process), its signature by the SignatureVerifier when trusted keys are
configured, then stored (the same content again changes nothing, but gives a
version stored unsigned the signature it now carries). Activation pushes a stored version onto the
fleet's history (:mod:`acgs.domain.policy_history`; PostgreSQL notifies every
server) and waits until every live server (heartbeat within
``live_within_s``) reports serving it; rollback pops the activation in force,
so the one beneath it is served again. Each of these records its audit event
with the caller as actor, in the same transaction as the change (the store).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

from acgs.domain.model import Caller
from acgs.domain.policy_history import HistoryEntry
from acgs.domain.policy_version import (
    ActivationOutcome,
    CheckedPolicy,
    FleetState,
    InstanceInfo,
    PolicyVersion,
)
from acgs.errors import BadSignature, InvalidRequest
from acgs.service_layer.policy_ports import PolicyChecker, PolicyStore, SignatureVerifier


@dataclass(frozen=True, slots=True)
class Upload:
    """What :meth:`PolicyAdminService.create` did with an upload."""

    version: PolicyVersion
    tests_passed: int
    created: bool
    """This call stored it (False: stored before; unchanged but for ``signature_attached``)."""
    signature_attached: bool = False
    """It was stored unsigned and this call gave it the upload's signature."""


class PolicyAdminService:
    """The use cases; ``verifier`` None: signatures are optional (kept, not checked)."""

    def __init__(self, *, checker: PolicyChecker, store: PolicyStore,
                 verifier: SignatureVerifier | None = None, live_within_s: float = 3.0,
                 poll_s: float = 0.05) -> None:
        self._checker = checker
        self._store = store
        self._verifier = verifier
        self._live_within_s = live_within_s
        self._poll_s = poll_s

    async def validate(self, *, modules: Mapping[str, str], data_json: str, manifest_json: str,
                       signature: str = "") -> CheckedPolicy:
        """Every check of :meth:`create`; nothing is stored. Raises the checker's errors
        and BadSignature (trusted keys configured, signature missing or wrong)."""
        checked = await self._checker.check(modules=modules, data_json=data_json,
                                            manifest_json=manifest_json)
        if self._verifier is not None:
            self._verifier.verify(digest=checked.digest, signature=signature)
        return checked

    async def create(self, *, modules: Mapping[str, str], data_json: str, manifest_json: str,
                     signature: str, caller: Caller, message: str = "") -> Upload:
        """Check and store a version. Content stored before stays as it is (its first
        uploader and message, nothing recorded), except a version stored unsigned: it takes
        this upload's signature (verified by :meth:`validate` where keys are trusted;
        otherwise kept unchecked, as an upload's is), recorded as policy.version_signed."""
        checked = await self.validate(modules=modules, data_json=data_json,
                                      manifest_json=manifest_json, signature=signature)
        stored, created = await self._store.insert_version(
            checked, signature=signature, caller=caller, message=message)
        signed = False
        if not created and signature and stored.signature != signature:
            replacing: str | None = None
            if not stored.signature:
                replacing = ""
            elif self._verifier is not None and not self._verifies(
                    await self._store.get_version(stored.revision)):
                # stored unchecked (no trusted keys then) or by a key no longer trusted:
                # the upload's signature verified (validate), the stored one does not
                replacing = stored.signature
            if replacing is not None:
                stored, signed = await self._store.attach_signature(
                    stored.revision, signature=signature, caller=caller, message=message,
                    replacing=replacing)
        return Upload(version=stored, tests_passed=checked.tests_passed, created=created,
                      signature_attached=signed)

    def _verifies(self, version: PolicyVersion) -> bool:
        """The stored signature of ``version`` verifies against its stored content."""
        assert self._verifier is not None
        try:
            self._verifier.verify(digest=version.digest(), signature=version.signature)
        except BadSignature:
            return False
        return True

    async def list_versions(self) -> list[PolicyVersion]:
        return await self._store.list_versions()

    async def get_version(self, revision: str) -> PolicyVersion:
        """One version with its sources; NotFound when absent."""
        return await self._store.get_version(_required(revision))

    async def state(self) -> FleetState | None:
        return await self._store.state()

    async def instances(self) -> list[InstanceInfo]:
        return await self._store.instances(live_within_s=self._live_within_s)

    async def history(self, *, limit: int, before_seq: int = 0) -> list[HistoryEntry]:
        """Activations and rollbacks, newest first (``before_seq``: older than that)."""
        return await self._store.history(limit=limit, before_seq=before_seq)

    async def activate(self, revision: str, *, caller: Caller, wait_s: float,
                       message: str = "") -> ActivationOutcome:
        """Make ``revision`` desired, then wait up to ``wait_s`` for every live server.

        Raises NotFound (unknown revision) and BadSignature (a trusted-keys
        fleet refuses it); a server that does not acknowledge in time is
        reported in ``pending``, not raised. Activating the desired revision
        again changes and records nothing (it only waits).
        """
        version = await self._store.get_version(_required(revision))
        if self._verifier is not None:
            self._verifier.verify(digest=version.digest(), signature=version.signature)
        state = await self._store.activate(version.revision, caller=caller, message=message)
        return await self._await_fleet(state, wait_s)

    async def rollback(self, *, caller: Caller, wait_s: float,
                       reason: str = "") -> ActivationOutcome:
        """Pop the activation in force: the one beneath it is desired again (two rollbacks
        step back twice); then wait like :meth:`activate`. InvalidTransition when nothing
        is beneath."""
        state = await self._store.roll_back(caller=caller, reason=reason)
        return await self._await_fleet(state, wait_s)

    async def _await_fleet(self, state: FleetState, wait_s: float) -> ActivationOutcome:
        deadline = time.monotonic() + wait_s
        while True:
            live = [i for i in await self.instances() if i.live]
            done = tuple(i.instance_id for i in live if i.active_revision == state.desired_revision)
            pending = tuple(i.instance_id for i in live
                            if i.active_revision != state.desired_revision)
            if not pending or time.monotonic() >= deadline:
                return ActivationOutcome(revision=state.desired_revision,
                                         generation=state.generation,
                                         previous_revision=state.previous_revision,
                                         acknowledged=done, pending=pending)
            await asyncio.sleep(self._poll_s)


def _required(revision: str) -> str:
    if not revision.strip():
        raise InvalidRequest("revision is required (acgs policy list names them)")
    return revision.strip()
