"""Bearer-token authentication against a cached copy of the token table.

The table is loaded at start, then reloaded every ``refresh_interval_s``
(about 1 s), so a revoked token stops working on every server within about
that long. A well-formed token whose id is not in the copy (created a moment
ago, or made up) is refused at once, after the same hash and constant-time
comparison a wrong secret costs (against a dummy hash), so that the time of a
refusal does not tell a prober whether an id exists; it also starts an early
reload in the background: at most one per ``reload_interval_s`` (0.1 s), so a
flood of made-up ids costs the database ten small queries a second, and a token
created a moment ago works about 0.1 s after its first refused call (within
``refresh_interval_s`` in any case). When the database is
unreachable the last copy stays in force (decisions must go on while
PostgreSQL is down), and revocations made meanwhile apply once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from acgs.domain.model import Caller
from acgs.domain.tokens import TokenRecord, bearer, hash_token, matches, parse
from acgs.errors import Unauthenticated

logger = logging.getLogger("acgs.auth")

MISSING = "missing bearer token (metadata 'authorization: Bearer <token>')"
INVALID = "invalid bearer token"  # one message for malformed, unknown, revoked and wrong
EXPIRED = "bearer token expired"  # its holder had it legitimately: say why it stopped working
_NOBODY = TokenRecord(id="acgs_0000000000000000", name="", role="",
                      secret_hash=hash_token("acgs_0000000000000000." + "A" * 43))
"""What an unknown id's token is compared with; the outcome is ignored, only the time counts."""


class TokenSource(Protocol):
    """The token table (:class:`acgs.adapters.pg_tokens.PgTokenStore`)."""

    async def load(self) -> Sequence[TokenRecord]: ...


class TokenAuthenticator:
    """Implements the Authenticator port. ``load`` (or ``restore``) before the first call; the
    composition root runs ``load`` every ``refresh_interval_s`` under its supervisor."""

    def __init__(
        self,
        *,
        source: TokenSource,
        refresh_interval_s: float = 1.0,
        reload_interval_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._source = source
        self._now = now
        self.refresh_interval_s = refresh_interval_s
        self._reload_s = reload_interval_s
        self._clock = clock
        self._table: dict[str, TokenRecord] = {}
        self._loaded_at = float("-inf")
        self._reload: asyncio.Task[None] | None = None
        self.reloads = 0

    @property
    def records(self) -> Mapping[str, TokenRecord]:
        """The current copy of the table, by id."""
        return self._table

    async def load(self) -> None:
        """Replace the copy with the table as it is now; raises what the source raises."""
        self._loaded_at = self._clock()
        records = await self._source.load()
        self._table = {r.id: r for r in records}
        self.reloads += 1

    def restore(self, records: Sequence[TokenRecord]) -> None:
        """Take ``records`` (a kept copy of the table) as the table until the next load."""
        self._table = {r.id: r for r in records}

    async def stop(self) -> None:
        """Cancel a reload under way (the periodic refresh is :meth:`load`, supervised)."""
        if self._reload is not None:
            self._reload.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reload

    async def authenticate(self, metadata: Mapping[str, str]) -> Caller:
        """The caller a token names; Unauthenticated when missing, malformed, unknown, revoked
        or expired (the secret is checked first: only its holder learns it expired)."""
        header = metadata.get("authorization")
        if header is None:
            raise Unauthenticated(MISSING)
        token = bearer(header)
        token_id = parse(token) if token is not None else None
        if token is None or token_id is None:
            raise Unauthenticated(INVALID)
        record = self._table.get(token_id)
        if record is None:
            self._reload_soon()
            matches(token, _NOBODY)  # the work a wrong secret costs: refusals take one time
            raise Unauthenticated(INVALID)
        if not matches(token, record) or record.revoked:
            raise Unauthenticated(INVALID)
        if record.expires_at is not None and record.expired(self._now()):
            raise Unauthenticated(EXPIRED)
        return Caller(id=record.id, role=record.role, identity=record.identity or "")

    def _reload_soon(self) -> None:
        if self._reload is None or self._reload.done():
            self._reload = asyncio.create_task(self._early_load(), name="acgs-token-reload")

    async def _early_load(self) -> None:
        """Load once ``reload_interval_s`` has passed since the last load (now, if it has)."""
        wait_s = self._loaded_at + self._reload_s - self._clock()
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        try:
            await self.load()
        except Exception as err:
            logger.warning("token table not reloaded, keeping the last copy: %s", err)
