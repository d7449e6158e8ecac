"""Signed checkpoints on real servers: the timer, at shutdown, and the `acgs audit` commands.

A server signs its chain's head every ACGS_AUDIT_CHECKPOINT_S (only when it
advanced) and at SIGTERM, with the development key it generated under its data
directory. `acgs audit verify --all` checks every chain online; `acgs audit
export` + `acgs audit verify --export FILE --public-key K` check the same rows
offline, and both see a cut tail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import psycopg
import pytest
from acgs.v1 import audit_pb2, audit_pb2_grpc
from acgs.v1 import governance_pb2_grpc as pb_grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.client import allow_input, decide_request
from tests.plugins.servers import REPO, ServerFactory, ServerProcess


def decide(server: ServerProcess, n: int) -> None:
    with server.channel("agent") as channel:
        stub = pb_grpc.GovernanceStub(channel)
        for i in range(n):
            doc = allow_input()
            doc["principal"]["id"] = f"agent-{i}-{time.monotonic_ns()}"
            stub.Decide(decide_request(doc), timeout=5)


def chain(conninfo: str, instance: str) -> list[tuple[int, str]]:
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute("SELECT seq, kind FROM audit_decisions WHERE instance_id = %s "
                            "ORDER BY seq", (instance,)).fetchall()
    return [(int(r[0]), str(r[1])) for r in rows]


def kept(conninfo: str, instance: str) -> list[int]:
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute("SELECT seq FROM audit_checkpoints WHERE instance_id = %s "
                            "ORDER BY seq", (instance,)).fetchall()
    return [int(r[0]) for r in rows]


def wait(what: str, check: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def acgs(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'service'}{os.pathsep}{REPO}"}
    return subprocess.run(
        [sys.executable, "-m", "acgs.entrypoints.cli", "audit", *args, "--addr", server.address,
         "--token", server.tokens.token("auditor")],
        env=env, capture_output=True, text=True, timeout=60, check=False)


def test_the_timer_signs_only_an_advanced_chain(servers: ServerFactory,
                                                server_database: str) -> None:
    server = servers.start({"ACGS_AUDIT_CHECKPOINT_S": "0.3"})
    instance = server.env["ACGS_INSTANCE_ID"]
    decide(server, 3)
    wait("a checkpoint from the timer", lambda: kept(server_database, instance))
    time.sleep(1.5)  # five more ticks with nothing new: no further checkpoint
    first = kept(server_database, instance)
    assert first == [4], chain(server_database, instance)
    decide(server, 2)
    wait("a second checkpoint", lambda: len(kept(server_database, instance)) == 2)
    assert kept(server_database, instance) == [4, 7]
    key = Path(server.env["ACGS_DATA_DIR"]) / "audit-signing-key.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    assert "audit-signing-key.pub.pem" in server.log()


def test_a_checkpoint_at_shutdown_and_the_verify_commands(
        servers: ServerFactory, server_database: str, tmp_path: Path) -> None:
    server = servers.start({"ACGS_AUDIT_CHECKPOINT_S": "0"})  # no timer: only at shutdown
    instance = server.env["ACGS_INSTANCE_ID"]
    decide(server, 4)
    assert server.stop() == 0
    assert chain(server_database, instance)[-1] == (5, "checkpoint")
    assert kept(server_database, instance) == [5]

    server.start()
    with server.channel("auditor") as channel:
        stub = audit_pb2_grpc.AuditStub(channel)
        report = stub.VerifyChain(audit_pb2.VerifyChainRequest(instance_id=instance), timeout=10)
        assert report.ok and report.checkpoint_seq == 4 and report.checkpoint_record_seq == 5
        assert len(report.keys_used) == 1 and report.checkpoint_signed_at.seconds > 0
        with pytest.raises(grpc.RpcError) as caught:
            stub.VerifyChain(audit_pb2.VerifyChainRequest(instance_id="never-was"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    public = Path(server.env["ACGS_DATA_DIR"]) / "audit-signing-key.pub.pem"
    online = acgs(server, "verify", "--all")
    assert online.returncode == 0 and f"{instance}: ok" in online.stdout, online
    export = tmp_path / "trail.jsonl"
    assert acgs(server, "export", "--out", str(export)).returncode == 0
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    assert [d["kind"] for d in lines if d.get("source")] == ["checkpoint"]
    offline = verify_offline(export, public)
    assert offline.returncode == 0 and f"{instance}: ok" in offline.stdout, offline

    with psycopg.connect(server_database, autocommit=True) as conn:
        conn.execute("DELETE FROM audit_decisions WHERE instance_id = %s AND seq > 2",
                     (instance,))
    online = acgs(server, "verify", "--instance", instance)
    assert online.returncode == 1 and "truncated" in online.stdout, online
    assert acgs(server, "export", "--out", str(export)).returncode == 0
    offline = verify_offline(export, public)
    assert offline.returncode == 1, offline
    # The export holds the "admin" chain too (the seed's policy events), intact.
    by_chain = {ln.split(":")[0]: ln for ln in offline.stdout.splitlines() if ":" in ln}
    assert by_chain[instance] == online.stdout.splitlines()[0]
    assert by_chain["admin"].startswith("admin: ok"), offline
    other = tmp_path / "other.pub.pem"
    other.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    wrong = verify_offline(export, other)
    assert wrong.returncode == 1 and "bad_signature" in wrong.stdout, wrong


def verify_offline(export: Path, public: Path) -> subprocess.CompletedProcess[str]:
    """`acgs audit verify --export`: no server address, no database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACGS_")}
    env["PYTHONPATH"] = f"{REPO / 'service'}{os.pathsep}{REPO}"
    return subprocess.run(
        [sys.executable, "-m", "acgs.entrypoints.cli", "audit", "verify", "--export",
         str(export), "--public-key", str(public)],
        env=env, capture_output=True, text=True, timeout=60, check=False)
