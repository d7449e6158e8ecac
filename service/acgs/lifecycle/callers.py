"""The callers' part: who may call (after the audit trail, before the servicers).

Builds the CallerResolver (bearer tokens checked against the token table in
PostgreSQL, the role table, per-caller rate limits), the gRPC server's TLS
credentials, and refuses an insecure production configuration. In development
it also makes sure a token per role exists in ``<ACGS_DATA_DIR>/dev-tokens``.
The token table is reloaded every ACGS_TOKEN_REFRESH_S by the supervised part
``token-refresh``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from psycopg_pool import AsyncConnectionPool

from acgs.adapters import dev_tokens
from acgs.adapters.local_snapshot import SnapshotStore
from acgs.adapters.pg_migrations import check_constitution, migrate
from acgs.adapters.pg_tokens import PgTokenStore
from acgs.config import Settings
from acgs.domain import tokens
from acgs.domain.model import Caller
from acgs.domain.rate_limit import Rate, RateLimiter
from acgs.entrypoints.access import ACCESS
from acgs.entrypoints.callers import AnonymousAuthenticator, CallerResolver
from acgs.entrypoints.client_certs import ClientCertMap
from acgs.errors import ConfigurationError, Unavailable
from acgs.lifecycle.database import Database, open_database, shared_pool
from acgs.lifecycle.offline import UNREACHABLE, SnapshotTokenSource
from acgs.lifecycle.supervisor import Supervisor
from acgs.service_layer.authentication import TokenAuthenticator

logger = logging.getLogger("acgs.lifecycle")


@dataclass
class Callers:
    """The wired resolver, and the development tokens' file (None outside development)."""

    resolver: CallerResolver
    dev_tokens_file: Path | None = None


def require_secure(settings: Settings) -> None:
    """Raise ConfigurationError for a TLS setting that is half there, or for production
    without TLS or without token authentication (unless ACGS_ALLOW_INSECURE=true)."""
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise ConfigurationError("set both ACGS_TLS_CERT and ACGS_TLS_KEY, or neither")
    if settings.tls_client_ca is not None and settings.tls_cert is None:
        raise ConfigurationError("ACGS_TLS_CLIENT_CA needs ACGS_TLS_CERT and ACGS_TLS_KEY")
    if settings.tls_client_map is not None and settings.tls_client_ca is None:
        raise ConfigurationError("ACGS_TLS_CLIENT_MAP needs ACGS_TLS_CLIENT_CA (only a "
                                 "certificate signed by a CA you trust may name a caller)")
    if not settings.is_production or settings.allow_insecure:
        return
    problems = []
    if settings.tls_cert is None:
        problems.append("without TLS (set ACGS_TLS_CERT and ACGS_TLS_KEY)")
    if settings.auth != "token":
        problems.append("without token authentication (ACGS_AUTH=none)")
    if problems:
        raise ConfigurationError(
            "ACGS_ENV=production refuses to serve " + " and ".join(problems)
            + "; set ACGS_ALLOW_INSECURE=true only if something else protects the port"
        )


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from ACGS_TLS_CERT/KEY (client certificates required when
    ACGS_TLS_CLIENT_CA is set); None for plaintext. ConfigurationError if unreadable."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    ca = settings.tls_client_ca
    return grpc.ssl_server_credentials(
        [(_read(settings.tls_key, "ACGS_TLS_KEY"), _read(settings.tls_cert, "ACGS_TLS_CERT"))],
        root_certificates=_read(ca, "ACGS_TLS_CLIENT_CA") if ca is not None else None,
        require_client_auth=ca is not None,
    )


def rate_limiter(settings: Settings) -> RateLimiter:
    return RateLimiter(rates={role: Rate(per_s, burst)
                              for role, per_s, burst in settings.rate_limits})


def client_cert_map(settings: Settings) -> ClientCertMap | None:
    """The ACGS_TLS_CLIENT_MAP file, parsed; None when unset. ConfigurationError if it is
    unreadable or malformed."""
    if settings.tls_client_map is None:
        return None
    path = settings.tls_client_map
    try:
        text = _read(path, "ACGS_TLS_CLIENT_MAP").decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigurationError(f"ACGS_TLS_CLIENT_MAP={path}: not UTF-8 text") from err
    certificates = ClientCertMap.parse(text, source=f"ACGS_TLS_CLIENT_MAP={path}")
    logger.info("mutual TLS: %d client certificate names map to callers", len(certificates))
    return certificates


async def build_callers(settings: Settings, parts: Supervisor, *,
                        database: Database | None) -> Callers:
    """The CallerResolver for ``settings`` on ``database`` (the audit trail's), or None to
    open and migrate the database here. Raises psycopg.Error when the token table cannot be
    read.

    With ``database`` the table read is also kept in its snapshots. While it is not ready
    (it was unreachable at start) the kept table is used instead (SnapshotInvalid if it
    fails its check) and the database is read only once it is."""
    limiter = rate_limiter(settings)
    if settings.auth == "none":
        logger.warning("ACGS_AUTH=none: every caller is anonymous and may call every method")
        return Callers(CallerResolver(authenticator=AnonymousAuthenticator(), access=None,
                                      limiter=limiter))
    if database is None:  # no audit trail: the token table's database is opened here
        conninfo, stop_database = await open_database(settings)
        parts.step("postgres", stop=stop_database)
        await migrate(conninfo, constitutional_hash=settings.constitutional_hash)
        pool = shared_pool(settings, conninfo)
        await pool.open()
        parts.step("pool", stop=pool.close)
    else:
        pool = database.pool
    store = PgTokenStore(pool=pool)
    source = store if database is None else SnapshotTokenSource(
        source=store, snapshots=database.snapshots, ready=lambda: database.watch.ready)
    authenticator = TokenAuthenticator(source=source, refresh_interval_s=settings.token_refresh_s)
    refreshing(parts, authenticator)
    if database is not None and database.offline:
        return _offline_callers(settings, database.snapshots, authenticator, limiter)
    await authenticator.load()
    dev_file = await _dev_tokens(settings, store, authenticator)
    return Callers(
        CallerResolver(authenticator=authenticator, access=ACCESS, limiter=limiter,
                       certificates=client_cert_map(settings)),
        dev_tokens_file=dev_file)


def refreshing(parts: Supervisor, authenticator: TokenAuthenticator) -> None:
    """The token refresh's part: a reload every ``refresh_interval_s``; a failed one keeps
    the last copy in force (one warning per distinct error)."""
    parts.every("token-refresh", authenticator.load,
                interval_s=authenticator.refresh_interval_s, stop=authenticator.stop,
                expected=UNREACHABLE)


def _offline_callers(settings: Settings, snapshots: SnapshotStore,
                     authenticator: TokenAuthenticator, limiter: RateLimiter) -> Callers:
    """Callers checked against the kept token table; reloads resume with the database."""
    records = snapshots.load_tokens()
    if records is None:
        raise Unavailable(f"the database is unreachable and there is no token snapshot "
                          f"({snapshots.tokens_path})")
    authenticator.restore(records)
    logger.warning("authenticating against the token snapshot (%d tokens) until the database "
                   "returns", len(records))
    dev_file = settings.data_dir / "dev-tokens"
    return Callers(
        CallerResolver(authenticator=authenticator, access=ACCESS, limiter=limiter,
                       certificates=client_cert_map(settings)),
        dev_tokens_file=dev_file if settings.environment == "development" and dev_file.exists()
        else None)


async def _dev_tokens(settings: Settings, store: PgTokenStore,
                      authenticator: TokenAuthenticator) -> Path | None:
    if settings.environment != "development":
        return None
    path = settings.data_dir / "dev-tokens"
    if await ensure_dev_tokens(path, store=store, known=authenticator.records,
                               created_by=f"dev-bootstrap {settings.instance_id}",
                               actor=Caller(id=f"acgs-server:{settings.instance_id}",
                                            role="system")):
        await authenticator.load()
    return path


async def ensure_dev_tokens(path: Path, *, store: PgTokenStore, created_by: str,
                            known: Mapping[str, tokens.TokenRecord], actor: Caller) -> bool:
    """Keep the tokens of ``path`` that are still valid, issue the missing ones (each a
    ``token.created`` event done by ``actor``, the server); True if any was issued (then
    ``path`` is rewritten, mode 0600). Raises OSError, psycopg.Error."""
    current = dev_tokens.read(path)
    kept: dict[str, str] = {}
    for role in tokens.ROLES:
        token = current.get(role, "")
        record = known.get(tokens.parse(token) or "")
        if record and record.role == role and not record.revoked and tokens.matches(token, record):
            kept[role] = token
            continue
        issued = tokens.issue(role=role, name=f"development {role}", created_by=created_by)
        await store.insert(issued.record, actor=actor)
        kept[role] = issued.token
    if kept == current:
        return False
    dev_tokens.write(path, kept)
    logger.info("wrote development tokens to %s", path)
    return True


def dev_token_help(path: Path, grpc_addr: str, *, tls: bool = False) -> str:
    """How to call a development server with the tokens of ``path`` (printed at start)."""
    agent, auditor = dev_tokens.variable(tokens.AGENT), dev_tokens.variable(tokens.AUDITOR)
    transport = "-cacert <your CA>.pem" if tls else "-plaintext"
    return (
        f"acgs: development tokens (one per role) are in {path}; to call this server:\n"
        f"  source {path}\n"
        f"  grpcurl {transport} -H \"authorization: Bearer ${agent}\" -d '{{...}}' "
        f"{grpc_addr} acgs.v1.Governance/Decide\n"
        f"  grpcurl {transport} -H \"authorization: Bearer ${auditor}\" "
        f"{grpc_addr} acgs.v1.Audit/ListChains"
    )


def _read(path: Path, name: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise ConfigurationError(f"{name}={path}: {err.strerror}") from err


@asynccontextmanager
async def token_store(settings: Settings, *, migrate_first: bool) -> AsyncIterator[PgTokenStore]:
    """The token table for the command line (``acgs token ...``), on ACGS_DATABASE_URL or the
    embedded PostgreSQL ``acgs serve`` made under ACGS_DATA_DIR (never a new one: see
    :func:`acgs.lifecycle.database.existing_embedded`). ``migrate_first`` (creating a token)
    migrates the database first, so that the first token needs no running server; otherwise
    the database must already be ACGS's (its constitution is checked). Raises
    ConstitutionMismatch, ConfigurationError, psycopg.Error; closes all on exit."""
    conninfo, stop_database = await open_database(settings, create=False)
    try:
        if migrate_first:
            await migrate(conninfo, constitutional_hash=settings.constitutional_hash)
        else:
            await check_constitution(conninfo, constitutional_hash=settings.constitutional_hash)
        async with AsyncConnectionPool(conninfo, min_size=1, max_size=1, open=False) as pool:
            yield PgTokenStore(pool=pool)
    finally:
        await stop_database()
