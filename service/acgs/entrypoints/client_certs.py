"""Client certificates of mutual TLS as callers: ACGS_TLS_CLIENT_MAP.

The map is a file of lines ``<name> <role>[:<identity>]`` (``#`` starts a comment), where
``<name>`` is the certificate's subject common name (``CN=checkout``) or one of its
subject alternative names (``URI=spiffe://corp/checkout``, ``DNS=checkout.corp``,
``EMAIL=alice@corp``). A certificate the server accepted (signed by ACGS_TLS_CLIENT_CA)
whose subject or a SAN is in the map is the caller ``tls:<name>`` with that role; its
identity is the one written after the colon, else the name's value. Names are matched
exactly (SAN DNS names case-insensitively): no wildcards, so one line grants one name.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from acgs.domain.model import Caller
from acgs.domain.tokens import ROLES
from acgs.errors import ConfigurationError

KINDS = ("CN", "URI", "DNS", "EMAIL")


@dataclass(frozen=True, slots=True)
class Grant:
    role: str
    identity: str


class ClientCertMap:
    """Which certificate names are which callers (parsed from the map file's text)."""

    def __init__(self, grants: Mapping[str, Grant]) -> None:
        self._grants = dict(grants)

    def __len__(self) -> int:
        return len(self._grants)

    @classmethod
    def parse(cls, text: str, *, source: str = "ACGS_TLS_CLIENT_MAP") -> ClientCertMap:
        """ConfigurationError naming the line for a malformed one, an unknown kind or role,
        or a name mapped twice."""
        grants: dict[str, Grant] = {}
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            where = f"{source} line {number}"
            name, _, grant = line.rpartition(" ")
            kind, eq, value = name.strip().partition("=")
            role, _, identity = grant.partition(":")
            if not eq or kind.upper() not in KINDS or not value.strip():
                raise ConfigurationError(f"{where}: expected '<CN|URI|DNS|EMAIL>=<name> "
                                         f"<role>[:<identity>]', not {raw.strip()!r}")
            if role not in ROLES:
                raise ConfigurationError(f"{where}: unknown role {role!r}; roles are "
                                         f"{', '.join(ROLES)}")
            key = _key(kind, value.strip())
            if key in grants:
                raise ConfigurationError(f"{where}: {key} is mapped twice")
            grants[key] = Grant(role, identity.strip() or value.strip())
        return cls(grants)

    def caller(self, pem: bytes) -> Caller | None:
        """The caller a client certificate (PEM) maps to, else None. Its subject CN is looked
        up first, then its SANs in the certificate's order."""
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            return None
        for key in _names(cert):
            grant = self._grants.get(key)
            if grant is not None:
                return Caller(id=f"tls:{key}", role=grant.role, identity=grant.identity)
        return None


def _key(kind: str, value: str) -> str:
    kind = kind.upper()
    return f"{kind}={value.lower() if kind == 'DNS' else value}"


def _names(cert: x509.Certificate) -> Iterator[str]:
    for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        yield _key("CN", str(attr.value))
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return
    for general in san:
        if isinstance(general, x509.UniformResourceIdentifier):
            yield _key("URI", general.value)
        elif isinstance(general, x509.DNSName):
            yield _key("DNS", general.value)
        elif isinstance(general, x509.RFC822Name):
            yield _key("EMAIL", general.value)
