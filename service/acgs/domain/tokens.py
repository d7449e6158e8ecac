"""Bearer tokens: their format, how they are issued, and how a presented one is checked.

A token reads ``acgs_<16 hex>.<secret>``: the part before the dot is its public
id (what the audit trail names as the caller, what ``acgs token revoke`` takes),
the rest is 256 random bits (``secrets.token_urlsafe(32)``). Only the SHA-256 of
the whole token is stored; a fast hash is enough because the secret is random,
not a password. The secret is compared in constant time (``hmac.compare_digest``).
No I/O here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

AGENT = "agent"
ADMIN = "admin"
AUDITOR = "auditor"
ROLES = (AGENT, ADMIN, AUDITOR)
"""Every role a token may carry. What each may call is :mod:`acgs.entrypoints.access`."""

_ID = re.compile(r"acgs_[0-9a-f]{16}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """One stored token, as the token table holds it (never the token itself)."""

    id: str
    name: str
    role: str
    secret_hash: str
    created_by: str = ""
    created_at: dt.datetime | None = None
    revoked_at: dt.datetime | None = None
    expires_at: dt.datetime | None = None  # None: never
    identity: str | None = None  # the person or service it stands for (alice@corp)

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def expired(self, now: dt.datetime) -> bool:
        """True from ``expires_at`` on (``now`` timezone-aware, as the table's times are)."""
        return self.expires_at is not None and now >= self.expires_at


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A new token: ``token`` is shown once, ``record`` is what gets stored."""

    token: str
    record: TokenRecord


def issue(*, role: str, name: str, created_by: str,
          expires_at: dt.datetime | None = None, identity: str | None = None) -> IssuedToken:
    """A new random token for ``role``, valid until ``expires_at`` (None: until revoked),
    standing for ``identity`` (a person or service, e.g. ``alice@corp``; None: nobody named).

    ValueError for an unknown role, an empty name, an expiry that is naive or past, or an
    identity that is blank, longer than 256 characters or holds control characters.
    """
    if identity is not None:
        identity = check_identity(identity)
    if expires_at is not None and (expires_at.tzinfo is None
                                   or expires_at <= dt.datetime.now(dt.UTC)):
        raise ValueError("a token's expiry must be a timezone-aware time in the future")
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    if not name.strip():
        raise ValueError("a token needs a name (who or what it is for)")
    token_id = f"acgs_{secrets.token_hex(8)}"
    token = f"{token_id}.{secrets.token_urlsafe(32)}"
    record = TokenRecord(id=token_id, name=name.strip(), role=role,
                         secret_hash=hash_token(token), created_by=created_by,
                         expires_at=expires_at, identity=identity)
    return IssuedToken(token=token, record=record)


def check_identity(identity: str) -> str:
    """``identity`` stripped; ValueError when it is empty, over 256 characters or has controls."""
    value = identity.strip()
    if not value or len(value) > 256 or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("an identity is 1 to 256 printable characters, like alice@corp")
    return value


def hash_token(token: str) -> str:
    """What the table stores of ``token``: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse(token: str) -> str | None:
    """The public id of a well-formed token, else None (then no lookup is worth doing)."""
    token_id, dot, secret = token.partition(".")
    if not dot or not _ID.fullmatch(token_id) or not _SECRET.fullmatch(secret):
        return None
    return token_id


def matches(token: str, record: TokenRecord) -> bool:
    """True when ``token`` is the one ``record`` was issued for (constant-time compare)."""
    return hmac.compare_digest(hash_token(token), record.secret_hash)


def bearer(header: str) -> str | None:
    """The token of an ``authorization: Bearer <token>`` value, else None."""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


_DURATION = re.compile(r"(\d+)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> dt.timedelta:
    """``90d``, ``12h``, ``30m``, ``45s`` as a timedelta; ValueError for anything else or 0."""
    m = _DURATION.fullmatch(text.strip())
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"{text!r} is not a duration like 90d, 12h, 30m or 45s")
    return dt.timedelta(seconds=int(m.group(1)) * _UNIT_S[m.group(2)])
