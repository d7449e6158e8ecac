"""Helpers the service fixtures share: find Docker, and skip-or-fail when a service is missing."""

from __future__ import annotations

import importlib
import os
import socket
from typing import NoReturn

import pytest


def unavailable(reason: str) -> NoReturn:
    """Skip with ``reason``, or fail when running in CI (where every test must run)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def docker_reachable() -> bool:
    """True when a Docker daemon answers ``/_ping`` within two seconds."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(2)
            try:
                sock.connect(host.removeprefix("unix://"))
            except OSError:
                sock.close()
                raise
        elif host.startswith("tcp://"):
            name, _, port = host.removeprefix("tcp://").partition(":")
            sock = socket.create_connection((name, int(port or 2375)), timeout=2)
        else:
            return False
        with sock:
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b" 200 " in sock.recv(64)
    except (OSError, ValueError):
        return False


def testcontainer(module: str, name: str) -> type | None:
    """``testcontainers.<module>.<name>`` when testcontainers is installed and Docker answers."""
    if not docker_reachable():
        return None
    try:
        container: type = getattr(importlib.import_module(f"testcontainers.{module}"), name)
    except ImportError:
        return None
    return container
