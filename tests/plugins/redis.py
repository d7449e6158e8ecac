"""Fixtures: a real Redis for tests, found or started, and a throwaway one tests may break.

``redis_url`` (session) comes from ``ACGS_TEST_REDIS_URL``; else from a
testcontainers Redis when Docker is reachable; else from a throwaway local
``redis-server`` on a free port. Tests that share it take ``redis_prefix``
(a unique key prefix whose keys are deleted afterwards). ``redis_server`` is a
private ``redis-server`` a test may stop, restart, stall or fill; the
machine's shared Redis is never touched that way. When no Redis can be had the
test is skipped, except under ``CI=true`` where it fails: CI must run it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest
import redis

from tests.plugins.common import testcontainer, unavailable


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ThrowawayRedis:
    """A private ``redis-server`` (no persistence) on a fixed free port, in ``directory``.

    ``stop``/``start`` keep the port, so clients reconnect to the same URL;
    ``stall`` blocks the server with DEBUG SLEEP; ``config_set`` changes a setting.
    """

    def __init__(self, *, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None
        self._stalls: list[threading.Thread] = []

    def start(self, *, timeout_s: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.directory),
            "--enable-debug-command", "local", "--daemonize", "no",
        ]
        with open(self.directory / "redis.log", "ab") as log:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited; see {self.directory / 'redis.log'}")
            with suppress(redis.RedisError), self.client() as client:
                if client.ping():
                    return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer within {timeout_s} s")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait for it to exit."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stall(self, seconds: float) -> None:
        """Make the server unresponsive for ``seconds`` (DEBUG SLEEP); returns at once."""
        def sleep() -> None:
            with self.client(timeout_s=seconds + 10) as client:
                client.execute_command("DEBUG", "SLEEP", str(seconds))

        thread = threading.Thread(target=sleep, name="redis-stall", daemon=True)
        thread.start()
        self._stalls.append(thread)
        time.sleep(0.05)  # let the command reach the server before the caller goes on

    def config_set(self, name: str, value: str) -> None:
        with self.client() as client:
            client.config_set(name, value)

    def client(self, *, timeout_s: float = 2.0) -> redis.Redis:
        """A synchronous client for test set-up; the caller closes it."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout_s,
                           socket_connect_timeout=timeout_s)

    def close(self) -> None:
        self.stop()
        for thread in self._stalls:
            thread.join(timeout=30)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a Redis shared by the session's tests (use ``redis_prefix`` for keys)."""
    url = os.environ.get("ACGS_TEST_REDIS_URL")
    if url:
        yield url
        return
    container_class = testcontainer("redis", "RedisContainer")
    if container_class is not None:
        with container_class("redis:7-alpine") as container:
            host = container.get_container_host_ip()
            yield f"redis://{host}:{container.get_exposed_port(6379)}/0"
        return
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("no Redis: set ACGS_TEST_REDIS_URL, start Docker or install redis-server")
    server = ThrowawayRedis(binary=binary, directory=tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test uses; every key under it is deleted after the test."""
    prefix = f"acgs-test:{uuid.uuid4().hex}:"
    yield prefix
    with redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[ThrowawayRedis]:
    """A private running ``redis-server`` the test may stop, restart, stall or fill."""
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("outage tests need the redis-server binary on PATH")
    server = ThrowawayRedis(binary=binary, directory=tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.close()
