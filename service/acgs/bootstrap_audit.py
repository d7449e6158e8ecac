"""The audit trail's part of the composition root (called by :mod:`acgs.bootstrap`).

Order at start: database (``ACGS_DATABASE_URL``, else the embedded
PostgreSQL) → migrations and the constitution check (a database of another
constitution stops the start here; an unreachable one defers them, the
shipper's start included, to the database watch: see bootstrap_offline) →
connection pool → journal recovery →
shipper (which first replays what earlier runs left unshipped, including the
journals of dead predecessors on this host) → the checkpointer, which signs the
chain's head every ACGS_AUDIT_CHECKPOINT_S with ACGS_AUDIT_SIGNING_KEY.
Closers are returned in start order; run them in reverse after the gRPC
server stopped: final checkpoint, journal flushed,
shipper's final attempt, journal closed (its directory lock released last, so
no other server adopts it mid-ship), pool, embedded PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from psycopg_pool import AsyncConnectionPool

from acgs.adapters.audit_signing import CheckpointSigner, TrustedKeys, load_public_keys
from acgs.adapters.embedded_pg import EmbeddedPostgres
from acgs.adapters.gated_pool import GatedPool
from acgs.adapters.journal import Journal, adopt_orphans
from acgs.adapters.local_snapshot import SnapshotStore
from acgs.adapters.pg_audit import Shipper
from acgs.adapters.pg_audit_queries import AuditQueries
from acgs.adapters.pg_migrations import check_constitution, migrate
from acgs.adapters.projectors.registry import projectors
from acgs.bootstrap_offline import database_watch, prepare_database, snapshot_store
from acgs.config import Settings
from acgs.errors import ConfigurationError
from acgs.service_layer.checkpointer import Checkpointer
from acgs.service_layer.database_watch import DatabaseWatch

logger = logging.getLogger("acgs.bootstrap")

Closer = Callable[[], Awaitable[None]]
_MAX_SEGMENT = 64 * 1024 * 1024


@dataclass
class AuditTrail:
    """The wired audit trail: ``journal`` is the AuditSink, ``queries`` the read side."""

    journal: Journal
    shipper: Shipper
    queries: AuditQueries
    database: DatabaseWatch
    """Whether that database is usable yet (see bootstrap_offline); start it last."""
    snapshots: SnapshotStore
    """The local copies of the policy and token table for a start without the database."""
    closers: list[Closer] = field(default_factory=list)
    conninfo: str = ""
    """The migrated database the trail ships to (the token table lives there too)."""
    checkpointer: Checkpointer | None = None

    @property
    def offline(self) -> bool:
        """True while the database has not been migrated and checked by this process."""
        return not self.database.ready


async def build_audit(
    settings: Settings, *, on_shipped: Callable[[int, float], None] | None = None,
    on_checkpoint: Callable[[bool], None] | None = None,
) -> AuditTrail:
    """Start the audit trail's database, journal and shipper; see the module docstring.

    Raises ConstitutionMismatch(what="database"), ConfigurationError (journal
    owned by another process, changed migration), ConnectionError (embedded
    PostgreSQL did not start) or psycopg.Error (database unreachable at start).
    """
    conninfo, stop_database = await open_database(settings)
    closers: list[Closer] = [stop_database]
    snapshots = snapshot_store(settings)
    prepared = await prepare_database(settings, conninfo, snapshots)  # False: unreachable
    # A short timeout and a checked connection: an unreachable database is a
    # prompt UNAVAILABLE for audit readers, never a 30 s hang.
    pool = GatedPool(conninfo, min_size=1, max_size=4, open=False, name="acgs-audit",
                     timeout=5.0, check=AsyncConnectionPool.check_connection)
    await pool.open()
    closers.append(pool.close)
    journal = _journal(settings)
    await asyncio.to_thread(journal.open)
    root = settings.data_dir / "journal"
    orphans = await asyncio.to_thread(adopt_orphans, root, exclude=settings.instance_id)
    shipper = Shipper(journal=journal, conninfo=conninfo, batch=settings.audit_ship_batch,
                      orphans=orphans, on_shipped=on_shipped,
                      projectors=projectors(
                          idempotency_window_s=settings.idempotency_window_s,
                          group_s=settings.escalation_group_s),
                      stall_s=settings.audit_ship_stall_s)
    signer = signing_key(settings)
    checkpointer = Checkpointer(journal=journal, signer=signer, instance_id=settings.instance_id,
                                constitutional_hash=settings.constitutional_hash,
                                interval_s=settings.audit_checkpoint_s, on_result=on_checkpoint)
    loop = asyncio.get_running_loop()
    shipper.attest = lambda seqs: asyncio.run_coroutine_threadsafe(
        checkpointer.attest(seqs), loop).result(timeout=30)
    database = database_watch(settings, conninfo=conninfo, pool=pool, prepared=prepared)
    pool.gate = lambda: database.ready  # audit readers wait for the migration and its check
    if prepared:
        shipper.start()
    else:  # nothing ships to a database before it is migrated and its constitution checked
        database.defer([_async(shipper.start)])
    closers.append(lambda: asyncio.to_thread(journal.close))
    closers.append(lambda: asyncio.to_thread(shipper.stop))
    closers.append(_flush(journal))
    await checkpointer.start()
    closers.append(checkpointer.stop)  # runs first: the final checkpoint, then the flush
    logger.info("audit journal %s at seq %d, %d records to ship (%d adopted journals)",
                journal.directory, journal.last_seq, shipper.backlog_records, len(orphans))
    queries = AuditQueries(pool=pool, keys=trusted_keys(settings, signer))
    return AuditTrail(journal=journal, shipper=shipper, queries=queries,
                      closers=closers, conninfo=conninfo, database=database,
                      snapshots=snapshots, checkpointer=checkpointer)


def signing_key(settings: Settings) -> CheckpointSigner:
    """ACGS_AUDIT_SIGNING_KEY; in development, when unset, the data directory's own key.

    ConfigurationError when the file is bad, or unset in production.
    """
    if settings.audit_signing_key is not None:
        return CheckpointSigner.from_file(settings.audit_signing_key)
    if settings.is_production:
        raise ConfigurationError("ACGS_ENV=production needs ACGS_AUDIT_SIGNING_KEY (an Ed25519 "
                                 "private key, PEM, kept where PostgreSQL cannot read it)")
    return CheckpointSigner.development(settings.data_dir)


def trusted_keys(settings: Settings, signer: CheckpointSigner | None) -> TrustedKeys:
    """The keys VerifyChain trusts: ACGS_AUDIT_TRUSTED_KEYS and this server's own key.

    Without ACGS_AUDIT_TRUSTED_KEYS other instances' checkpoints are checked
    against the key they carry (self-asserted), and the reports say so.
    """
    keys = load_public_keys(settings.audit_trusted_keys, setting="ACGS_AUDIT_TRUSTED_KEYS")
    source = "ACGS_AUDIT_TRUSTED_KEYS" if keys else "this server's own key"
    if signer is not None:
        keys.append(signer.public_key)
    return TrustedKeys(keys=keys, self_asserted=not settings.audit_trusted_keys, source=source,
                       own_instance=settings.instance_id if signer is not None else "")


async def open_database(settings: Settings) -> tuple[str, Closer]:
    """The database's conninfo (ACGS_DATABASE_URL, else the embedded PostgreSQL) and its closer.

    Raises ConnectionError when the embedded PostgreSQL does not start.
    """
    if settings.database_url is not None:
        return settings.database_url, _nothing
    embedded = EmbeddedPostgres(directory=settings.data_dir / "pg")
    conninfo = await asyncio.to_thread(embedded.start)
    return conninfo, lambda: asyncio.to_thread(embedded.stop)


@asynccontextmanager
async def audit_queries(settings: Settings) -> AsyncIterator[AuditQueries]:
    """The audit trail's read side for the command line (``acgs audit ...``).

    Checks the database's constitution first (ConstitutionMismatch, or
    ConfigurationError for an unmigrated database); closes everything on exit.
    """
    conninfo, stop_database = await open_database(settings)
    try:
        await check_constitution(conninfo, constitutional_hash=settings.constitutional_hash)
        async with AsyncConnectionPool(conninfo, min_size=1, max_size=2, open=False) as pool:
            yield AuditQueries(pool=pool, keys=trusted_keys(settings, None))
    finally:
        await stop_database()


async def _nothing() -> None:
    return None


def _flush(journal: Journal) -> Closer:
    async def flush() -> None:
        if not await asyncio.to_thread(journal.flush):
            logger.error("audit journal did not flush; unsynced records stay queued")

    return flush


def _async(fn: Callable[[], None]) -> Closer:
    async def call() -> None:
        fn()

    return call


def _journal(settings: Settings) -> Journal:
    return Journal(
        directory=settings.data_dir / "journal" / settings.instance_id,
        instance_id=settings.instance_id,
        fsync_interval_ms=settings.audit_fsync_interval_ms,
        max_unshipped_bytes=settings.audit_journal_max_bytes,
        segment_bytes=min(_MAX_SEGMENT, max(64 * 1024, settings.audit_journal_max_bytes // 8)),
        mask_fields=settings.audit_mask_fields,
    )


async def migrate_database(settings: Settings) -> list[str]:
    """Apply the migrations to the configured (or embedded) database; return what was applied."""
    conninfo, stop_database = await open_database(settings)
    try:
        return await migrate(conninfo, constitutional_hash=settings.constitutional_hash)
    finally:
        await stop_database()
