"""The local snapshot a server starts from while PostgreSQL is unreachable: what is kept
reads back, what is missing is None, and anything altered or damaged is refused."""

from __future__ import annotations

import datetime as dt
import json
import stat
from dataclasses import replace
from pathlib import Path

import pytest
from acgs.adapters.local_snapshot import SnapshotStore, tokens_digest
from acgs.adapters.policy_signatures import Ed25519Verifier, sign
from acgs.adapters.rego_source import load_policy_dir
from acgs.domain import tokens
from acgs.domain.policy_version import PolicyVersion, content_digest
from acgs.errors import BadSignature, SnapshotInvalid
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

REPO = Path(__file__).resolve().parents[2]
HASH = "cdd01ef066bc6cf2"
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _version(signature: str = "") -> PolicyVersion:
    bundle = load_policy_dir(REPO / "policy", constitutional_hash=HASH)
    return PolicyVersion(revision=bundle.revision, name=bundle.name, version=bundle.version,
                         created_by="tests", created_at=NOW, signature=signature,
                         modules=bundle.modules, data_json=bundle.data_json,
                         manifest_json=bundle.manifest_json)


def _issued() -> list[tokens.IssuedToken]:
    return [tokens.issue(role=tokens.AGENT, name="agent", created_by="tests"),
            tokens.issue(role=tokens.ADMIN, name="old admin", created_by="tests")]


def _tokens(issued: list[tokens.IssuedToken] | None = None) -> list[tokens.TokenRecord]:
    agent, revoked = (i.record for i in issued or _issued())
    return [replace(agent, created_at=NOW),
            replace(revoked, created_at=NOW, revoked_at=NOW, expires_at=NOW)]


def _edit(path: Path, change: object) -> None:
    doc = json.loads(path.read_text())
    change(doc)  # type: ignore[operator]
    path.write_text(json.dumps(doc))


def test_missing_snapshots_read_as_none(tmp_path: Path) -> None:
    store = SnapshotStore(directory=tmp_path / "snapshot")
    assert store.load_policy() is None
    assert store.load_tokens() is None


def test_policy_round_trip_private_and_atomic(tmp_path: Path) -> None:
    store = SnapshotStore(directory=tmp_path / "snapshot")
    version = _version()
    store.save_policy(version)
    assert store.load_policy() == version
    assert stat.S_IMODE(store.policy_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    assert [p.name for p in store.directory.iterdir()] == ["policy.json"]  # no temp left


def test_an_altered_policy_module_is_refused(tmp_path: Path) -> None:
    store = SnapshotStore(directory=tmp_path / "snapshot")
    store.save_policy(_version())

    def weaken(doc: dict[str, object]) -> None:
        modules = doc["modules"]
        assert isinstance(modules, dict)
        name = sorted(modules)[0]
        modules[name] = modules[name] + "\n# allow everything\n"

    _edit(store.policy_path, weaken)
    with pytest.raises(SnapshotInvalid, match="does not match its revision"):
        store.load_policy()


def test_a_policy_whose_revision_was_rewritten_is_refused(tmp_path: Path) -> None:
    store = SnapshotStore(directory=tmp_path / "snapshot")
    store.save_policy(_version())
    _edit(store.policy_path, lambda d: d.update(revision="0" * 16))
    with pytest.raises(SnapshotInvalid):
        store.load_policy()


def test_damaged_or_truncated_files_are_refused(tmp_path: Path) -> None:
    store = SnapshotStore(directory=tmp_path / "snapshot")
    store.save_policy(_version())
    store.save_tokens(_tokens())
    for path in (store.policy_path, store.tokens_path):
        path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(SnapshotInvalid, match="damaged"):
        store.load_policy()
    with pytest.raises(SnapshotInvalid, match="damaged"):
        store.load_tokens()


def test_the_stored_signature_must_still_verify(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    verifier = Ed25519Verifier(keys=[key.public_key()])
    unsigned = _version()
    digest = content_digest(unsigned.modules, unsigned.data_json, unsigned.manifest_json)
    store = SnapshotStore(directory=tmp_path / "snapshot")

    def verify(d: str, s: str) -> None:
        verifier.verify(digest=d, signature=s)

    store.save_policy(_version(signature=sign(digest, private_key_pem=pem)))
    assert store.load_policy(verify=verify) is not None
    store.save_policy(unsigned)
    with pytest.raises(BadSignature):
        store.load_policy(verify=verify)
    other = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    store.save_policy(_version(signature=sign(digest, private_key_pem=other)))
    with pytest.raises(BadSignature):
        store.load_policy(verify=verify)


def test_tokens_round_trip_hold_only_hashes(tmp_path: Path) -> None:
    store = SnapshotStore(directory=tmp_path / "snapshot")
    issued = _issued()
    records = _tokens(issued)
    store.save_tokens(records)
    assert store.load_tokens() == records
    assert stat.S_IMODE(store.tokens_path.stat().st_mode) == 0o600
    text = store.tokens_path.read_text()
    assert records[0].secret_hash in text
    for token in issued:  # neither the token nor its secret part
        assert token.token not in text and token.token.partition(".")[2] not in text


@pytest.mark.parametrize("change", [
    lambda d: d["records"][0].update(role="admin"),  # promote a token
    lambda d: d["records"][1].update(revoked_at=None),  # un-revoke one
    lambda d: d["records"].append(dict(d["records"][0], id="acgs_0123456789abcdef")),
    lambda d: d.update(digest="0" * 64),
])
def test_an_altered_token_snapshot_is_refused(tmp_path: Path, change: object) -> None:
    store = SnapshotStore(directory=tmp_path / "snapshot")
    store.save_tokens(_tokens())
    _edit(store.tokens_path, change)
    with pytest.raises(SnapshotInvalid, match="altered or damaged"):
        store.load_tokens()


def test_the_token_digest_covers_every_field() -> None:
    rows = [{"id": "a", "role": "agent"}]
    assert tokens_digest(rows) != tokens_digest([{"id": "a", "role": "admin"}])
