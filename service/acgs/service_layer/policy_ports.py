"""The ports of the policy lifecycle (:mod:`policy_admin`, :mod:`policy_sync`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from acgs.domain.policy_version import CheckedPolicy, FleetState, InstanceInfo, PolicyVersion


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
    """Stored versions, the fleet's desired revision and its servers (raises Unavailable)."""

    async def insert_version(self, policy: CheckedPolicy, *, signature: str,
                             created_by: str) -> PolicyVersion: ...

    async def get_version(self, revision: str, *, full: bool = True) -> PolicyVersion: ...

    async def list_versions(self) -> list[PolicyVersion]: ...

    async def state(self) -> FleetState | None: ...

    async def set_desired(self, revision: str, *, activated_by: str,
                          only_if_unset: bool = False) -> FleetState: ...

    async def heartbeat(self, *, instance_id: str, address: str, active_revision: str,
                        serving: bool) -> None: ...

    async def leave(self, instance_id: str) -> None: ...

    async def instances(self, *, live_within_s: float) -> list[InstanceInfo]: ...
