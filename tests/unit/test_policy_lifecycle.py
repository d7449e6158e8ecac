"""The policy lifecycle with fakes: freshness of a lagging server, activation waiting for
the fleet, signatures, and a checker that crashes."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import pytest
from acgs.adapters.policy_checker import SubprocessPolicyChecker
from acgs.adapters.policy_signatures import Ed25519Verifier, sign
from acgs.domain import policy_history as ph
from acgs.domain.audit import AuditRecord
from acgs.domain.audit_query import DecisionFilter
from acgs.domain.model import Caller, Effect, EngineResult, Severity, Violation
from acgs.domain.policy_version import (
    CheckedPolicy,
    FleetState,
    InstanceInfo,
    PolicyVersion,
    content_digest,
)
from acgs.errors import BadSignature, EngineError, InvalidTransition, PolicyError
from acgs.service_layer.policy_admin import PolicyAdminService
from acgs.service_layer.policy_replay import PolicyReplayer, ReplayReport
from acgs.service_layer.policy_sync import PolicySync
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
ADMIN = Caller("tok-admin", "admin", "alice@example")


class FakeStore:
    """In memory; the history is the domain's stack (PostgreSQL's store: integration tests)."""

    def __init__(self) -> None:
        self.versions: dict[str, PolicyVersion] = {}
        self.fleet: FleetState | None = None
        self.rows: dict[str, InstanceInfo] = {}
        self.steps: dict[int, ph.Step] = {}
        self.signed_by: list[tuple[str, str, str]] = []  # attach_signature's records

    async def insert_version(self, policy: CheckedPolicy, *, signature: str, caller: Caller,
                             message: str = "") -> tuple[PolicyVersion, bool]:
        v = PolicyVersion(policy.revision, policy.name, policy.version, caller.id, NOW,
                          signature, policy.modules, policy.data_json, policy.manifest_json,
                          message)
        created = policy.revision not in self.versions
        return self.versions.setdefault(policy.revision, v), created

    async def attach_signature(self, revision: str, *, signature: str, caller: Caller,
                               message: str = "",
                               replacing: str = "") -> tuple[PolicyVersion, bool]:
        stored = self.versions[revision]
        if stored.signature != replacing or not signature or signature == replacing:
            return stored, False
        self.versions[revision] = replace(stored, signature=signature)
        self.signed_by.append((revision, caller.id, message))
        return self.versions[revision], True

    async def get_version(self, revision: str, *, full: bool = True) -> PolicyVersion:
        return self.versions[revision]

    async def list_versions(self) -> list[PolicyVersion]:
        return list(self.versions.values())

    async def state(self) -> FleetState | None:
        return self.fleet

    def _head(self) -> ph.Head | None:
        if not self.steps:
            return None
        last = self.steps[max(self.steps)]
        top = self.steps[last.in_force]
        below = self.steps.get(top.beneath)
        return ph.Head(last.seq, top.seq, top.revision, top.beneath,
                       below.revision if below else "")

    def _push(self, step: ph.Step) -> FleetState:
        self.steps[step.seq] = step
        self.fleet = FleetState(step.revision, step.replaced_revision, step.seq)
        return self.fleet

    async def activate(self, revision: str, *, caller: Caller, message: str = "",
                       only_if_unset: bool = False) -> FleetState:
        step = ph.activation(self._head(), revision, only_if_unset=only_if_unset)
        if step is not None:
            self._push(step)
        assert self.fleet is not None
        return self.fleet

    async def roll_back(self, *, caller: Caller, reason: str = "",
                        from_revision: str = "") -> FleetState:
        return self._push(ph.rollback(self._head(), from_revision=from_revision))

    async def history(self, *, limit: int, before_seq: int = 0) -> list[ph.HistoryEntry]:
        raise NotImplementedError("the history is listed from PostgreSQL only")

    async def heartbeat(self, *, instance_id: str, address: str, active_revision: str,
                        serving: bool) -> None:
        self.rows[instance_id] = InstanceInfo(instance_id, address, active_revision, serving,
                                              NOW, True)

    async def leave(self, instance_id: str) -> None:
        self.rows.pop(instance_id, None)

    async def instances(self, *, live_within_s: float) -> list[InstanceInfo]:
        return list(self.rows.values())


def version(revision: str) -> PolicyVersion:
    return PolicyVersion(revision, "p", "1", "t", NOW)


def checked(revision: str) -> CheckedPolicy:
    return CheckedPolicy(revision, revision * 4, "p", "1", (("a.rego", "package a"),), "{}",
                         "{}", 1)


class Server:
    """A fake server: its active revision, what activation does, its readiness reports."""

    def __init__(self, store: FakeStore, *, fail: bool = False, max_lag_s: float = 0.2,
                 verifier: Ed25519Verifier | None = None) -> None:
        self.active = "r0"
        self.fail = fail
        self.fresh: list[bool] = []
        self.verifier = verifier
        self.sync = PolicySync(store=store, instance_id="s1", activate=self._activate,
                               active_revision=lambda: self.active, address=lambda: "x:1",
                               serving=lambda: True, on_fresh=self._on_fresh,
                               interval_s=0.01, max_lag_s=max_lag_s,
                               verify=self._verify if verifier is not None else None)

    def _verify(self, v: PolicyVersion) -> None:
        assert self.verifier is not None
        self.verifier.verify(digest=content_digest(v.modules, v.data_json, v.manifest_json),
                             signature=v.signature)

    async def _activate(self, v: PolicyVersion) -> None:
        if self.fail:
            raise PolicyError("does not compile here")
        if self.verifier is not None:  # as the server's activation: verify, then swap
            self._verify(v)
        self.active = v.revision

    async def _on_fresh(self, fresh: bool) -> None:
        self.fresh.append(fresh)


def test_a_server_catches_up_and_acknowledges() -> None:
    async def run() -> None:
        store = FakeStore()
        store.versions = {"r0": version("r0"), "r1": version("r1")}
        store.fleet = FleetState("r1", "r0", 2)
        server = Server(store)
        await server.sync.catch_up()
        assert server.active == "r1"
        await server.sync.reconcile()
        assert store.rows["s1"].active_revision == "r1" and server.fresh == [True]

    asyncio.run(run())


def test_a_server_that_cannot_load_the_desired_version_goes_stale_after_the_lag() -> None:
    async def run() -> None:
        store = FakeStore()
        store.versions = {"r1": version("r1")}
        store.fleet = FleetState("r1", "r0", 2)
        server = Server(store, fail=True, max_lag_s=0.1)
        await server.sync.reconcile()
        assert server.fresh == [True]  # lagging, not yet for long
        await asyncio.sleep(0.15)
        await server.sync.reconcile()
        assert server.fresh[-1] is False and store.rows["s1"].active_revision == "r0"
        server.fail = False
        await server.sync.reconcile()
        assert server.fresh[-1] is True and server.active == "r1"

    asyncio.run(run())


def signed_version(revision: str, key: Ed25519PrivateKey | None) -> PolicyVersion:
    """A version with content, signed by ``key`` (None: unsigned)."""
    v = replace(version(revision), modules=(("a.rego", f"package {revision}"),))
    if key is None:
        return v
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    digest = content_digest(v.modules, v.data_json, v.manifest_json)
    return replace(v, signature=sign(digest, private_key_pem=pem))


def test_with_trusted_keys_the_revision_already_served_is_verified_at_start() -> None:
    """The seed of ACGS_POLICY_DIR is already active when the server catches up: with
    trusted keys, the desired revision's stored signature is verified all the same, and a
    start whose desired revision is unsigned (or signed by another key) is refused, naming
    it."""
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    verifier = Ed25519Verifier(keys=[key.public_key()])

    async def run() -> None:
        for signer, refusal in ((None, "unsigned"), (other, "does not verify")):
            store = FakeStore()
            store.versions = {"r0": signed_version("r0", signer)}
            store.fleet = FleetState("r0", "", 1)
            server = Server(store, verifier=verifier)
            with pytest.raises(BadSignature, match=f"r0.*{refusal}"):
                await server.sync.catch_up()
        store = FakeStore()
        store.versions = {"r0": signed_version("r0", key)}
        store.fleet = FleetState("r0", "", 1)
        server = Server(store, verifier=verifier)
        await server.sync.catch_up()
        await server.sync.reconcile()
        assert server.fresh == [True] and store.rows["s1"].active_revision == "r0"

    asyncio.run(run())


def test_with_trusted_keys_an_unverified_revision_served_is_not_fresh() -> None:
    """A server serving the desired revision without having verified it (its start held
    while the database was unreachable) verifies it in its next round; when it does not
    verify, the server reports itself stale at once, not after ACGS_POLICY_MAX_LAG_S, and
    fresh again once the fleet's desired revision verifies."""
    key = Ed25519PrivateKey.generate()

    async def run() -> None:
        store = FakeStore()
        store.versions = {"r0": signed_version("r0", None), "r1": signed_version("r1", key)}
        store.fleet = FleetState("r0", "", 1)
        server = Server(store, verifier=Ed25519Verifier(keys=[key.public_key()]),
                        max_lag_s=60)
        await server.sync.reconcile()
        await server.sync.reconcile()
        assert server.fresh == [False, False] and server.active == "r0"
        store.fleet = FleetState("r1", "r0", 2)
        await server.sync.reconcile()
        assert server.fresh[-1] is True and server.active == "r1"
        assert store.rows["s1"].active_revision == "r1"

    asyncio.run(run())


class FakeChecker:
    """Every upload passes, its revision and digest from its one module."""

    async def check(self, *, modules: Mapping[str, str], data_json: str,
                    manifest_json: str) -> CheckedPolicy:
        pairs = tuple(sorted(modules.items()))
        return CheckedPolicy("r1", content_digest(pairs, data_json, manifest_json), "p", "1",
                             pairs, data_json, manifest_json, 2)


def test_a_version_pushed_unsigned_takes_its_signature_when_pushed_again_signed() -> None:
    """The same content pushed again with a signature signs the version stored unsigned
    (once, on the record, by whom and why); with trusted keys the signature must verify
    first, and a version signed already keeps its signature."""
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    modules = {"a.rego": "package r1"}
    good = signed_version("r1", key).signature
    forged = signed_version("r1", other).signature

    async def run() -> None:
        for verifier in (None, Ed25519Verifier(keys=[key.public_key()])):
            store = FakeStore()
            service = PolicyAdminService(checker=FakeChecker(), store=store, verifier=verifier)
            if verifier is None:  # unsigned uploads are refused where keys are trusted
                first = await service.create(modules=modules, data_json="{}",
                                             manifest_json="{}", signature="", caller=ADMIN,
                                             message="first")
                assert first.created and not first.signature_attached
            else:
                store.versions["r1"] = signed_version("r1", None)
                with pytest.raises(BadSignature, match="does not verify"):
                    await service.create(modules=modules, data_json="{}", manifest_json="{}",
                                         signature=forged, caller=ADMIN)
                assert store.versions["r1"].signature == ""
            upload = await service.create(modules=modules, data_json="{}", manifest_json="{}",
                                          signature=good, caller=ADMIN, message="signed")
            assert (upload.created, upload.signature_attached) == (False, True)
            assert upload.version.signature == store.versions["r1"].signature == good
            assert store.signed_by == [("r1", ADMIN.id, "signed")]
            again = await service.create(modules=modules, data_json="{}", manifest_json="{}",
                                         signature=good, caller=ADMIN)
            assert (again.created, again.signature_attached) == (False, False)
            assert len(store.signed_by) == 1

    asyncio.run(run())


def test_activation_names_the_servers_that_did_not_acknowledge() -> None:
    async def run() -> None:
        store = FakeStore()
        service = PolicyAdminService(checker=None, store=store, poll_s=0.01)  # type: ignore[arg-type]
        await store.insert_version(checked("r0"), signature="", caller=ADMIN)
        await store.insert_version(checked("r1"), signature="", caller=ADMIN)
        await store.activate("r0", caller=ADMIN)
        await store.heartbeat(instance_id="slow", address="x", active_revision="r0",
                              serving=True)
        outcome = await service.activate("r1", caller=ADMIN, wait_s=0.05)
        assert (outcome.complete, outcome.pending, outcome.previous_revision) == (
            False, ("slow",), "r0")
        store.rows["slow"] = replace(store.rows["slow"], active_revision="r0", live=False)
        back = await service.rollback(caller=ADMIN, wait_s=0.05)
        assert back.complete and back.revision == "r0"
        with pytest.raises(InvalidTransition):
            await PolicyAdminService(checker=None, store=FakeStore()).rollback(  # type: ignore[arg-type]
                caller=ADMIN, wait_s=0)

    asyncio.run(run())


def test_signatures_verify_only_under_a_trusted_key() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    verifier = Ed25519Verifier(keys=[other.public_key(), key.public_key()])
    signature = sign("ab" * 32, private_key_pem=pem)
    verifier.verify(digest="ab" * 32, signature=signature)
    for digest, sig, message in (("cd" * 32, signature, "does not verify"),
                                 ("ab" * 32, "", "unsigned"), ("ab" * 32, "@@", "base64")):
        with pytest.raises(BadSignature, match=message):
            verifier.verify(digest=digest, signature=sig)


def test_a_checker_that_crashes_is_a_refusal_not_an_outage() -> None:
    crash = [sys.executable, "-c", "import os; os.abort()"]
    checker = SubprocessPolicyChecker(constitutional_hash="h", command=crash)
    with pytest.raises(PolicyError, match="SIGABRT"):
        asyncio.run(checker.check(modules={"a.rego": "package a"}, data_json="{}",
                                  manifest_json="{}"))


def record(n: int, action: str, *, effect: Effect = Effect.ALLOW, kind: str = "decide",
           violations: tuple[Violation, ...] = ()) -> AuditRecord:
    doc = {"request_id": f"r{n}", "input": {"action": {"type": action}}}
    return AuditRecord(decision_id=f"id-{n}", instance_id="s", seq=n + 1, decided_at_us=n,
                       kind=kind, caller_id="c", caller_role="agent", request_id=f"r{n}",
                       tenant_id="t", principal_id="p", request_json=json.dumps(doc),
                       effect=effect, violations=violations, policy_revision="r0",
                       constitutional_hash="h", cached=False, latency_us=1, escalation_id="",
                       prev_hash="")


class DenyReads:
    """The candidate: reads are denied, writes escalated, the rest allowed; 'boom' fails."""

    closed = False

    async def decide_many(self, inputs: Sequence[Mapping[str, Any]], *,
                          timeout_s: float) -> list[EngineResult | Exception]:
        out: list[EngineResult | Exception] = []
        for doc in inputs:
            action = doc["action"]["type"]
            effect = {"read": Effect.DENY, "write": Effect.ESCALATE}.get(action, Effect.ALLOW)
            out.append(EngineError("boom") if action == "boom"
                       else EngineResult(effect, (), "cand"))
        return out

    def close(self) -> None:
        self.closed = True


def test_replay_groups_the_changes_and_skips_what_says_nothing_about_the_policy() -> None:
    fail_safe = (Violation("fail_safe", Severity.CRITICAL, "timed out"),)
    capped = (Violation("escalation_limit", Severity.HIGH, "caller past its cap"),)
    records = ([record(n, "read") for n in range(4)] + [record(4, "write"), record(5, "list"),
               record(6, "boom"), record(7, "read", effect=Effect.DENY, violations=fail_safe),
               record(8, "read", kind="evaluate"),
               record(9, "read", effect=Effect.DENY, violations=capped)])
    engine = DenyReads()

    async def export(where: DecisionFilter) -> AsyncIterator[AuditRecord]:
        for r in records:
            yield r

    async def engine_for(v: PolicyVersion) -> DenyReads:
        return engine

    async def run(**kw: Any) -> list[ReplayReport]:
        store = FakeStore()
        store.versions["cand"] = version("cand")
        replayer = PolicyReplayer(records=export, store=store, engine_for=engine_for, batch=3,
                                  progress_every=3)
        return [r async for r in replayer.replay(revision="cand", since_us=None, until_us=None,
                                                 limit=100, examples=2, **kw)]

    reports = asyncio.run(run())
    final = reports[-1]
    assert final.done and not any(r.done for r in reports[:-1]) and len(reports) > 1
    assert (final.replayed, final.changed, final.skipped) == (7, 6, 3)
    assert final.counts == {"ALLOW->DENY": 4, "ALLOW->ESCALATE": 1, "ALLOW->FAIL_SAFE": 1}
    assert [e.decision_id for e in final.examples["ALLOW->DENY"]] == ["id-0", "id-1"]
    assert engine.closed
    sampled = asyncio.run(run(sample=0.5))[-1]
    assert 0 < sampled.replayed + sampled.skipped < 10
    assert sampled.replayed == asyncio.run(run(sample=0.5))[-1].replayed  # deterministic
