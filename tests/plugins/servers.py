"""Fixtures: real ACGS-2 server processes on free ports, and clients for them.

Servers run as subprocesses (``python -m acgs.entrypoints.cli serve``) so that
tests exercise the real process: signals, kill -9, restart.

Servers need bearer tokens. One :class:`RoleTokens` set (one token per role) is
made per test session (fixture ``tokens``) and stored in each server's database
before it starts, so the same tokens work on every test server and through
HAProxy. ``server.channel()`` (or ``agent_channel(address)``) is a channel that
sends the agent token on every call; ``channel(role="auditor")`` another role's.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import acgs_client
import grpc
import psycopg
import pytest
from acgs import CONSTITUTIONAL_HASH
from acgs.adapters.embedded_pg import EmbeddedPostgres
from acgs.adapters.pg_migrations import migrate
from acgs.domain import tokens as tk
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.client import authorized

REPO = Path(__file__).resolve().parents[2]
HASH = "cdd01ef066bc6cf2"


@dataclass(frozen=True)
class RoleTokens:
    """One issued token per role; ``token(role)``, or ``.agent``, ``.admin``, ``.auditor``."""

    issued: dict[str, tk.IssuedToken]

    @classmethod
    def generate(cls) -> RoleTokens:
        return cls({role: tk.issue(role=role, name=f"test {role}", created_by="tests")
                    for role in tk.ROLES})

    def token(self, role: str) -> str:
        return self.issued[role].token

    def id(self, role: str) -> str:
        return self.issued[role].record.id

    @property
    def agent(self) -> str:
        return self.token(tk.AGENT)

    @property
    def admin(self) -> str:
        return self.token(tk.ADMIN)

    @property
    def auditor(self) -> str:
        return self.token(tk.AUDITOR)


@functools.cache
def session_tokens() -> RoleTokens:
    """The tokens of this test session, stored in every test server's database."""
    return RoleTokens.generate()


def store_tokens(conninfo: str, records: Sequence[tk.TokenRecord]) -> None:
    """Migrate the database at ``conninfo`` and insert ``records`` (kept if already there)."""
    asyncio.run(migrate(conninfo, constitutional_hash=CONSTITUTIONAL_HASH))
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for r in records:
            conn.execute("INSERT INTO auth_tokens (id, name, role, secret_hash, created_by, "
                         "revoked_at, identity) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                         "ON CONFLICT (id) DO NOTHING",
                         (r.id, r.name, r.role, r.secret_hash, r.created_by, r.revoked_at,
                          r.identity))


def revoke_token(conninfo: str, token_id: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("UPDATE auth_tokens SET revoked_at = now() WHERE id = %s", (token_id,))


def agent_channel(address: str, **kw: Any) -> grpc.Channel:
    """A plaintext channel to ``address`` sending the session's agent token."""
    return authorized(grpc.insecure_channel(address, **kw), session_tokens().agent)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """One running server. ``address`` is host:port for grpc.insecure_channel."""

    env: dict[str, str]
    log_path: Path
    tokens: RoleTokens = field(default_factory=session_tokens)
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    metrics_port: int = 0
    _log: object = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def channel(self, role: str = "agent", **kw: Any) -> grpc.Channel:
        """A plaintext channel to this server sending ``role``'s token on every call."""
        return authorized(grpc.insecure_channel(self.address, **kw), self.tokens.token(role))

    def client(self, role: str = "agent", **settings: Any) -> acgs_client.Client:
        """The typed client (acgs_client) for this server, with ``role``'s token: what
        tests use unless they test the wire itself."""
        return acgs_client.Client(self.address, token=self.tokens.token(role), **settings)

    def start(self, *, timeout: float = 30.0, wait_serving: bool = True,
              provision: bool = True) -> ServerProcess:
        """Start (or restart) the process; ``provision=False`` stores no tokens first (its
        database may be unreachable: a start during an outage)."""
        if provision:
            self._provision()
        if self._log is not None:  # a restart: the previous process's handle
            self._log.close()  # type: ignore[attr-defined]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "acgs.entrypoints.cli", "serve"],
            cwd=REPO,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        if wait_serving:
            self.wait_serving(timeout=timeout)
        return self

    def _provision(self) -> None:
        """Store the tokens in this server's database (the embedded one if no URL is set)."""
        records = [t.record for t in self.tokens.issued.values()]
        if self.env.get("ACGS_DATABASE_URL"):
            store_tokens(self.env["ACGS_DATABASE_URL"], records)
            return
        embedded = EmbeddedPostgres(directory=Path(self.env["ACGS_DATA_DIR"]) / "pg")
        try:
            store_tokens(embedded.start(), records)
        finally:
            embedded.stop()

    def health(self) -> int:
        with grpc.insecure_channel(self.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status)

    def wait_serving(self, *, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.health() == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not SERVING after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, *, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
        return int(code)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


class ServerFactory:
    """Makes servers with a shared base environment plus per-server overrides."""

    def __init__(self, tmp: Path, base_env: Mapping[str, str]) -> None:
        self._tmp = tmp
        self._base = dict(base_env)
        self.servers: list[ServerProcess] = []

    def make(
        self, env: Mapping[str, str] | None = None, *, name: str | None = None
    ) -> ServerProcess:
        name = name or f"s{len(self.servers)}"
        # Instance ids are unique per run: an audit chain belongs to one instance.
        instance_id = f"{name}-{uuid.uuid4().hex[:8]}"
        port, mport = free_port(), free_port()
        full = {**os.environ, **self._base}
        full.update(
            {
                "PYTHONPATH": f"{REPO / 'service'}{os.pathsep}{REPO}",
                "ACGS_GRPC_ADDR": f"127.0.0.1:{port}",
                "ACGS_METRICS_ADDR": f"127.0.0.1:{mport}",
                "ACGS_INSTANCE_ID": instance_id,
                "ACGS_DATA_DIR": str(self._tmp / name),
                "ACGS_POLICY_DIR": str(REPO / "policy"),
                "ACGS_ENV": "test",
            }
        )
        full.update(env or {})
        server = ServerProcess(
            env=full, log_path=self._tmp / f"{name}.log", port=port, metrics_port=mport
        )
        self.servers.append(server)
        return server

    def start(self, env: Mapping[str, str] | None = None, **kw: object) -> ServerProcess:
        return self.make(env, **kw).start()  # type: ignore[arg-type]

    def close(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture(scope="session")
def tokens() -> RoleTokens:
    """One token per role, valid on every server these fixtures start."""
    return session_tokens()


@pytest.fixture
def server_env() -> dict[str, str]:
    """Extra environment for servers made by ``servers``; override in a test module."""
    return {}


@pytest.fixture
def server_database(make_database: Callable[[], str]) -> str:
    """A fresh database for this test's servers (they migrate it when they start)."""
    return make_database()


@pytest.fixture
def servers(
    tmp_path: Path, server_env: dict[str, str], server_database: str
) -> Iterator[ServerFactory]:
    """Servers on this test's own PostgreSQL database, stopped after the test."""
    factory = ServerFactory(tmp_path, {"ACGS_DATABASE_URL": server_database, **server_env})
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def shared_server(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str
) -> Iterator[ServerProcess]:
    """One server for a whole test module (cheap tests that do not disturb it)."""
    factory = ServerFactory(tmp_path_factory.mktemp("shared"), {"ACGS_DATABASE_URL": postgres_url})
    server = factory.start()
    yield server
    factory.close()
