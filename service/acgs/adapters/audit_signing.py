"""Ed25519 keys of the audit checkpoints: the signer, its key file, the trusted keys.

The signing key is a PEM file PostgreSQL never sees (``ACGS_AUDIT_SIGNING_KEY``);
in development, when unset, one is generated under the data directory (mode
0600) with its public key next to it. A key is named by its *key id*: the first
16 hex digits of the SHA-256 of its raw 32-byte public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from acgs.domain.checkpoint import Checkpoint
from acgs.errors import ConfigurationError

logger = logging.getLogger("acgs.audit.signing")

_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(*_RAW)


def key_id(key: Ed25519PublicKey) -> str:
    """The fingerprint naming ``key`` in checkpoints and reports."""
    return hashlib.sha256(raw_public(key)).hexdigest()[:16]


class CheckpointSigner:
    """Signs checkpoints with one Ed25519 private key."""

    def __init__(self, *, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)
        self._public_b64 = base64.b64encode(raw_public(self.public_key)).decode("ascii")

    def sign(self, *, instance_id: str, signed_seq: int, head_hash: str,
             signed_at_us: int, damaged: Sequence[int] = ()) -> Checkpoint:
        """A checkpoint of ``instance_id``'s chain at ``signed_seq``, signed; ``damaged``:
        the seqs it attests were quarantined as damaged journal lines."""
        cp = Checkpoint(instance_id=instance_id, signed_seq=signed_seq, head_hash=head_hash,
                        signed_at_us=signed_at_us, key_id=self.key_id,
                        public_key=self._public_b64, damaged=tuple(sorted(set(damaged))))
        signature = base64.b64encode(self._key.sign(cp.message())).decode("ascii")
        return replace(cp, signature=signature)

    @classmethod
    def from_file(cls, path: Path) -> CheckpointSigner:
        """Load a PEM Ed25519 private key; ConfigurationError if unreadable or not Ed25519."""
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as err:
            raise ConfigurationError(f"ACGS_AUDIT_SIGNING_KEY: {path}: {err}") from err
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigurationError(f"ACGS_AUDIT_SIGNING_KEY: {path}: not an Ed25519 key")
        return cls(private_key=key)

    @classmethod
    def development(cls, directory: Path) -> CheckpointSigner:
        """The data directory's own key, generated on first use (development only)."""
        path = directory / "audit-signing-key.pem"
        if not path.exists():
            directory.mkdir(parents=True, exist_ok=True)
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption())
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
        signer = cls.from_file(path)
        public = directory / "audit-signing-key.pub.pem"
        if not public.exists():
            public.write_bytes(signer.public_key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        logger.warning("audit checkpoints signed with the development key %s (key id %s); "
                       "its public key, to verify exports with: %s", path, signer.key_id, public)
        return signer


def load_public_keys(paths: Sequence[Path], *, setting: str) -> list[Ed25519PublicKey]:
    """PEM public keys (a private key file gives its public key); ConfigurationError if bad."""
    keys = []
    for path in paths:
        try:
            data = path.read_bytes()
            key: object = (serialization.load_pem_private_key(data, password=None).public_key()
                           if b"PRIVATE KEY" in data else serialization.load_pem_public_key(data))
        except (OSError, ValueError, TypeError) as err:
            raise ConfigurationError(f"{setting}: {path}: {err}") from err
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigurationError(f"{setting}: {path}: not an Ed25519 key")
        keys.append(key)
    return keys


class TrustedKeys:
    """The CheckpointKeys port: which keys' checkpoint signatures a verifier accepts.

    With ``keys`` (ACGS_AUDIT_TRUSTED_KEYS, this server's own key, or ``--public-key``)
    only those. With ``self_asserted=True`` a checkpoint signed by another key is
    checked against the public key it carries itself: that proves the records
    match what some key holder signed, not who the holder was (a database writer
    could sign with a key of their own), so the report says so. Checkpoints of
    ``own_instance`` (the verifying server's) are never taken on their word.
    """

    def __init__(self, *, keys: Sequence[Ed25519PublicKey], self_asserted: bool = False,
                 source: str = "", own_instance: str = "") -> None:
        self._keys = {key_id(k): k for k in keys}
        self._self_asserted = self_asserted
        self._own = own_instance  # its checkpoints must be signed by a key in ``keys``
        ids = ", ".join(sorted(self._keys)) or "none"
        self.trust = f"keys {ids} ({source or 'configured'})"
        if self_asserted:
            self.trust += ("; other checkpoints are checked against the key they carry, which "
                           "a database writer could replace: set ACGS_AUDIT_TRUSTED_KEYS")

    def problem(self, checkpoint: Checkpoint) -> str | None:
        key = self._keys.get(checkpoint.key_id)
        if key is None and self._self_asserted and checkpoint.instance_id != self._own:
            carried = _carried(checkpoint)
            if isinstance(carried, str):
                return carried
            key = carried
        if key is None:
            return f"signed by key {checkpoint.key_id}, which is not a trusted key"
        try:
            key.verify(base64.b64decode(checkpoint.signature, validate=True), checkpoint.message())
        except (InvalidSignature, binascii.Error, ValueError):
            return f"its signature does not verify against key {checkpoint.key_id}"
        return None


def _carried(checkpoint: Checkpoint) -> Ed25519PublicKey | str:
    """The public key a checkpoint carries, or why it is unusable."""
    try:
        key = Ed25519PublicKey.from_public_bytes(
            base64.b64decode(checkpoint.public_key, validate=True))
    except (binascii.Error, ValueError):
        return "the public key it carries is not an Ed25519 key"
    if key_id(key) != checkpoint.key_id:
        return f"the public key it carries is not key {checkpoint.key_id}"
    return key
