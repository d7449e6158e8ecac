"""Signed checkpoints of an audit chain: what is signed, and how it travels in the chain.

A checkpoint states "instance X's chain had head hash H at seq M, at time T",
signed with an Ed25519 key the database never holds (the anchor is AWS
CloudTrail's signed digest files; Certificate Transparency's signed tree heads
do the same). It is journaled as the record right after seq M (kind
``checkpoint``, ``prev_hash`` = H), so a checkpoint is itself chained, and its
``request_json`` carries the signed payload. An attacker who edits a record
and recomputes every hash after it cannot re-sign the checkpoints that follow:
their signed head hash no longer matches the chain. Nothing here does I/O or
cryptography (see :mod:`acgs.adapters.audit_signing`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from acgs.domain import canonical
from acgs.domain.audit import AuditRecord

KIND = "checkpoint"
"""The ``kind`` of a checkpoint record."""

_VERSION = 1


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement of a chain's head; ``public_key``/``signature`` are base64."""

    instance_id: str
    signed_seq: int  # the last record the checkpoint covers (its record is signed_seq + 1)
    head_hash: str  # record_hash of signed_seq (GENESIS_HASH when signed_seq is 0)
    signed_at_us: int
    key_id: str  # fingerprint of the public key: see acgs.adapters.audit_signing.key_id
    public_key: str = ""
    signature: str = ""
    # Seqs of this chain the signing server found damaged in its own journal and
    # quarantined: a verifier accepts a quarantined gap only when a checkpoint attests it
    # (a quarantine row alone is unsigned database data a writer could forge).
    damaged: tuple[int, ...] = ()

    def message(self) -> bytes:
        """The bytes signed: every field but the signature and the (self-asserted) key."""
        body: dict[str, Any] = {
            "acgs_checkpoint": _VERSION, "instance_id": self.instance_id,
            "signed_seq": self.signed_seq, "head_hash": self.head_hash,
            "signed_at_us": self.signed_at_us, "key_id": self.key_id,
        }
        if self.damaged:  # absent when empty: checkpoints signed before it still verify
            body["damaged"] = list(self.damaged)
        return canonical.dumps(body).encode("utf-8")

    def document(self) -> dict[str, Any]:
        """The ``request_json`` document of this checkpoint's record."""
        body: dict[str, Any] = {
            "version": _VERSION, "instance_id": self.instance_id,
            "signed_seq": self.signed_seq, "head_hash": self.head_hash,
            "signed_at_us": self.signed_at_us, "key_id": self.key_id,
            "public_key": self.public_key, "signature": self.signature,
        }
        if self.damaged:
            body["damaged"] = list(self.damaged)
        return {"checkpoint": body}

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Checkpoint:
        """Parse :meth:`document`; ValueError (or KeyError/TypeError) when it is not one."""
        body = doc["checkpoint"]
        if body["version"] != _VERSION:
            raise ValueError(f"unknown checkpoint version {body['version']!r}")
        fields = {name: body[name] for name in (
            "instance_id", "signed_seq", "head_hash", "signed_at_us", "key_id",
            "public_key", "signature")}
        for name in ("signed_seq", "signed_at_us"):
            if not isinstance(fields[name], int) or isinstance(fields[name], bool):
                raise TypeError(f"checkpoint {name} is not an integer")
        for name in ("instance_id", "head_hash", "key_id", "public_key", "signature"):
            if not isinstance(fields[name], str):
                raise TypeError(f"checkpoint {name} is not a string")
        damaged = body.get("damaged", [])
        if not isinstance(damaged, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) for d in damaged):
            raise TypeError("checkpoint damaged is not a list of integers")
        return cls(**fields, damaged=tuple(damaged))

    @classmethod
    def from_record(cls, record: AuditRecord) -> Checkpoint:
        """The checkpoint a record of kind ``checkpoint`` carries; ValueError if malformed."""
        try:
            return cls.from_document(json.loads(record.request_json))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"checkpoint payload does not parse: {err!r}") from err


class CheckpointKeys(Protocol):
    """The public keys a verifier trusts (:class:`acgs.adapters.audit_signing.TrustedKeys`)."""

    @property
    def trust(self) -> str:
        """Which keys are trusted and where they came from, for the report."""
        ...

    def problem(self, checkpoint: Checkpoint) -> str | None:
        """None when a trusted key signed ``checkpoint``; else why it cannot be trusted."""
        ...
