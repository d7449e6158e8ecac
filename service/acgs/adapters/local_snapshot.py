"""A local, verified copy of what a server needs from PostgreSQL to start without it.

A server that restarts while PostgreSQL is down still knows how to decide:
the policy version it served last and the token table it checked callers
against are kept under ``<ACGS_DATA_DIR>/snapshot/``, written whenever the
server activates a version or reads a changed token table, and read only at a
start that cannot reach the database.

Every read is verified, and a copy that fails is refused (SnapshotInvalid),
never served: the policy's content digest must give its revision (the digest
that names every version), its stored signature must verify when trusted keys
are configured (``verify``), and the token table must match the SHA-256 kept
beside it. The digests detect damage and naive edits; someone who can rewrite
these files can also rewrite the journal, so their protection is the data
directory's permissions (0700, files 0600). The token copy holds what the
database holds, the tokens' SHA-256 hashes, never a token.

Writes are atomic: a temporary file, fsync, rename, fsync of the directory.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from acgs.domain import canonical
from acgs.domain.policy_version import PolicyVersion
from acgs.domain.tokens import TokenRecord
from acgs.errors import SnapshotInvalid

FORMAT = 1
POLICY_FILE = "policy.json"
TOKENS_FILE = "tokens.json"
_TOKEN_FIELDS = ("id", "name", "role", "secret_hash", "created_by", "created_at", "revoked_at",
                 "expires_at", "identity")
_TIMES = ("created_at", "revoked_at", "expires_at")

Verify = Callable[[str, str], None]
"""``verify(digest, signature)``: raises BadSignature unless a trusted key signed ``digest``."""


class SnapshotStore:
    """The snapshot files under ``directory`` (created 0700 on the first write)."""

    def __init__(self, *, directory: Path) -> None:
        self.directory = directory

    @property
    def policy_path(self) -> Path:
        return self.directory / POLICY_FILE

    @property
    def tokens_path(self) -> Path:
        return self.directory / TOKENS_FILE

    def save_policy(self, version: PolicyVersion) -> None:
        """Keep ``version`` (with its sources) as the one to serve offline; raises OSError."""
        if not version.modules:
            raise ValueError(f"policy version {version.revision}: no sources to keep")
        doc = {"format": FORMAT, "revision": version.revision, "name": version.name,
               "version": version.version, "created_by": version.created_by,
               "created_at": version.created_at.isoformat(), "signature": version.signature,
               "modules": dict(version.modules), "data_json": version.data_json,
               "manifest_json": version.manifest_json}
        self._write(self.policy_path, doc)

    def load_policy(self, *, verify: Verify | None = None) -> PolicyVersion | None:
        """The kept version, verified; None when there is none; SnapshotInvalid when it fails."""
        doc = self._read(self.policy_path)
        if doc is None:
            return None
        try:
            modules = tuple(sorted((str(k), str(v)) for k, v in dict(doc["modules"]).items()))
            version = PolicyVersion(
                revision=str(doc["revision"]), name=str(doc["name"]),
                version=str(doc["version"]), created_by=str(doc["created_by"]),
                created_at=dt.datetime.fromisoformat(str(doc["created_at"])),
                signature=str(doc["signature"]), modules=modules,
                data_json=str(doc["data_json"]), manifest_json=str(doc["manifest_json"]))
        except (KeyError, TypeError, ValueError) as err:
            raise SnapshotInvalid(f"{self.policy_path}: malformed ({err})") from err
        digest = version.digest()
        if digest[:16] != version.revision:
            raise SnapshotInvalid(f"{self.policy_path}: content digest {digest[:16]} does not "
                                  f"match its revision {version.revision}: altered or damaged")
        if verify is not None:
            verify(digest, version.signature)
        return version

    def save_tokens(self, records: Sequence[TokenRecord]) -> None:
        """Keep ``records`` (hashes only, as the table holds them); raises OSError."""
        rows = [_token_row(r) for r in records]
        self._write(self.tokens_path, {"format": FORMAT, "digest": tokens_digest(rows),
                                       "records": rows})

    def load_tokens(self) -> list[TokenRecord] | None:
        """The kept token table; None when there is none; SnapshotInvalid when it fails."""
        doc = self._read(self.tokens_path)
        if doc is None:
            return None
        rows = doc.get("records")
        if not isinstance(rows, list) or doc.get("digest") != tokens_digest(rows):
            raise SnapshotInvalid(f"{self.tokens_path}: its digest does not match its "
                                  "records: altered or damaged")
        try:
            return [_token_record(row) for row in rows]
        except (KeyError, TypeError, ValueError) as err:
            raise SnapshotInvalid(f"{self.tokens_path}: malformed record ({err})") from err

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            text = path.read_text("utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as err:
            raise SnapshotInvalid(f"{path}: unreadable ({err})") from err
        try:
            doc = json.loads(text)
        except ValueError as err:
            raise SnapshotInvalid(f"{path}: not JSON ({err}): damaged") from err
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise SnapshotInvalid(f"{path}: not a snapshot of format {FORMAT}")
        return doc

    def _write(self, path: Path, doc: dict[str, Any]) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # an older file of that name may have had another mode
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(doc, sort_keys=True))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)


def tokens_digest(rows: Sequence[Any]) -> str:
    """SHA-256 of the canonical JSON of the token rows (what ``tokens.json`` is checked by)."""
    return canonical.digest(canonical.dumps(list(rows)))


def _token_row(record: TokenRecord) -> dict[str, Any]:
    row: dict[str, Any] = {name: getattr(record, name) for name in _TOKEN_FIELDS}
    for name in _TIMES:
        row[name] = row[name].isoformat() if row[name] is not None else None
    return row


def _token_record(row: dict[str, Any]) -> TokenRecord:
    times = [dt.datetime.fromisoformat(row[name]) if row[name] is not None else None
             for name in _TIMES]
    identity = row.get("identity")  # absent from snapshots written before identities
    return TokenRecord(id=str(row["id"]), name=str(row["name"]), role=str(row["role"]),
                       secret_hash=str(row["secret_hash"]), created_by=str(row["created_by"]),
                       created_at=times[0], revoked_at=times[1], expires_at=times[2],
                       identity=str(identity) if identity is not None else None)
