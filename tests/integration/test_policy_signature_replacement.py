"""A version whose stored signature does not verify under the trusted keys
(attached unchecked while no keys were trusted, or by a key since rotated out) must be
able to take a signature that verifies; otherwise the documented move to trusted keys
("push the signed directory: the version takes the signature") is blocked for ever."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from acgs import CONSTITUTIONAL_HASH
from acgs.adapters.pg_policies import PgPolicyStore
from acgs.adapters.policy_signatures import Ed25519Verifier, sign
from acgs.adapters.rego_source import PolicyBundle, load_policy_dir
from acgs.config import Settings
from acgs.domain.model import Caller
from acgs.domain.policy_version import CheckedPolicy, content_digest
from acgs.lifecycle.policy import seed_fleet
from acgs.service_layer.policy_admin import PolicyAdminService
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.integration.test_policy_history import ALICE, BOB, admin_events, run

pytestmark = pytest.mark.postgres
MODULES = {"a.rego": "package a"}


class Checker:
    async def check(self, *, modules: Mapping[str, str], data_json: str,
                    manifest_json: str) -> CheckedPolicy:
        pairs = tuple(sorted(modules.items()))
        return CheckedPolicy("rA", content_digest(pairs, data_json, manifest_json), "p", "1",
                             pairs, data_json, manifest_json, 1)


def _sig(key: Ed25519PrivateKey) -> str:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return sign(content_digest(tuple(MODULES.items()), "{}", "{}"), private_key_pem=pem)


@pytest.mark.parametrize("bad", ["garbage-from-an-admin-without-the-key", "rotated"])
def test_a_signature_that_does_not_verify_is_replaced_by_one_that_does(
        pg_url: str, bad: str) -> None:
    key, old = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    bad_sig = _sig(old) if bad == "rotated" else bad

    async def body(store: PgPolicyStore) -> tuple[object, object]:
        untrusted = PolicyAdminService(checker=Checker(), store=store, verifier=None)
        await untrusted.create(modules=MODULES, data_json="{}", manifest_json="{}",
                               signature="", caller=ALICE, message="unsigned")
        # before trusted keys: any string is attached, unchecked, and recorded as "signed"
        poisoned = await untrusted.create(modules=MODULES, data_json="{}", manifest_json="{}",
                                          signature=bad_sig, caller=BOB)
        trusted = PolicyAdminService(checker=Checker(), store=store,
                                     verifier=Ed25519Verifier(keys=[key.public_key()]))
        fixed = await trusted.create(modules=MODULES, data_json="{}", manifest_json="{}",
                                     signature=_sig(key), caller=ALICE, message="signed")
        await trusted.activate("rA", caller=ALICE, wait_s=0)  # BadSignature today
        return poisoned, fixed

    poisoned, fixed = run(pg_url, body)
    assert poisoned.signature_attached  # type: ignore[attr-defined]
    assert fixed.signature_attached  # type: ignore[attr-defined]
    kinds = [e[1] for e in admin_events(pg_url)]
    assert kinds.count("policy.version_signed") == 2


@dataclass
class SignedSeed:
    """A copy of policy/ signed by ``verifier``'s key (policy.sig), as a server would seed."""

    directory: Path
    bundle: PolicyBundle
    digest: str
    signature: str
    checked: CheckedPolicy
    verifier: Ed25519Verifier

    @classmethod
    def make(cls, tmp_path: Path) -> SignedSeed:
        directory = tmp_path / "policy"
        shutil.copytree("policy", directory)
        bundle = load_policy_dir(directory, constitutional_hash=CONSTITUTIONAL_HASH)
        digest = content_digest(bundle.modules, bundle.data_json, bundle.manifest_json)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        signature = sign(digest, private_key_pem=pem)
        (directory / "policy.sig").write_text(signature + "\n")
        checked = CheckedPolicy(bundle.revision, digest, bundle.name, bundle.version,
                                bundle.modules, bundle.data_json, bundle.manifest_json, 0)
        return cls(directory, bundle, digest, signature, checked,
                   Ed25519Verifier(keys=[key.public_key()]))

    async def seed(self, store: PgPolicyStore) -> str:
        """seed_fleet with trusted keys; the signature then stored, checked as catch-up does."""
        await seed_fleet(Settings(policy_dir=self.directory, instance_id="srv-1"), store=store,
                         bundle=self.bundle, verifier=self.verifier)
        version = await store.get_version(self.bundle.revision)
        self.verifier.verify(digest=self.digest, signature=version.signature)
        return version.signature


def test_a_signed_seed_replaces_a_stored_signature_that_does_not_verify(
        pg_url: str, tmp_path: Path) -> None:
    """README: 'start with ACGS_POLICY_DIR signed (policy.sig): when its revision is stored
    unsigned and the signature verifies, the server attaches it'. A stored signature that
    does not verify (attached unchecked before the keys were trusted) must not block it."""
    seed = SignedSeed.make(tmp_path)

    async def body(store: PgPolicyStore) -> str:
        # the fleet ran without trusted keys; someone pushed the same content with junk
        await store.insert_version(seed.checked, signature="junk", caller=ALICE)
        await store.activate(seed.bundle.revision, caller=Caller("srv-0", "system"))
        return await seed.seed(store)

    assert run(pg_url, body) == seed.signature


def test_a_first_start_seeds_a_revision_stored_unsigned_with_its_signature(
        pg_url: str, tmp_path: Path) -> None:
    """No desired revision yet, the directory's revision stored unsigned (a seed that
    crashed between its insert and its activation): the signed seed must sign it."""
    seed = SignedSeed.make(tmp_path)

    async def body(store: PgPolicyStore) -> str:
        await store.insert_version(seed.checked, signature="", caller=ALICE)
        return await seed.seed(store)

    assert run(pg_url, body) == seed.signature
