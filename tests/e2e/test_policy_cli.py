"""``acgs policy push|activate|list|rollback|history|sign`` against real servers: with a
trusted Ed25519 key, unsigned and wrongly signed versions are refused, signed ones go
through; messages, the history and its events in the audit trail."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest
from acgs.v1 import audit_pb2, audit_pb2_grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2

from tests.e2e.test_policy_lifecycle import first_revision
from tests.plugins.servers import REPO, ServerFactory, ServerProcess

pytestmark = pytest.mark.postgres


def key_pair(directory: Path, name: str) -> tuple[Path, Path]:
    key = Ed25519PrivateKey.generate()
    private, public = directory / f"{name}.pem", directory / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def policy_copy(directory: Path, version: str) -> Path:
    shutil.copytree(REPO / "policy", directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    (directory / "manifest.json").write_text(json.dumps({**manifest, "version": version}))
    return directory


def acgs(*args: str, server: ServerProcess | None = None) -> subprocess.CompletedProcess[str]:
    extra = ["--addr", server.address, "--token", server.tokens.admin] if server else []
    return subprocess.run([sys.executable, "-m", "acgs.entrypoints.cli", *args, *extra],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "service")},
                          capture_output=True, text=True, timeout=120, check=False)


def test_signed_policies_through_the_command_line(servers: ServerFactory, tmp_path: Path) -> None:
    trusted, trusted_pub = key_pair(tmp_path, "trusted")
    other, _ = key_pair(tmp_path, "other")
    seed = policy_copy(tmp_path / "seed", "1.0.0")
    assert acgs("policy", "sign", str(seed), "--key", str(trusted)).returncode == 0
    server = servers.start({"ACGS_POLICY_DIR": str(seed), "ACGS_ENGINE_WORKERS": "1",
                            "ACGS_POLICY_TRUSTED_KEYS": str(trusted_pub)})
    seeded = first_revision(server)

    candidate = policy_copy(tmp_path / "next", "1.0.1")
    unsigned = acgs("policy", "push", str(candidate), server=server)
    assert unsigned.returncode == 1 and "FAILED_PRECONDITION" in unsigned.stderr
    assert "unsigned" in unsigned.stderr
    assert acgs("policy", "sign", str(candidate), "--key", str(other)).returncode == 0
    forged = acgs("policy", "push", str(candidate), server=server)
    assert forged.returncode == 1 and "does not verify" in forged.stderr

    signed = acgs("policy", "sign", str(candidate), "--key", str(trusted))
    revision = json.loads(signed.stdout)["revision"]
    pushed = acgs("policy", "push", str(candidate), server=server)
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.strip() == revision
    activated = acgs("policy", "activate", revision, server=server)
    assert activated.returncode == 0, activated.stderr
    assert first_revision(server) == revision
    listing = acgs("policy", "list", server=server)
    assert f"* {revision}" in listing.stdout and seeded in listing.stdout
    rolled = acgs("policy", "rollback", server=server)
    assert rolled.returncode == 0, rolled.stderr
    assert first_revision(server) == seeded
    instances = acgs("policy", "instances", server=server)
    assert seeded in instances.stdout and "live, serving" in instances.stdout


def test_trusted_keys_refuse_the_unsigned_version_already_in_force(servers: ServerFactory,
                                                                 tmp_path: Path) -> None:
    """A fleet seeded unsigned, restarted with ACGS_POLICY_TRUSTED_KEYS and the same unsigned
    ACGS_POLICY_DIR: the desired revision is the one the directory holds (no activation
    needed), yet its stored signature is verified and the server refuses to start, naming
    the revision (exit status 2)."""
    _, trusted_pub = key_pair(tmp_path, "trusted")
    seed = policy_copy(tmp_path / "seed", "1.0.0")
    first = servers.start({"ACGS_POLICY_DIR": str(seed), "ACGS_ENGINE_WORKERS": "1"},
                          name="unsigned")
    seeded = first_revision(first)
    assert first.stop() == 0
    strict = servers.make({"ACGS_POLICY_DIR": str(seed), "ACGS_ENGINE_WORKERS": "1",
                           "ACGS_POLICY_TRUSTED_KEYS": str(trusted_pub)}, name="strict")
    strict.start(wait_serving=False)
    assert strict.proc is not None
    try:
        code = strict.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server started with an unsigned revision in force:\n{strict.log()}")
    assert code == 2, strict.log()
    assert f"acgs: error: the fleet's desired policy {seeded}" in strict.log()
    assert "unsigned" in strict.log()


@pytest.mark.parametrize("signed", [False, True])
def test_without_the_audit_trail_trusted_keys_still_guard_the_policy_directory(
        servers: ServerFactory, tmp_path: Path, signed: bool) -> None:
    """With ACGS_AUDIT_ENABLED=false there is no fleet: ACGS_POLICY_DIR is served for good.
    Under trusted keys it was served unsigned; now it must verify, or the server refuses to
    start (exit 2) naming the directory."""
    trusted, trusted_pub = key_pair(tmp_path, "trusted")
    seed = policy_copy(tmp_path / "seed", "1.0.0")
    if signed:
        assert acgs("policy", "sign", str(seed), "--key", str(trusted)).returncode == 0
    env = {"ACGS_POLICY_DIR": str(seed), "ACGS_ENGINE_WORKERS": "1",
           "ACGS_AUDIT_ENABLED": "false", "ACGS_AUTH": "none",
           "ACGS_POLICY_TRUSTED_KEYS": str(trusted_pub)}
    if signed:
        server = servers.start(env, name="signed-no-audit")
        assert server.stop() == 0
        return
    refused = servers.make(env, name="unsigned-no-audit")
    refused.start(wait_serving=False)
    assert refused.proc is not None
    try:
        code = refused.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"an unsigned ACGS_POLICY_DIR was served under trusted keys:\n"
                    f"{refused.log()}")
    assert code == 2, refused.log()
    assert f"acgs: error: ACGS_POLICY_DIR={seed}" in refused.log()


def test_a_version_pushed_unsigned_is_signed_by_pushing_it_again_signed(
        servers: ServerFactory, tmp_path: Path, server_database: str) -> None:
    """`acgs policy sign` after the push, then push again: the stored version takes the
    signature (policy.version_signed, by the admin), and a fleet that ran unsigned starts
    with trusted keys once its ACGS_POLICY_DIR is signed (the seed's version takes its
    policy.sig, by the server), then activates the version signed after its push."""
    trusted, trusted_pub = key_pair(tmp_path, "trusted")
    seed = policy_copy(tmp_path / "seed", "1.0.0")
    lax = servers.start({"ACGS_POLICY_DIR": str(seed), "ACGS_ENGINE_WORKERS": "1"}, name="lax")
    seeded = first_revision(lax)
    candidate = policy_copy(tmp_path / "next", "1.0.1")
    first = acgs("policy", "push", str(candidate), "-m", "first push", server=lax)
    assert first.returncode == 0, first.stderr
    revision = first.stdout.strip()
    assert acgs("policy", "sign", str(candidate), "--key", str(trusted)).returncode == 0
    signed = acgs("policy", "push", str(candidate), "-m", "now signed", server=lax)
    assert signed.returncode == 0 and signed.stdout.strip() == revision, signed.stderr
    assert "was stored unsigned" in signed.stderr and "signed now" in signed.stderr
    again = acgs("policy", "push", str(candidate), server=lax)
    assert again.returncode == 0 and "stored already" in again.stderr
    line = next(ln for ln in acgs("policy", "list", server=lax).stdout.splitlines()
                if revision in ln)
    assert "  signed  " in line and "first push" in line  # the first upload's message stays

    assert acgs("policy", "sign", str(seed), "--key", str(trusted)).returncode == 0
    assert lax.stop() == 0
    strict = servers.start({"ACGS_POLICY_DIR": str(seed), "ACGS_ENGINE_WORKERS": "1",
                            "ACGS_POLICY_TRUSTED_KEYS": str(trusted_pub)}, name="strict")
    assert first_revision(strict) == seeded
    activated = acgs("policy", "activate", revision, server=strict)
    assert activated.returncode == 0, activated.stderr
    assert first_revision(strict) == revision
    with psycopg.connect(server_database) as conn:
        rows = conn.execute("SELECT caller_id, caller_role, data FROM audit_decisions "
                            "WHERE instance_id = 'admin' AND kind = 'policy.version_signed' "
                            "ORDER BY seq").fetchall()
    assert [(c, r, json.loads(d)["revision"]) for c, r, d in rows] == [
        (lax.tokens.id("admin"), "admin", revision),
        (strict.env["ACGS_INSTANCE_ID"], "system", seeded)]


def ready(server: ServerProcess) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/ready",
                                    timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        with err:
            return int(err.code)


def test_a_server_that_cannot_follow_the_fleet_stops_serving(servers: ServerFactory,
                                                             tmp_path: Path) -> None:
    """One server trusts a key the others do not use: an unsigned version activated by the
    others never loads there, so after ACGS_POLICY_MAX_LAG_S it reports NOT_SERVING (health
    and /ready), and serves again once the fleet rolls back."""
    trusted, trusted_pub = key_pair(tmp_path, "trusted")
    seed = policy_copy(tmp_path / "seed", "1.0.0")
    assert acgs("policy", "sign", str(seed), "--key", str(trusted)).returncode == 0
    strict = servers.start({"ACGS_POLICY_DIR": str(seed), "ACGS_ENGINE_WORKERS": "1",
                            "ACGS_POLICY_TRUSTED_KEYS": str(trusted_pub),
                            "ACGS_POLICY_MAX_LAG_S": "1"}, name="strict")
    lax = servers.start({"ACGS_POLICY_DIR": str(seed), "ACGS_ENGINE_WORKERS": "1"}, name="lax")
    unsigned = policy_copy(tmp_path / "unsigned", "1.0.1")
    revision = acgs("policy", "push", str(unsigned), server=lax).stdout.strip()
    activated = acgs("policy", "activate", revision, "--wait", "2", server=lax)
    assert activated.returncode == 1 and strict.env["ACGS_INSTANCE_ID"] in activated.stderr
    deadline = time.monotonic() + 10
    while strict.health() == health_pb2.HealthCheckResponse.SERVING or ready(strict) != 503:
        assert time.monotonic() < deadline, "the lagging server kept serving"
        time.sleep(0.1)
    assert first_revision(lax) == revision
    assert acgs("policy", "rollback", server=lax).returncode == 0
    strict.wait_serving(timeout=10)
    assert ready(strict) == 200


def test_push_messages_list_history_and_two_rollbacks(servers: ServerFactory, tmp_path: Path,
                                                      server_database: str) -> None:
    """Two uploads of the same manifest name are told apart by revision, message, uploader
    and time; two rollbacks step back twice through the history; every change is an event
    of the admin chain with the admin who made it, and the chain verifies."""
    server = servers.start({"ACGS_ENGINE_WORKERS": "1"})
    seeded = first_revision(server)
    pushed = []
    for version, why in (("1.0.1", "tighten reads"), ("1.0.2", "loosen writes")):
        out = acgs("policy", "push", str(policy_copy(tmp_path / version, version)),
                   "-m", why, server=server)
        assert out.returncode == 0, out.stderr
        pushed.append(out.stdout.strip())
    again = acgs("policy", "push", str(tmp_path / "1.0.1"), "-m", "other words", server=server)
    assert again.returncode == 0 and again.stdout.strip() == pushed[0]
    assert "stored already" in again.stderr and "tighten reads" in again.stderr

    listing = acgs("policy", "list", server=server).stdout.splitlines()
    admin_id = server.tokens.id("admin")
    for revision, why in zip(pushed, ("tighten reads", "loosen writes"), strict=True):
        line = next(ln for ln in listing if revision in ln)
        assert f"by {admin_id}  {why}" in line and "unsigned" in line
    assert any(seeded in ln and "seeded from" in ln for ln in listing)

    for revision in pushed:
        out = acgs("policy", "activate", revision, "-m", f"ship {revision}", server=server)
        assert out.returncode == 0, out.stderr
    first = acgs("policy", "rollback", "-m", "1.0.2 breaks the batch jobs", server=server)
    assert first.returncode == 0 and first_revision(server) == pushed[0], first.stderr
    second = acgs("policy", "rollback", "-m", "1.0.1 too", server=server)
    assert second.returncode == 0 and first_revision(server) == seeded, second.stderr
    third = acgs("policy", "rollback", server=server)
    assert third.returncode == 1 and "FAILED_PRECONDITION" in third.stderr
    assert "nothing to roll back to" in third.stderr

    history = acgs("policy", "history", server=server)
    assert history.returncode == 0, history.stderr
    lines = history.stdout.splitlines()
    assert len(lines) == 5
    assert lines[0].startswith("  #5 ") and f"rolled back #2 ({pushed[0]}): {seeded}" in lines[0]
    assert "1.0.1 too" in lines[0] and f"by {admin_id} (admin)" in lines[0]
    assert "rolled back #3" in lines[1] and "1.0.2 breaks the batch jobs" in lines[1]
    assert f"activated {pushed[1]} (replacing {pushed[0]})" in lines[2]
    assert lines[4].startswith("* #1 ") and f"activated {seeded} (replacing -)" in lines[4]
    assert "(system)" in lines[4]  # the seed: the first server's activation
    paged = acgs("policy", "history", "--limit", "2", "--before", "4", server=server)
    assert [ln[2:5] for ln in paged.stdout.splitlines()] == ["#3 ", "#2 "]
    assert "--before 2" in paged.stderr
    too_many = acgs("policy", "history", "--limit", "5000", server=server)
    assert too_many.returncode == 1 and "INVALID_ARGUMENT" in too_many.stderr
    assert "limit is at most 1000" in too_many.stderr

    with psycopg.connect(server_database) as conn:
        rows = conn.execute("SELECT kind, caller_id, caller_role FROM audit_decisions "
                            "WHERE instance_id = 'admin' ORDER BY seq").fetchall()
    ours = [(k, r) for k, c, r in rows if c == admin_id]
    assert ours == [("policy.version_created", "admin")] * 2 + [
        ("policy.activated", "admin")] * 2 + [("policy.rolled_back", "admin")] * 2
    # the seed, by the server (which also signs the chain: checkpoints, every few seconds)
    assert [k for k, c, _ in rows if c != admin_id and k != "checkpoint"] == [
        "policy.version_created", "policy.activated"]
    with server.channel("auditor") as ch:
        report = audit_pb2_grpc.AuditStub(ch).VerifyChain(
            audit_pb2.VerifyChainRequest(instance_id="admin"), timeout=10)
    assert report.ok and report.records_checked >= len(rows)  # a checkpoint may follow
    assert len([k for k, _, _ in rows if k != "checkpoint"]) == 8
