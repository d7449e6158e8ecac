"""May this process listen on an address? Asked before ``acgs serve`` starts anything.

A port in use used to surface as a traceback once the whole start-up had run (the
embedded PostgreSQL, the migrations, the development tokens, the fleet registration):
``RuntimeError: Failed to bind to address ...`` from gRPC, ``OSError: [Errno 98]`` from
the metrics server. :func:`require_free` makes it one ConfigurationError naming the
setting, which the CLI reports on one line with exit code 2. A probe is no reservation
(another process may take the port between it and the real bind), so the real binds
report the same way: :func:`cannot_listen`.
"""

from __future__ import annotations

import errno
import os
import socket

from acgs.errors import ConfigurationError

_REASONS = {errno.EADDRINUSE: "address in use", errno.EACCES: "permission denied",
            errno.EADDRNOTAVAIL: "not an address of this host"}


def why_not(address: str) -> str | None:
    """Why ``address`` (``host:port``, ``[v6]:port``; an empty host is every address) cannot
    be listened on, or None when a probe bound it (or the port is 0: any free one).

    Each address the host resolves to is bound with SO_REUSEADDR, as gRPC and the metrics
    server do, then closed: a port in TIME_WAIT is free, one with a listener is not.
    """
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        return "not host:port"
    if port == 0:
        return None
    try:
        found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        return f"cannot resolve {host!r}: {err.strerror}"
    failures: list[int] = []
    for family, kind, proto, _, sockaddr in found:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(sockaddr)
                probe.listen(1)
        except OSError as err:
            if err.errno in (errno.EADDRINUSE, errno.EACCES):
                return _REASONS[err.errno]
            failures.append(err.errno or 0)
    if failures and len(failures) == len(found):  # localhost without ::1 is fine
        return _reason(failures[0])
    return None


def require_free(setting: str, address: str) -> None:
    """Raise ConfigurationError (:func:`cannot_listen`) unless ``address`` may be listened on."""
    reason = why_not(address)
    if reason is not None:
        raise cannot_listen(setting, address, reason)


def cannot_listen(setting: str, address: str, reason: str | None = None) -> ConfigurationError:
    """The error for ``setting=address`` that could not be bound: ``reason``, else the probe's,
    else a generic one."""
    reason = reason or why_not(address) or "cannot bind it"
    return ConfigurationError(f"cannot listen on {setting}={address} ({reason})")


def reason_of(err: OSError) -> str:
    """What a failed bind's OSError means, in the words of :func:`why_not`."""
    return _reason(err.errno or 0, err.strerror)


def _reason(code: int, fallback: str | None = None) -> str:
    return _REASONS.get(code) or (fallback or os.strerror(code)).lower()
