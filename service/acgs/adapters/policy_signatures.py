"""Ed25519 signatures of policy versions (``acgs policy sign``; ACGS_POLICY_TRUSTED_KEYS).

A signature signs :func:`~acgs.domain.policy_version.signing_message` of the
version's full content digest, and travels as base64 text. Keys are PEM files:
a private key to sign, public keys to trust.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from acgs.domain.policy_version import signing_message
from acgs.errors import BadSignature, ConfigurationError


def sign(digest: str, *, private_key_pem: bytes) -> str:
    """The base64 Ed25519 signature of ``digest``; ConfigurationError for a non-Ed25519 key."""
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError("the signing key is not an Ed25519 private key (PEM)")
    return base64.b64encode(key.sign(signing_message(digest))).decode("ascii")


class Ed25519Verifier:
    """Accepts a signature by any of ``keys``; refuses unsigned or otherwise signed versions."""

    def __init__(self, *, keys: Sequence[Ed25519PublicKey]) -> None:
        if not keys:
            raise ConfigurationError("an Ed25519 verifier needs at least one trusted key")
        self._keys = tuple(keys)

    @classmethod
    def from_files(cls, paths: Sequence[Path]) -> Ed25519Verifier:
        """Load PEM public keys; ConfigurationError if one is unreadable or not Ed25519."""
        keys = []
        for path in paths:
            try:
                key = serialization.load_pem_public_key(path.read_bytes())
            except (OSError, ValueError) as err:
                raise ConfigurationError(f"ACGS_POLICY_TRUSTED_KEYS: {path}: {err}") from err
            if not isinstance(key, Ed25519PublicKey):
                raise ConfigurationError(f"ACGS_POLICY_TRUSTED_KEYS: {path}: not an Ed25519 key")
            keys.append(key)
        return cls(keys=keys)

    def verify(self, *, digest: str, signature: str) -> None:
        """Return when a trusted key signed ``digest``; raise BadSignature otherwise."""
        if not signature:
            raise BadSignature("policy version is unsigned; this fleet requires signed policies")
        try:
            raw = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError) as err:
            raise BadSignature("policy signature is not base64") from err
        message = signing_message(digest)
        for key in self._keys:
            try:
                key.verify(raw, message)
                return
            except InvalidSignature:
                continue
        raise BadSignature("policy signature does not verify against any trusted key")
