"""Who is calling: metadata → Caller, through the configured Authenticator."""

from __future__ import annotations

from acgs.domain.model import Caller
from acgs.entrypoints.status import Context
from acgs.service_layer.ports import Authenticator


class AnonymousAuthenticator:
    """Every caller is anonymous. Used until token authentication is configured."""

    async def authenticate(self, metadata: object) -> Caller:
        return Caller.anonymous()


class CallerResolver:
    """Authenticates the call and checks that its role may use ``service``."""

    def __init__(self, *, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    async def resolve(self, context: Context, service: str) -> Caller:
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        return await self._authenticator.authenticate(metadata)
