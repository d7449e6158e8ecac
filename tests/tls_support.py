"""Client certificates for mutual-TLS tests, signed by a CA of :func:`acgs.edge.make_tls`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from acgs.edge import TlsFiles
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def split(tls: TlsFiles, directory: Path) -> tuple[Path, Path]:
    """server.pem (certificate, then key) as the two files ACGS_TLS_CERT/KEY name."""
    text = tls.server_pem.read_text()
    at = text.index("-----BEGIN PRIVATE KEY-----")
    cert, key = directory / "cert.pem", directory / "key.pem"
    cert.write_text(text[:at])
    key.write_text(text[at:])
    return cert, key


def client_cert(tls: TlsFiles, cn: str = "client",
                sans: Sequence[x509.GeneralName] = ()) -> tuple[bytes, bytes]:
    """A client certificate with subject ``CN=cn`` and ``sans``, signed by the CA of ``tls``,
    and its key (PEM)."""
    ca_key = serialization.load_pem_private_key(tls.ca_key.read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate(tls.ca.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .issuer_name(ca.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1)))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
