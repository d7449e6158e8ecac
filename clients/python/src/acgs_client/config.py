"""Connection settings: from arguments, else from the environment, else defaults.

Environment: ``ACGS_ADDR`` (target, default ``localhost:50051``; ``dns:///host:port``
resolves every address of a name), ``ACGS_TOKEN`` (bearer token), ``ACGS_TLS_CA`` (PEM
file of the CA that signed the server: turns TLS on), ``ACGS_TLS=true`` (TLS with the
system's roots), ``ACGS_CLIENT_CERT`` and ``ACGS_CLIENT_KEY`` (PEM files: a client
certificate for mutual TLS), ``ACGS_CONSTITUTIONAL_HASH`` (default the constitution this
client was built for).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from acgs_client.retry import RetryPolicy

CONSTITUTIONAL_HASH = "cdd01ef066bc6cf2"
DEFAULT_TARGET = "localhost:50051"

ChannelOptions = Sequence[tuple[str, Any]]


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


@dataclass(frozen=True)
class ClientConfig:
    """Everything a client needs to reach ACGS-2 and present itself."""

    target: str = DEFAULT_TARGET
    token: str | None = None
    constitutional_hash: str = CONSTITUTIONAL_HASH
    tls: bool = False
    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    #: Default deadline of a call, retries included.
    timeout_s: float = 2.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: gRPC's client-side balancing across every address of ``target`` (e.g.
    #: ``round_robin`` with ``dns:///acgs.internal:50051``): an alternative to HAProxy.
    load_balancing: str | None = None
    #: HTTP/2 keepalive pings (the server accepts one every 10 s at most).
    keepalive_time_ms: int = 30_000
    keepalive_timeout_ms: int = 10_000
    extra_options: ChannelOptions = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ClientConfig:
        """Settings from ``env`` (default ``os.environ``); keyword arguments win."""
        env = os.environ if env is None else env
        ca = env.get("ACGS_TLS_CA")
        values: dict[str, Any] = {
            "target": env.get("ACGS_ADDR") or DEFAULT_TARGET,
            "token": env.get("ACGS_TOKEN") or None,
            "constitutional_hash": env.get("ACGS_CONSTITUTIONAL_HASH") or CONSTITUTIONAL_HASH,
            "tls": bool(ca) or env.get("ACGS_TLS", "").lower() in ("1", "true", "yes"),
            "root_certificates": _read(ca),
            "certificate_chain": _read(env.get("ACGS_CLIENT_CERT")),
            "private_key": _read(env.get("ACGS_CLIENT_KEY")),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def channel_options(self) -> list[tuple[str, Any]]:
        options: list[tuple[str, Any]] = [
            ("grpc.keepalive_time_ms", self.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", 0),
            # The client retries by its own rule (retry-after-ms, request_id); gRPC's
            # transparent retries stay on, its configurable ones off.
            ("grpc.enable_retries", 1),
        ]
        if self.load_balancing:
            options.append(("grpc.service_config", json.dumps(
                {"loadBalancingConfig": [{self.load_balancing: {}}]})))
        return [*options, *self.extra_options]

    def credentials(self) -> grpc.ChannelCredentials | None:
        if not (self.tls or self.root_certificates or self.certificate_chain):
            return None
        return grpc.ssl_channel_credentials(root_certificates=self.root_certificates,
                                            private_key=self.private_key,
                                            certificate_chain=self.certificate_chain)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Sent on every call: the constitution (HAProxy checks it before any server
        does) and the bearer token."""
        md: tuple[tuple[str, str], ...] = (("x-constitutional-hash", self.constitutional_hash),)
        if self.token:
            md += (("authorization", f"Bearer {self.token}"),)
        return md
