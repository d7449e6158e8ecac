"""One lifecycle (issue 15): a real server's background tasks run under one supervisor, show
their liveness in /metrics, come back after a crash, and the server keeps to its connection
budget (lifecycle.database)."""

from __future__ import annotations

import re
import urllib.request

import psycopg
import pytest

from tests.e2e.test_start_offline import _decide, _wait
from tests.plugins.servers import ServerFactory, ServerProcess

pytestmark = pytest.mark.postgres

TASKS = ("shipper", "checkpointer", "admin-chain-checkpoints", "token-refresh",
         "escalation-sweeper", "shadow", "policy-sync", "listener", "database-watch")


def _tasks(server: ServerProcess, name: str) -> dict[str, float]:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return {task: float(value) for task, value in
            re.findall(rf'^{name}\{{task="([^"]+)"\}} (\S+)$', text, re.M)}


def _connections(conninfo: str) -> list[str]:
    """What the other sessions on this database run (the server's connections)."""
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute("SELECT query FROM pg_stat_activity WHERE datname = "
                            "current_database() AND pid <> pg_backend_pid()").fetchall()
    return [str(row[0]) for row in rows]


def test_every_task_is_up_and_the_server_keeps_its_connection_budget(
        servers: ServerFactory, server_database: str) -> None:
    server = servers.start({"ACGS_DB_POOL_MAX": "3"})
    _wait("every task up", lambda: _tasks(server, "acgs_task_up") == dict.fromkeys(TASKS, 1.0))
    assert _tasks(server, "acgs_task_restarts_total") == dict.fromkeys(TASKS, 0.0)
    with server.channel() as channel:
        _decide(channel, 20, "budget")
    # The shared pool (at most ACGS_DB_POOL_MAX), one listener, one shipper: no more.
    sessions = _connections(server_database)
    assert 3 <= len(sessions) <= 3 + 2, sessions
    assert sum("LISTEN" in query for query in sessions) == 1, sessions


def test_a_task_whose_connection_is_killed_is_restarted_and_counted(
        servers: ServerFactory, server_database: str) -> None:
    server = servers.start()
    _wait("the listener up", lambda: _tasks(server, "acgs_task_up").get("listener") == 1.0)
    with psycopg.connect(server_database, autocommit=True) as conn:
        killed = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
            "current_database() AND query LIKE 'LISTEN%%'").fetchall()
    assert killed == [(True,)]
    _wait("the listener restarted",
          lambda: _tasks(server, "acgs_task_restarts_total").get("listener", 0) >= 1)
    _wait("the listener up again", lambda: _tasks(server, "acgs_task_up").get("listener") == 1.0)
    assert sum("LISTEN" in query for query in _connections(server_database)) == 1
    assert "task listener: " in server.log()  # the lost connection, one warning
    assert server.stop() == 0
