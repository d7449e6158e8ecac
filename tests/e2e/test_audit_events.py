"""Admin actions in the trail, end to end: ``acgs token create|revoke`` against the database,
then ``acgs audit tail`` and the typed client read them back from a running server, with
the OS account that ran the command as the actor."""

from __future__ import annotations

import asyncio
import os
import pwd
import select
import socket
import subprocess
import sys
import time

import psycopg
import pytest
from acgs.adapters import pg_event_chain
from acgs.domain import events
from acgs.domain import tokens as tk
from acgs.domain.model import Caller
from acgs.service_layer.ports import EventEntry
from acgs_client import AsyncClient, Client, InvalidRequest

from tests.plugins.servers import REPO, RoleTokens, ServerProcess

pytestmark = pytest.mark.postgres
ACTOR = f"{pwd.getpwuid(os.geteuid()).pw_name}@{socket.gethostname()}"


def acgs(*args: str, database: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "service"), "ACGS_DATABASE_URL": database}
    return subprocess.run([sys.executable, "-m", "acgs.entrypoints.cli", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_tail_shows_a_created_and_a_revoked_token_with_their_actor(
        shared_server: ServerProcess, postgres_url: str, tokens: RoleTokens) -> None:
    created = acgs("token", "create", "--role", "agent", "--name", "ci tail",
                   "--identity", "bob@corp", database=postgres_url)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    token_id = tk.parse(token)
    assert token_id
    connect = ("--addr", shared_server.address, "--token", tokens.auditor)
    tail = acgs("audit", "tail", "--kind", "token.created", "--since", "10m", *connect,
                database=postgres_url)
    assert tail.returncode == 0, tail.stderr
    line = next(ln for ln in tail.stdout.splitlines() if token_id in ln)
    assert " admin#" in line and " token.created " in line and f"{ACTOR}/admin" in line
    assert "'ci tail'" in line and "role=agent" in line and "identity=bob@corp" in line
    assert token.partition(".")[2] not in tail.stdout  # never the secret
    assert acgs("token", "revoke", token_id, database=postgres_url).returncode == 0
    again = acgs("token", "revoke", token_id, database=postgres_url)
    assert again.returncode == 1 and "nothing recorded" in again.stderr
    events = acgs("audit", "events", "--all", "--kind", "token.revoked", "--actor", ACTOR,
                  "--instance", "admin", *connect, database=postgres_url)
    assert events.returncode == 0, events.stderr
    revoked = [ln for ln in events.stdout.splitlines() if token_id in ln]
    assert len(revoked) == 1 and " token.revoked " in revoked[0]  # the second: nothing
    bad = acgs("audit", "tail", "--kind", "token.deleted", *connect, database=postgres_url)
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr
    assert "'token.deleted'" in bad.stderr


def test_tail_follows_new_events(shared_server: ServerProcess, postgres_url: str,
                                 tokens: RoleTokens) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "service")}
    with subprocess.Popen(
            [sys.executable, "-m", "acgs.entrypoints.cli", "audit", "tail", "-f", "-n", "0",
             "--kind", "token.created,token.revoked", "--addr", shared_server.address,
             "--token", tokens.auditor], cwd=REPO, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True) as follower:
        try:
            time.sleep(3)  # it has read the trail so far
            created = acgs("token", "create", "--role", "auditor", "--name", "ci follow",
                           database=postgres_url)
            token_id = tk.parse(created.stdout.strip())
            assert token_id, created.stderr
            assert follower.stdout is not None
            ready, _, _ = select.select([follower.stdout], [], [], 15)
            assert ready, "no line within 15 s"
            line = follower.stdout.readline()
            assert token_id in line and " token.created " in line and ACTOR in line
        finally:
            follower.terminate()
            follower.wait(timeout=10)


def test_follow_prints_a_record_that_arrives_late_with_an_old_time(
        shared_server: ServerProcess, postgres_url: str, tokens: RoleTokens) -> None:
    """A record that reaches PostgreSQL after newer ones (a server's journal shipped late,
    an admin event timed before its lock) is printed: the follower reads each chain after
    the last seq it saw, not after the last time."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "service")}
    with subprocess.Popen(
            [sys.executable, "-m", "acgs.entrypoints.cli", "audit", "tail", "-f", "-n", "0",
             "--kind", "token.revoked", "--addr", shared_server.address,
             "--token", tokens.auditor], cwd=REPO, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True) as follower:
        try:
            time.sleep(3)  # it has read the trail so far
            hour_ago = time.time_ns() - 3600 * 10**9
            late = EventEntry(events.TokenRevoked("tok-late", "late"),
                              Caller(id="someone@host", role="admin"), at_ns=hour_ago)
            with psycopg.connect(postgres_url) as conn, conn.transaction(), \
                    conn.cursor() as cur:
                pg_event_chain.append_sync(cur, [late])
            assert follower.stdout is not None
            ready, _, _ = select.select([follower.stdout], [], [], 15)
            assert ready, "the late record was not printed within 15 s"
            line = follower.stdout.readline()
            assert "tok-late" in line and " token.revoked " in line
        finally:
            follower.terminate()
            follower.wait(timeout=10)


def test_the_clients_list_events(shared_server: ServerProcess, postgres_url: str,
                                 tokens: RoleTokens) -> None:
    created = acgs("token", "create", "--role", "agent", "--name", "ci client",
                   database=postgres_url)
    token_id = tk.parse(created.stdout.strip())
    assert token_id, created.stderr
    with Client(shared_server.address, token=tokens.auditor) as client:
        found = []
        page = client.list_events(kinds=["token.created"], instance_id="admin", page_size=2)
        while True:
            found += [e for e in page.events if e.data.get("token_id") == token_id]
            if not page.next_page_token:
                break
            page = client.list_events(kinds=["token.created"], instance_id="admin",
                                       page_size=2, page_token=page.next_page_token)
        (event,) = found
        assert (event.kind, event.actor_id, event.actor_role, event.schema) == (
            "token.created", ACTOR, "admin", 1)
        assert event.data["name"] == "ci client" and event.at.tzinfo is not None
        with pytest.raises(InvalidRequest, match="nope"):
            client.list_events(kinds=["nope"])

    async def go() -> list[str]:
        async with AsyncClient(shared_server.address, token=tokens.auditor) as aclient:
            page = await aclient.list_events(actor=ACTOR, kinds=["token.created"],
                                             page_size=1000)
            return [str(e.data.get("token_id")) for e in page.events]

    assert token_id in asyncio.run(go())
