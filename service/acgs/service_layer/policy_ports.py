"""The ports of the policy lifecycle (:mod:`policy_admin`, :mod:`policy_sync`, shadow, watch)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from acgs.domain.model import Caller, Decision
from acgs.domain.policy_history import HistoryEntry
from acgs.domain.policy_version import CheckedPolicy, FleetState, InstanceInfo, PolicyVersion

if TYPE_CHECKING:
    from acgs.service_layer.policy_shadow import ShadowPlan, ShadowReport


class PolicyChecker(Protocol):
    """Checks an upload (static checks, compile, its Rego tests) without risking the server.

    Raises ConstitutionMismatch, UnsupportedBuiltin, PolicyTestsFailed,
    PolicyError or InvalidRequest.
    """

    async def check(self, *, modules: Mapping[str, str], data_json: str,
                    manifest_json: str) -> CheckedPolicy: ...


class SignatureVerifier(Protocol):
    """Raises BadSignature unless a trusted key signed ``digest``."""

    def verify(self, *, digest: str, signature: str) -> None: ...


class PolicyStore(Protocol):
    """Stored versions, the history of the fleet's desired revision and its servers (raises
    Unavailable). Every change records its audit event (``caller`` the actor) with it."""

    async def insert_version(self, policy: CheckedPolicy, *, signature: str, caller: Caller,
                             message: str = "") -> tuple[PolicyVersion, bool]: ...

    async def attach_signature(self, revision: str, *, signature: str, caller: Caller,
                               message: str = "",
                               replacing: str = "") -> tuple[PolicyVersion, bool]: ...

    async def get_version(self, revision: str, *, full: bool = True) -> PolicyVersion: ...

    async def list_versions(self) -> list[PolicyVersion]: ...

    async def state(self) -> FleetState | None: ...

    async def activate(self, revision: str, *, caller: Caller, message: str = "",
                       only_if_unset: bool = False) -> FleetState: ...

    async def roll_back(self, *, caller: Caller, reason: str = "",
                        from_revision: str = "") -> FleetState: ...

    async def history(self, *, limit: int, before_seq: int = 0) -> list[HistoryEntry]: ...

    async def heartbeat(self, *, instance_id: str, address: str, active_revision: str,
                        serving: bool) -> None: ...

    async def leave(self, instance_id: str) -> None: ...

    async def instances(self, *, live_within_s: float) -> list[InstanceInfo]: ...


class DecisionObserver(Protocol):
    """Sees every answered decision, after the answer (auto-rollback watch, shadow sampling).

    Synchronous, no I/O, never raises: it runs on the decision path.
    """

    def observe(self, policy_input: Mapping[str, Any], decision: Decision) -> None: ...


class ShadowStore(Protocol):
    """The fleet's shadow plan and each server's report (raises Unavailable)."""

    async def shadow_plan(self) -> ShadowPlan | None: ...

    async def set_shadow(self, *, revision: str, sample: float, examples: int,
                         actor: Caller) -> ShadowPlan: ...

    async def put_shadow_report(self, report: ShadowReport) -> None: ...

    async def shadow_reports(self, *, generation: int) -> list[ShadowReport]: ...


class RollbackStore(Protocol):
    """Rolls the fleet back from a revision, once: the PolicyStore's rollback (raises
    Unavailable, and InvalidTransition when ``from_revision`` is no longer desired or
    nothing is beneath it)."""

    async def roll_back(self, *, caller: Caller, reason: str = "",
                        from_revision: str = "") -> FleetState: ...
