"""The audit trail's parts: journal, shipper, checkpointer, and the read side.

In start order (after the database, :mod:`acgs.lifecycle.database`): journal
recovery → the shipper (which first replays what earlier runs left
unshipped, including the journals of dead predecessors on this host; held
until the database watch has migrated and checked a database that was
unreachable at start) → the checkpointer, which signs the chain's head every
ACGS_AUDIT_CHECKPOINT_S with ACGS_AUDIT_SIGNING_KEY. Stopped in reverse after
the gRPC server stopped: the final checkpoint, the journal flushed, the
shipper's final attempt, the journal closed (its directory lock released
last, so no other server adopts it mid-ship), then the pool and the database.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from acgs.adapters.audit_signing import CheckpointSigner, TrustedKeys, load_public_keys
from acgs.adapters.journal import Journal, adopt_orphans
from acgs.adapters.pg_audit import Shipper
from acgs.adapters.pg_audit_queries import AuditQueries
from acgs.adapters.pg_event_chain import AdminChainCheckpoints, sealer
from acgs.adapters.pg_migrations import check_constitution
from acgs.adapters.projectors.registry import projectors
from acgs.config import Settings
from acgs.errors import ConfigurationError
from acgs.lifecycle.database import Database, open_database
from acgs.lifecycle.offline import UNREACHABLE
from acgs.lifecycle.supervisor import Step, Supervisor
from acgs.service_layer.checkpointer import Checkpointer

logger = logging.getLogger("acgs.lifecycle")

_MAX_SEGMENT = 64 * 1024 * 1024


@dataclass
class AuditTrail:
    """The wired audit trail: ``journal`` is the AuditSink, ``queries`` the read side."""

    journal: Journal
    shipper: Shipper
    queries: AuditQueries
    database: Database
    checkpointer: Checkpointer


async def build_audit(
    settings: Settings, parts: Supervisor, database: Database, *,
    on_shipped: Callable[[int, float], None] | None = None,
    on_checkpoint: Callable[[bool], None] | None = None,
) -> AuditTrail:
    """Recover the journal and add the trail's parts; see the module docstring.

    Raises ConfigurationError (journal owned by another process, bad signing key).
    """
    journal = _journal(settings)
    await asyncio.to_thread(journal.open)
    parts.step("journal", stop=lambda: asyncio.to_thread(journal.close))
    root = settings.data_dir / "journal"
    orphans = await asyncio.to_thread(adopt_orphans, root, exclude=settings.instance_id)
    shipper = Shipper(journal=journal, conninfo=database.conninfo,
                      batch=settings.audit_ship_batch, orphans=orphans, on_shipped=on_shipped,
                      projectors=projectors(
                          idempotency_window_s=settings.idempotency_window_s,
                          group_s=settings.escalation_group_s),
                      stall_s=settings.audit_ship_stall_s)
    signer = signing_key(settings)
    shipper.seal = sealer(signer, signer_id=settings.instance_id,
                          constitutional_hash=settings.constitutional_hash)
    # nothing ships to a database before it is migrated and its constitution checked
    parts.thread("shipper", shipper, held=database.offline)
    parts.step("journal-flush", stop=_flush(journal))
    checkpointer = Checkpointer(journal=journal, signer=signer, instance_id=settings.instance_id,
                                constitutional_hash=settings.constitutional_hash,
                                interval_s=settings.audit_checkpoint_s, on_result=on_checkpoint)
    loop = asyncio.get_running_loop()
    shipper.attest = lambda seqs: asyncio.run_coroutine_threadsafe(
        checkpointer.attest(seqs), loop).result(timeout=30)
    checkpoints(parts, checkpointer)
    if checkpointer.interval_s > 0:  # the admin chain, signed like this server's own
        admin = AdminChainCheckpoints(pool=database.pool, signer=signer,
                                      instance_id=settings.instance_id,
                                      constitutional_hash=settings.constitutional_hash)
        parts.every("admin-chain-checkpoints", admin.round,
                    interval_s=checkpointer.interval_s, held=database.offline,
                    expected=UNREACHABLE)
    logger.info("audit journal %s at seq %d, %d records to ship (%d adopted journals)",
                journal.directory, journal.last_seq, shipper.backlog_records, len(orphans))
    queries = AuditQueries(pool=database.pool, keys=trusted_keys(settings, signer))
    return AuditTrail(journal=journal, shipper=shipper, queries=queries, database=database,
                      checkpointer=checkpointer)


def checkpoints(parts: Supervisor, checkpointer: Checkpointer) -> None:
    """The checkpointer's part: a round every ``interval_s`` (none when 0), let finish at
    stop (never cancelled mid-append), then the final checkpoint."""
    if checkpointer.interval_s > 0:
        parts.every("checkpointer", checkpointer.attempt, interval_s=checkpointer.interval_s,
                    cancel=False, stop=checkpointer.attempt)
    else:
        parts.step("checkpointer", stop=checkpointer.attempt)


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


def _flush(journal: Journal) -> Step:
    async def flush() -> None:
        if not await asyncio.to_thread(journal.flush):
            logger.error("audit journal did not flush; unsynced records stay queued")

    return flush


def _journal(settings: Settings) -> Journal:
    return Journal(
        directory=settings.data_dir / "journal" / settings.instance_id,
        instance_id=settings.instance_id,
        fsync_interval_ms=settings.audit_fsync_interval_ms,
        max_unshipped_bytes=settings.audit_journal_max_bytes,
        segment_bytes=min(_MAX_SEGMENT, max(64 * 1024, settings.audit_journal_max_bytes // 8)),
        mask_fields=settings.audit_mask_fields,
    )
