"""Fixtures: a real PostgreSQL for tests marked ``postgres``.

``postgres_server`` (session) is an admin conninfo found, in order, from
``ACGS_TEST_DATABASE_URL``; a testcontainers PostgreSQL when Docker answers; a
throwaway PostgreSQL 16 from the ``pgserver`` package in a temp dir. The run
then creates its own database ``acgs_test_<random>``, migrated for the
constitution in force, and drops it at the end (``postgres_url``). ``pg_url``
gives each test that database with every table emptied; ``make_database``
makes extra empty databases (for migration tests). ``pg_proxy`` is a TCP proxy
to the server that a test may cut and restore to play an outage. With no
PostgreSQL the tests skip, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

import psycopg
import pytest
from acgs import CONSTITUTIONAL_HASH
from acgs.adapters.pg_migrations import migrate
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.plugins.common import testcontainer, unavailable

_KEEP = ("acgs_schema_migrations", "acgs_meta", "auth_tokens")  # tokens: running servers


def _throwaway_server(directory: Path) -> tuple[str, Callable[[], None]]:
    try:
        with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR at import
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError:
        unavailable("no PostgreSQL: set ACGS_TEST_DATABASE_URL, start Docker or "
                    "pip install pgserver")
    server = pgserver.get_server(directory, cleanup_mode="delete")
    return str(server.get_uri("postgres")), server.cleanup


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """Conninfo of a server (database ``postgres``) where databases may be created."""
    url = os.environ.get("ACGS_TEST_DATABASE_URL")
    if url:
        yield url
        return
    container_class = testcontainer("postgres", "PostgresContainer")
    if container_class is not None:
        with container_class("postgres:16-alpine", driver=None) as container:
            yield container.get_connection_url()
        return
    # Not under pytest's basetemp: other pytest runs reset it to mode 0700, which
    # locks out the unprivileged user pgserver runs PostgreSQL as (when we are root).
    parent = Path(tempfile.mkdtemp(prefix="acgs-test-pg-"))
    uri, cleanup = _throwaway_server(parent / "data")
    try:
        yield uri
    finally:
        cleanup()
        shutil.rmtree(parent, ignore_errors=True)


def _create_database(admin: str) -> str:
    name = f"acgs_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_conninfo(admin, dbname=name)


def _drop_database(admin: str, url: str) -> None:
    name = conninfo_to_dict(url)["dbname"]
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(str(name))))


@pytest.fixture(scope="session")
def postgres_url(postgres_server: str) -> Iterator[str]:
    """Conninfo of this run's own migrated database, dropped at the end of the session."""
    url = _create_database(postgres_server)
    try:
        asyncio.run(migrate(url, constitutional_hash=CONSTITUTIONAL_HASH))
        yield url
    finally:
        _drop_database(postgres_server, url)


@pytest.fixture
def pg_url(postgres_url: str) -> str:
    """This run's database with every table (but the migration bookkeeping) emptied."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
        tables = [sql.Identifier(r[0]) for r in rows if r[0] not in _KEEP]
        if tables:
            conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(tables)))
    return postgres_url


@pytest.fixture
def make_database(postgres_server: str) -> Iterator[Callable[[], str]]:
    """A factory of empty, unmigrated databases, all dropped after the test."""
    made: list[str] = []

    def make() -> str:
        made.append(_create_database(postgres_server))
        return made[-1]

    yield make
    for url in made:
        _drop_database(postgres_server, url)


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to PostgreSQL; ``cut`` plays an outage, ``restore`` ends it."""

    def __init__(self, target: str) -> None:
        params = conninfo_to_dict(target)
        host = str(params.get("host") or "127.0.0.1")
        port = int(params.get("port") or 5432)
        if host.startswith("/"):
            self._upstream: tuple[int, object] = (socket.AF_UNIX, f"{host}/.s.PGSQL.{port}")
        else:
            self._upstream = (socket.AF_INET, (host, port))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        keep = {k: v for k, v in params.items() if k in ("dbname", "user", "password")}
        self.url = make_conninfo("", host="127.0.0.1", port=self.port, connect_timeout=2, **keep)
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()

    def restore(self) -> None:
        """Accept connections again (on the same port)."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and reset every open one."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._open = self._open, []
        for conn in conns:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.socket(self._upstream[0])
            try:
                upstream.connect(self._upstream[1])
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    with suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    with suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


@pytest.fixture
def pg_proxy(pg_url: str) -> Iterator[TcpProxy]:
    """A proxy to ``pg_url``'s database, open; the test may ``cut`` and ``restore`` it."""
    proxy = TcpProxy(pg_url)
    proxy.restore()
    try:
        yield proxy
    finally:
        proxy.cut()
