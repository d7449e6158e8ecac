"""Policy versions as stored and served across the fleet: values only, no I/O.

A version is immutable and named by its ``revision``: the first 16 hex digits
of :func:`content_digest`, the same digest :mod:`acgs.adapters.rego_source`
seals a :class:`~acgs.adapters.rego_source.PolicyBundle` with. Signatures
cover the whole digest (:func:`signing_message`), not the short revision.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from acgs.domain import canonical

SIGNATURE_CONTEXT = "acgs-policy-v1:"
SIGNATURE_FILE = "policy.sig"
"""The file of a policy directory holding its signature (``acgs policy sign`` writes it)."""


def content_digest(modules: Iterable[tuple[str, str]], data_json: str, manifest_json: str) -> str:
    """SHA-256 (hex) of canonical modules (sorted by name), data and manifest text."""
    parts = [part for pair in sorted(modules) for part in pair]
    return canonical.digest("modules", *parts, "data", data_json, "manifest", manifest_json)


def signing_message(digest: str) -> bytes:
    """The bytes an Ed25519 policy signature signs: a context label and the full digest."""
    return (SIGNATURE_CONTEXT + digest).encode("ascii")


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    """One stored version. ``modules`` is empty in listings (sources are fetched by revision)."""

    revision: str
    name: str
    version: str
    created_by: str
    created_at: dt.datetime
    signature: str = ""
    modules: tuple[tuple[str, str], ...] = ()
    data_json: str = "{}"
    manifest_json: str = "{}"
    message: str = ""
    """Why it was uploaded (``acgs policy push -m``)."""

    def digest(self) -> str:
        """The content digest its signature covers (of a version fetched with its sources)."""
        return content_digest(self.modules, self.data_json, self.manifest_json)


@dataclass(frozen=True, slots=True)
class CheckedPolicy:
    """An upload that passed every check (static, compile, its Rego tests)."""

    revision: str
    digest: str
    name: str
    version: str
    modules: tuple[tuple[str, str], ...]
    data_json: str
    manifest_json: str
    tests_passed: int


@dataclass(frozen=True, slots=True)
class FleetState:
    """The revision the fleet should serve and the one its last change replaced;
    ``generation`` is the seq of the last history entry (grows on every change)."""

    desired_revision: str
    previous_revision: str
    generation: int


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """One server as its heartbeats describe it; ``live`` when its last one is recent."""

    instance_id: str
    address: str
    active_revision: str
    serving: bool
    last_heartbeat: dt.datetime
    live: bool


@dataclass(frozen=True, slots=True)
class ActivationOutcome:
    """What an activation reached: every live server acknowledged, or who is pending."""

    revision: str
    generation: int
    previous_revision: str
    acknowledged: tuple[str, ...]
    pending: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return not self.pending
