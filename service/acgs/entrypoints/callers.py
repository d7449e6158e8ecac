"""Who is calling, and may they: metadata → Caller → role check → rate limit.

Every acgs.v1 method starts with ``await callers.resolve(context, METHOD)``; the
Caller it returns is the only identity the service layer (and the audit trail)
ever sees: nothing is taken from a request body.
"""

from __future__ import annotations

from collections.abc import Mapping

from acgs.domain.model import Caller
from acgs.domain.rate_limit import RateLimiter
from acgs.entrypoints.access import AccessTable, allowed_roles
from acgs.entrypoints.client_certs import ClientCertMap
from acgs.entrypoints.status import Context
from acgs.errors import PermissionDenied, Unauthenticated
from acgs.service_layer.ports import Authenticator


class AnonymousAuthenticator:
    """Every caller is anonymous: ``ACGS_AUTH=none`` (refused in production)."""

    async def authenticate(self, metadata: Mapping[str, str]) -> Caller:
        return Caller.anonymous()


class CallerResolver:
    """Authenticates the call, checks its role against ``access``, then its rate.

    ``access=None`` turns the role check off; it goes with AnonymousAuthenticator
    only. ``limiter=None`` turns rate limits off.
    """

    def __init__(
        self,
        *,
        authenticator: Authenticator,
        access: AccessTable | None,
        limiter: RateLimiter | None = None,
        certificates: ClientCertMap | None = None,
    ) -> None:
        self._authenticator = authenticator
        self._access = access
        self._limiter = limiter
        self._certificates = certificates
        self._by_pem: dict[bytes, Caller | None] = {}

    async def resolve(self, context: Context, method: str) -> Caller:
        """The caller of ``method`` ("acgs.v1.Service/Method").

        A call without a token whose mutual-TLS client certificate is in the certificate
        map is its caller; any other call needs a token.
        Raises Unauthenticated (missing, unknown or revoked token, or two
        ``authorization`` values), PermissionDenied (the role may not call
        ``method``) or LimitExceeded (the caller's rate is used up).
        """
        metadata = _metadata(context)
        caller = None
        if self._certificates is not None and "authorization" not in metadata:
            caller = self._certificate_caller(context)  # a token, when sent, wins
        if caller is None:
            caller = await self._authenticator.authenticate(metadata)
        if self._access is not None and caller.role not in allowed_roles(self._access, method):
            raise PermissionDenied(f"role {caller.role!r} may not call {method}")
        if self._limiter is not None:
            self._limiter.check(caller)
        return caller

    def _certificate_caller(self, context: Context) -> Caller | None:
        """The caller the client certificate of a mutual-TLS connection maps to (cached by
        certificate: parsing one costs more than the rest of the call's checks)."""
        assert self._certificates is not None
        pem = next(iter((context.auth_context() or {}).get("x509_pem_cert") or ()), None)
        if pem is None:
            return None
        if pem not in self._by_pem:
            if len(self._by_pem) >= 1024:
                self._by_pem.clear()
            self._by_pem[pem] = self._certificates.caller(pem)
        return self._by_pem[pem]


def _metadata(context: Context) -> dict[str, str]:
    metadata: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if not isinstance(value, str):
            continue
        if key == "authorization" and key in metadata:
            raise Unauthenticated("more than one authorization value")
        metadata[key] = value
    return metadata
