"""TLS on the gRPC port (ACGS_TLS_CERT/KEY), and client certificates (ACGS_TLS_CLIENT_CA)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import grpc
import pytest
from acgs.config import Settings
from acgs.edge import TlsFiles, make_tls
from acgs.entrypoints.grpc_server import GrpcServer
from acgs.lifecycle.callers import server_credentials
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc


def split(tls: TlsFiles, directory: Path) -> tuple[Path, Path]:
    """server.pem (certificate, then key) as the two files ACGS_TLS_CERT/KEY name."""
    text = tls.server_pem.read_text()
    at = text.index("-----BEGIN PRIVATE KEY-----")
    cert, key = directory / "cert.pem", directory / "key.pem"
    cert.write_text(text[:at])
    key.write_text(text[at:])
    return cert, key


def client_pair(tls: TlsFiles) -> tuple[bytes, bytes]:
    """A client certificate signed by the test CA, and its key (PEM)."""
    ca_key = serialization.load_pem_private_key(tls.ca_key.read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate(tls.ca.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client")]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


async def check(channel: grpc.aio.Channel) -> grpc.StatusCode:
    try:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                        timeout=3)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def serve_and_call(settings: Settings, calls: dict[str, grpc.ChannelCredentials | None]
                         ) -> dict[str, grpc.StatusCode]:
    server = GrpcServer(address="127.0.0.1:0", services=[], max_message_bytes=1 << 20,
                        credentials=server_credentials(settings))
    port = await server.start()
    out = {}
    try:
        for name, creds in calls.items():
            address = f"127.0.0.1:{port}"
            channel = (grpc.aio.insecure_channel(address) if creds is None
                       else grpc.aio.secure_channel(address, creds))
            async with channel:
                out[name] = await check(channel)
    finally:
        await server.stop(0)
    return out


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[TlsFiles, Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    files = make_tls(directory, hosts=("localhost", "127.0.0.1"))
    return (files, *split(files, directory))


def test_tls_refuses_plaintext(tls: tuple[TlsFiles, Path, Path]) -> None:
    files, cert, key = tls
    settings = Settings.from_env({"ACGS_TLS_CERT": str(cert), "ACGS_TLS_KEY": str(key)})
    trusted = grpc.ssl_channel_credentials(root_certificates=files.ca.read_bytes())
    codes = asyncio.run(serve_and_call(settings, {"tls": trusted, "plaintext": None}))
    assert codes == {"tls": grpc.StatusCode.OK, "plaintext": grpc.StatusCode.UNAVAILABLE}


def test_client_ca_requires_a_client_certificate(tls: tuple[TlsFiles, Path, Path]) -> None:
    files, cert, key = tls
    settings = Settings.from_env({"ACGS_TLS_CERT": str(cert), "ACGS_TLS_KEY": str(key),
                                  "ACGS_TLS_CLIENT_CA": str(files.ca)})
    ca = files.ca.read_bytes()
    client_cert, client_key = client_pair(files)
    codes = asyncio.run(serve_and_call(settings, {
        "no client cert": grpc.ssl_channel_credentials(root_certificates=ca),
        "client cert": grpc.ssl_channel_credentials(root_certificates=ca, private_key=client_key,
                                                    certificate_chain=client_cert),
    }))
    assert codes == {"no client cert": grpc.StatusCode.UNAVAILABLE,
                     "client cert": grpc.StatusCode.OK}
