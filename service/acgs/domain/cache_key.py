"""The decision cache's domain rules: how a decision is keyed and which ones may be kept.

A key is a SHA-256 over the policy revision, the data revision and the
canonical JSON of the whole decision input, so a new policy or data revision
never reads an entry another revision wrote ("never stale"), and two inputs
that mean the same (field order, ``1`` vs ``1.0``) share one entry. The key
starts with :data:`KEY_VERSION`; change it whenever the key or the stored
value changes format, so old and new servers never read each other's entries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from acgs.domain.canonical import digest, dumps, normalize
from acgs.domain.model import AUDIT_UNAVAILABLE, FAIL_SAFE, Effect, EngineResult
from acgs.errors import ConfigurationError

KEY_VERSION = "acgs:dc1"
"""Prefix of every decision cache key; bump it when the key or value format changes."""

# Results the service made on its own because it could not trust the engine.
_UNCACHEABLE_PRINCIPLES = frozenset({FAIL_SAFE, AUDIT_UNAVAILABLE})


class PolicyIdentity(Protocol):
    """What a key needs of the policy (satisfied by ``ports.PolicyInfo``)."""

    @property
    def revision(self) -> str: ...

    @property
    def data_revision(self) -> str: ...


def decision_cache_key(policy: PolicyIdentity, policy_input: Mapping[str, Any]) -> str:
    """Return the cache key of ``policy_input`` decided under ``policy``.

    Equal for inputs that differ only in map order or integral number
    spelling; different whenever the revisions or the input's meaning differ.
    Raises :class:`~acgs.errors.InvalidRequest` for input canonical JSON cannot
    carry (NaN, infinities, non-string keys, nesting deeper than 64).
    """
    return cache_key_of_json(policy, canonical_input(policy_input))


def canonical_input(policy_input: Mapping[str, Any], *, normalized: bool = False) -> str:
    """The canonical JSON a key is made of (the audit record reuses it); InvalidRequest as
    :func:`decision_cache_key`. ``normalized``: ``policy_input`` is known to be as
    ``normalize`` leaves it (see ``DecisionRequest.normalized``)."""
    return dumps(policy_input if normalized else normalize(dict(policy_input)))


def cache_key_of_json(policy: PolicyIdentity, input_json: str) -> str:
    """:func:`decision_cache_key` of an input already encoded by :func:`canonical_input`."""
    # digest() length-prefixes each part, so no part can bleed into another.
    return f"{KEY_VERSION}:" + digest(KEY_VERSION, policy.revision, policy.data_revision,
                                      input_json)


def cacheable_effects(names: Iterable[str]) -> frozenset[Effect]:
    """Parse configured effect names (``ALLOW``, ``DENY``) into the set that may be cached.

    Raises :class:`~acgs.errors.ConfigurationError` for an unknown name and for
    ``ESCALATE``: an escalation must reach a human every time, never a cache.
    """
    effects: set[Effect] = set()
    for name in names:
        try:
            effect = Effect(name.strip().upper())
        except ValueError as err:
            raise ConfigurationError(f"cache effect {name!r} is not ALLOW or DENY") from err
        if effect is Effect.ESCALATE:
            raise ConfigurationError("ESCALATE decisions are never cached")
        effects.add(effect)
    return frozenset(effects)


def is_cacheable(result: EngineResult, effects: frozenset[Effect]) -> bool:
    """True when ``result`` may be cached: an allowed effect, and not a fail-safe DENY.

    ESCALATE is refused whatever ``effects`` says, and so is any result naming
    the ``fail_safe`` or ``audit_unavailable`` principle: those describe a
    momentary failure of this server, not what the constitution says.
    """
    if result.effect is Effect.ESCALATE or result.effect not in effects:
        return False
    return not any(v.principle in _UNCACHEABLE_PRINCIPLES for v in result.violations)
