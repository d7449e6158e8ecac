"""ACGS_TLS_CLIENT_MAP: parsing the map, and which certificate names map to which caller."""

from __future__ import annotations

from pathlib import Path

import pytest
from acgs.config import Settings
from acgs.domain.model import Caller
from acgs.edge import TlsFiles, make_tls
from acgs.entrypoints.client_certs import ClientCertMap
from acgs.errors import ConfigurationError
from acgs.lifecycle.callers import require_secure
from cryptography import x509

from tests.tls_support import client_cert

MAP = """
# name                              role[:identity]
CN=checkout service                 agent:checkout@corp
URI=spiffe://corp/ns/prod/sa/audit  auditor
DNS=Admin.Corp                      admin:alice@corp
EMAIL=bob@corp                      admin
"""


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


def caller(tls: TlsFiles, cn: str, *sans: x509.GeneralName) -> Caller | None:
    return ClientCertMap.parse(MAP).caller(client_cert(tls, cn, sans)[0])


def test_subject_cn_maps_to_role_and_identity(tls: TlsFiles) -> None:
    assert caller(tls, "checkout service") == Caller(
        id="tls:CN=checkout service", role="agent", identity="checkout@corp")


def test_each_kind_of_san_maps_and_identity_defaults_to_the_name(tls: TlsFiles) -> None:
    uri = x509.UniformResourceIdentifier("spiffe://corp/ns/prod/sa/audit")
    assert caller(tls, "x", uri) == Caller(id="tls:URI=spiffe://corp/ns/prod/sa/audit",
                                           role="auditor",
                                           identity="spiffe://corp/ns/prod/sa/audit")
    assert caller(tls, "x", x509.DNSName("admin.corp")) == Caller(
        id="tls:DNS=admin.corp", role="admin", identity="alice@corp")  # DNS: any case
    assert caller(tls, "x", x509.RFC822Name("bob@corp")) == Caller(
        id="tls:EMAIL=bob@corp", role="admin", identity="bob@corp")


def test_unmapped_names_and_near_misses_map_to_nobody(tls: TlsFiles) -> None:
    assert caller(tls, "client") is None
    assert caller(tls, "Checkout service") is None  # CN: exact
    assert caller(tls, "x", x509.UniformResourceIdentifier("spiffe://corp/ns/prod/sa/audit/x"),
                  x509.DNSName("evil.admin.corp"), x509.RFC822Name("BOB@corp")) is None
    assert caller(tls, "x", x509.DNSName("checkout service")) is None  # a SAN is not a CN
    assert ClientCertMap.parse(MAP).caller(b"not a certificate") is None


@pytest.mark.parametrize(("text", "named"), [
    ("CN=a", "line 1"), ("checkout agent", "line 1"), ("\nIP=10.0.0.1 agent", "line 2"),
    ("CN= agent", "line 1"), ("CN=a root", "unknown role"),
    ("CN=a agent\nCN=a admin", "mapped twice"), ("DNS=A agent\nDNS=a admin", "mapped twice"),
])
def test_a_malformed_map_is_a_configuration_error_naming_the_line(text: str,
                                                                  named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        ClientCertMap.parse(text)


def test_the_map_needs_a_client_ca(tmp_path: Path) -> None:
    (tmp_path / "map").write_text("CN=a agent\n")
    settings = Settings.from_env({"ACGS_TLS_CERT": "c", "ACGS_TLS_KEY": "k",
                                  "ACGS_TLS_CLIENT_MAP": str(tmp_path / "map")})
    with pytest.raises(ConfigurationError, match="ACGS_TLS_CLIENT_CA"):
        require_secure(settings)
