"""``acgs policy push|activate|list|rollback|sign`` against a real server that trusts one
Ed25519 key: unsigned and wrongly signed versions are refused, signed ones go through."""

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

import pytest
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
