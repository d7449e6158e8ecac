"""The edge: HAProxy's configuration, rendered from ``haproxy/haproxy.cfg.tmpl``, and TLS files.

:func:`render` fills the template's ``$placeholders`` (``string.Template``) from an
:class:`EdgeConfig`: listen addresses, the certificate, timeouts and the servers.
:func:`make_tls` writes a private CA and a server certificate signed by it (ECDSA
P-256) for a local stack or tests; production brings its own certificate.
No I/O happens at import; nothing here reads the environment.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from acgs import CONSTITUTIONAL_HASH
from acgs.errors import ConfigurationError

TEMPLATE = Path(__file__).resolve().parents[2] / "haproxy" / "haproxy.cfg.tmpl"
"""The template in a source checkout (the package does not ship it)."""

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_ADDR = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})$")


@dataclass(frozen=True, slots=True)
class Upstream:
    """One API server: ``grpc_addr`` (host:port) takes calls, ``ready_port`` its metrics port."""

    name: str
    grpc_addr: str
    ready_port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class EdgeConfig:
    """What :func:`render` puts in the template. Durations in seconds; ``h2c_addr`` None: no
    cleartext listener. ``certificate`` is one PEM file: certificate chain, then private key."""

    upstreams: Sequence[Upstream]
    certificate: Path
    tls_addr: str = "127.0.0.1:8443"
    h2c_addr: str | None = None
    stats_addr: str = "127.0.0.1:8405"
    constitutional_hash: str = CONSTITUTIONAL_HASH
    check_interval_s: float = 0.5
    unary_timeout_s: float = 30.0
    stream_timeout_s: float = 3600.0


def default_template() -> str:
    """The text of ``haproxy/haproxy.cfg.tmpl``; raises FileNotFoundError outside a checkout."""
    return TEMPLATE.read_text()


def render(config: EdgeConfig, template: str) -> str:
    """The HAProxy configuration for ``config``; raises ConfigurationError on a bad value."""
    _validate(config)
    # check-proto on each line: HAProxy 2.6 does not inherit it from default-server.
    unary = [f"    server {u.name} {u.grpc_addr} check port {u.ready_port} check-proto h1"
             for u in config.upstreams]
    streams = [f"    server {u.name} {u.grpc_addr} track acgs_unary/{u.name}"
               for u in config.upstreams]
    h2c = (f"    bind {config.h2c_addr} proto h2" if config.h2c_addr
           else "    # no cleartext (h2c) listener")
    try:
        return Template(template).substitute(
            tls_addr=config.tls_addr,
            h2c_bind=h2c,
            stats_addr=config.stats_addr,
            certificate=str(config.certificate),
            constitutional_hash=config.constitutional_hash,
            check_interval=_duration(config.check_interval_s),
            unary_timeout=_duration(config.unary_timeout_s),
            stream_timeout=_duration(config.stream_timeout_s),
            unary_servers="\n".join(unary),
            stream_servers="\n".join(streams),
        )
    except (KeyError, ValueError) as err:
        raise ConfigurationError(f"HAProxy template: bad or unknown placeholder {err}") from err


def _validate(config: EdgeConfig) -> None:
    if not config.upstreams:
        raise ConfigurationError("HAProxy needs at least one upstream server")
    names = [u.name for u in config.upstreams]
    if len(set(names)) != len(names):
        raise ConfigurationError(f"upstream names repeat: {names}")
    for u in config.upstreams:
        if not _NAME.match(u.name) or not _ADDR.match(u.grpc_addr):
            raise ConfigurationError(f"bad upstream {u.name}={u.grpc_addr}")
        if not 0 < u.ready_port < 65536:
            raise ConfigurationError(f"bad ready port {u.ready_port} for {u.name}")
    for addr in (config.tls_addr, config.stats_addr, config.h2c_addr):
        if addr is not None and not _ADDR.match(addr):
            raise ConfigurationError(f"bad listen address {addr!r} (expected host:port)")
    if not re.fullmatch(r"[0-9a-f]{16}", config.constitutional_hash):
        raise ConfigurationError(f"bad constitutional hash {config.constitutional_hash!r}")


def _duration(seconds: float) -> str:
    if seconds <= 0:
        raise ConfigurationError(f"durations must be positive, got {seconds}")
    return f"{max(1, round(seconds * 1000))}ms"


# -- TLS ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """``ca``: the CA certificate clients trust; ``server_pem``: certificate + key for HAProxy."""

    ca: Path
    ca_key: Path
    server_pem: Path


def make_tls(
    directory: Path, *, hosts: Sequence[str] = ("localhost", "127.0.0.1", "::1"), days: int = 90
) -> TlsFiles:
    """Write ``ca.pem``, ``ca-key.pem`` and ``server.pem`` (certificate for ``hosts``, then its
    key) under ``directory``, keys mode 0600. Files that exist and are valid for another day
    are kept, so clients that already trust the CA keep working."""
    files = TlsFiles(directory / "ca.pem", directory / "ca-key.pem", directory / "server.pem")
    if all(p.exists() for p in (files.ca, files.ca_key, files.server_pem)) and _fresh(files):
        return files
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ACGS-2 local CA")])
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key(), now, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]), ca_name,
                 key.public_key(), now, days)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(files.ca_key, _key_pem(ca_key), secret=True)
    _write(files.server_pem, cert.public_bytes(serialization.Encoding.PEM) + _key_pem(key),
           secret=True)
    _write(files.ca, ca.public_bytes(serialization.Encoding.PEM))
    return files


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             now: datetime.datetime, days: int) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days)))


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _fresh(files: TlsFiles) -> bool:
    try:
        certs = [x509.load_pem_x509_certificate(p.read_bytes())
                 for p in (files.ca, files.server_pem)]
    except ValueError:
        return False
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    return all(c.not_valid_after_utc > soon for c in certs)


def _write(path: Path, data: bytes, *, secret: bool = False) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)
