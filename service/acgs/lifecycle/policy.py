"""The policy lifecycle's parts (after the escalations: automatic rollbacks open incidents).

Policy versions live in the audit trail's database, so the lifecycle exists
only with the audit trail. At start, before the server reports SERVING: a
database without a desired revision gets the policy of ``ACGS_POLICY_DIR``
(already active in the engine) stored and made desired; then the server
catches up with the desired revision (a server that was down during an
activation serves the new version from its first answer); with trusted keys the
catch-up verifies the desired revision's stored signature even when the engine
already holds it (the seed), and a start it does not verify is refused. Then the
reconciler runs (see :mod:`acgs.service_layer.policy_sync`). On stop the
server leaves the fleet as soon as it stops serving. Every version the server
activates (or serves at start) is kept as the local snapshot; a start while
the database is unreachable serves that snapshot and holds all of the above
until the database returns (see :mod:`acgs.lifecycle.offline`).

Parts, in start order: ``policy-seed``, ``policy-catch-up``,
``policy-snapshot`` (start steps), ``shadow`` (the shadow evaluator's batches)
and ``policy-sync`` (the reconciler's rounds, every ACGS_POLICY_SYNC_S or when
an activation is notified); the last two stop as soon as the server stops
serving (the server then leaves the fleet).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from acgs.adapters.pg_notify import PgBell
from acgs.adapters.pg_policies import CHANNEL, PgPolicyStore
from acgs.adapters.pg_shadow import PgShadowStore
from acgs.adapters.policy_checker import SubprocessPolicyChecker
from acgs.adapters.policy_signatures import Ed25519Verifier
from acgs.adapters.rego_source import PolicyBundle, bundle_from_parts
from acgs.adapters.regopy_engine import RegopyEngine
from acgs.config import Settings
from acgs.domain.model import Caller
from acgs.domain.policy_version import (
    SIGNATURE_FILE,
    CheckedPolicy,
    PolicyVersion,
    content_digest,
)
from acgs.entrypoints.callers import CallerResolver
from acgs.entrypoints.policy_admin_servicer import PolicyAdminServicer
from acgs.errors import (
    BadSignature,
    ConfigurationError,
    NotFound,
    PolicyError,
    SnapshotInvalid,
    Unavailable,
)
from acgs.lifecycle.audit import AuditTrail
from acgs.lifecycle.offline import UNREACHABLE
from acgs.lifecycle.supervisor import Supervisor
from acgs.service_layer.policy_admin import PolicyAdminService
from acgs.service_layer.policy_replay import PolicyReplayer
from acgs.service_layer.policy_shadow import ShadowEvaluator, ShadowTelemetry
from acgs.service_layer.policy_shadow_fleet import ShadowAdmin, ShadowSync
from acgs.service_layer.policy_sync import PolicySync
from acgs.service_layer.policy_watch import (
    AutoRollback,
    Incidents,
    PolicyWatch,
    RollbackTelemetry,
    RollbackWatch,
)
from acgs.v1 import policy_admin_pb2

logger = logging.getLogger("acgs.lifecycle")


class LifecycleTelemetry(ShadowTelemetry, RollbackTelemetry, Protocol):
    """What the lifecycle counts (:class:`acgs.metrics.Metrics`)."""


@dataclass
class PolicyLifecycle:
    """The wired lifecycle: the PolicyAdmin use cases, this server's reconciler, its hooks."""

    service: PolicyAdminService
    sync: PolicySync
    store: PgPolicyStore
    replayer: PolicyReplayer
    shadow: ShadowAdmin
    observer: PolicyWatch
    """The DecisionService's observer: auto-rollback watch and shadow sampling."""
    bell: PgBell
    """Rung by the server's listener when an activation is notified."""

    def services(self, callers: CallerResolver) -> list[tuple[Any, object]]:
        """acgs.v1.PolicyAdmin for the gRPC server."""
        servicer = PolicyAdminServicer(service=self.service, callers=callers,
                                       replayer=self.replayer, shadow=self.shadow)
        return [(policy_admin_pb2.DESCRIPTOR.services_by_name["PolicyAdmin"], servicer)]


def stored_bundle(version: PolicyVersion, *, constitutional_hash: str) -> PolicyBundle:
    """The checked bundle of a stored version (compiles: call off the event loop).

    Raises PolicyError (also when the content no longer matches its revision),
    UnsupportedBuiltin or ConstitutionMismatch.
    """
    try:
        manifest = json.loads(version.manifest_json)
    except ValueError as err:
        raise PolicyError(f"stored version {version.revision}: bad manifest: {err}") from err
    bundle = bundle_from_parts(modules=dict(version.modules), data_json=version.data_json,
                               manifest=manifest, constitutional_hash=constitutional_hash)
    if bundle.revision != version.revision:
        raise PolicyError(f"stored version {version.revision} has content of {bundle.revision}")
    return bundle


async def build_policy_lifecycle(
    settings: Settings, parts: Supervisor, *, trail: AuditTrail, engine: RegopyEngine,
    address: Callable[[], str], serving: Callable[[], bool],
    on_fresh: Callable[[bool], Awaitable[None]],
    telemetry: LifecycleTelemetry, incidents: Incidents | None = None,
) -> PolicyLifecycle:
    """Wire the lifecycle on the audit trail's database; see the module docstring.

    Raises ConfigurationError for unreadable trusted keys.
    """
    verifier = (Ed25519Verifier.from_files(settings.policy_trusted_keys)
                if settings.policy_trusted_keys else None)
    database = trail.database
    store = PgPolicyStore(pool=database.pool)
    shadow_store = PgShadowStore(pool=database.pool)
    bell = PgBell(conninfo=database.conninfo, channel=CHANNEL)
    rollback = AutoRollback(store=store, instance_id=settings.instance_id,
                            telemetry=telemetry, incidents=incidents)
    watch = rollback.watch = RollbackWatch(
        share=settings.policy_rollback_failsafe_share,
        window_s=settings.policy_rollback_window_s,
        min_decisions=settings.policy_rollback_min_decisions, on_trip=rollback)

    def verify(version: PolicyVersion) -> None:  # BadSignature: not served here
        if verifier is not None:
            verifier.verify(digest=version.digest(), signature=version.signature)

    async def activate(version: PolicyVersion) -> None:
        verify(version)
        bundle = await asyncio.to_thread(stored_bundle, version,
                                         constitutional_hash=settings.constitutional_hash)
        await engine.activate(bundle)
        watch.activated(bundle.revision)
        await _keep(trail, version)

    if database.offline:
        await _serve_snapshot(settings, trail, engine, verifier)

    service = PolicyAdminService(
        checker=SubprocessPolicyChecker(constitutional_hash=settings.constitutional_hash,
                                        concurrency=settings.policy_checkers),
        store=store, verifier=verifier, live_within_s=settings.policy_live_s)

    async def candidate(version: PolicyVersion) -> RegopyEngine:
        bundle = await asyncio.to_thread(stored_bundle, version,
                                         constitutional_hash=settings.constitutional_hash)
        private = RegopyEngine(workers=1, constitutional_hash=settings.constitutional_hash)
        try:
            await private.activate(bundle)
        except BaseException:
            private.close()
            raise
        return private

    replayer = PolicyReplayer(records=trail.queries.export, store=store, engine_for=candidate)
    evaluator = ShadowEvaluator(instance_id=settings.instance_id, telemetry=telemetry,
                                mask=settings.audit_mask_fields,
                                queue_size=settings.policy_shadow_queue)
    shadow_sync = ShadowSync(store=shadow_store, versions=store, evaluator=evaluator,
                             engine_for=candidate)
    sync = PolicySync(store=store, instance_id=settings.instance_id, activate=activate,
                      active_revision=lambda: engine.policy.revision, address=address,
                      serving=serving, on_fresh=on_fresh, bell=bell,
                      interval_s=settings.policy_sync_s, max_lag_s=settings.policy_max_lag_s,
                      rounds=[shadow_sync.round],
                      verify=verify if verifier is not None else None)

    async def seed() -> None:
        await seed_fleet(settings, store=store, bundle=engine.bundle, verifier=verifier)

    async def keep_active() -> None:  # the version served when no activation was needed
        try:
            await _keep(trail, await store.get_version(engine.policy.revision))
        except NotFound as err:  # not one of the fleet's versions: nothing to keep
            logger.warning("policy snapshot not written: %s", err)

    held = database.offline
    parts.step("policy-seed", start=seed, held=held)
    parts.step("policy-catch-up", start=sync.catch_up, held=held)
    parts.step("policy-snapshot", start=keep_active, held=held)
    shadowing(parts, evaluator, held=held)
    parts.every("policy-sync", sync.reconcile, interval_s=settings.policy_sync_s, first="now",
                start=sync.heartbeat, wake=sync.next_ring, stop=sync.leave, held=held,
                serving=True, expected=UNREACHABLE)
    return PolicyLifecycle(service=service, sync=sync, store=store, replayer=replayer,
                           shadow=ShadowAdmin(store=shadow_store, versions=store),
                           observer=PolicyWatch(rollback=watch, shadow=evaluator), bell=bell)


def shadowing(parts: Supervisor, evaluator: ShadowEvaluator, *, held: bool = False) -> None:
    """The shadow's part: batches back to back while serving; then the candidate is closed."""
    parts.every("shadow", evaluator.round, interval_s=0, first="now", stop=evaluator.stop,
                held=held, serving=True)


async def _keep(trail: AuditTrail, version: PolicyVersion) -> None:
    """Keep ``version`` as the local snapshot (a failed write is logged: serving goes on)."""
    try:
        await asyncio.to_thread(trail.database.snapshots.save_policy, version)
    except OSError as err:
        logger.error("policy snapshot of %s not written: %s", version.revision, err)


async def _serve_snapshot(settings: Settings, trail: AuditTrail, engine: RegopyEngine,
                          verifier: Ed25519Verifier | None) -> None:
    """Database unreachable at start: serve the kept version (verified: its digest, and its
    signature when trusted keys are set). Raises SnapshotInvalid or Unavailable."""
    verify = ((lambda d, sig: verifier.verify(digest=d, signature=sig))
              if verifier is not None else None)
    try:
        version = await asyncio.to_thread(trail.database.snapshots.load_policy, verify=verify)
    except BadSignature as err:
        raise SnapshotInvalid(f"{trail.database.snapshots.policy_path}: {err}") from err
    if version is None:
        raise Unavailable(f"the database is unreachable and there is no policy snapshot "
                          f"({trail.database.snapshots.policy_path})")
    if version.revision != engine.policy.revision:
        bundle = await asyncio.to_thread(stored_bundle, version,
                                         constitutional_hash=settings.constitutional_hash)
        await engine.activate(bundle)
    logger.warning("serving the policy snapshot %s until the database returns", version.revision)


def _directory_signature(settings: Settings) -> str:
    """ACGS_POLICY_DIR's ``policy.sig`` ("" when there is none)."""
    sig_path = settings.policy_dir / SIGNATURE_FILE
    return sig_path.read_text("ascii").strip() if sig_path.exists() else ""


def verify_policy_dir(settings: Settings, bundle: PolicyBundle) -> None:
    """Without the audit trail there is no fleet and no stored version: the server serves
    ACGS_POLICY_DIR for its whole life. Under ACGS_POLICY_TRUSTED_KEYS it must be signed
    (its ``policy.sig`` over the content digest) by a trusted key, like any version served;
    ConfigurationError otherwise."""
    if not settings.policy_trusted_keys:
        return
    verifier = Ed25519Verifier.from_files(settings.policy_trusted_keys)
    try:
        verifier.verify(digest=content_digest(bundle.modules, bundle.data_json,
                                              bundle.manifest_json),
                        signature=_directory_signature(settings))
    except BadSignature as err:
        raise ConfigurationError(
            f"ACGS_POLICY_DIR={settings.policy_dir} (revision {bundle.revision}) cannot be "
            f"served under ACGS_POLICY_TRUSTED_KEYS: {err} (sign it: acgs policy sign)"
        ) from err


async def seed_fleet(settings: Settings, *, store: PgPolicyStore, bundle: PolicyBundle,
                     verifier: Ed25519Verifier | None) -> None:
    """First start of a fleet: store ``bundle`` (ACGS_POLICY_DIR) and make it desired.

    When a desired revision exists nothing changes (the catch-up then serves it, verifying
    its stored signature under trusted keys even when it is this bundle), but for one case:
    with trusted keys, a version of this bundle's revision stored unsigned takes the
    directory's ``policy.sig`` when it verifies. Raises BadSignature when
    trusted keys are configured and the directory's ``policy.sig`` is missing
    or wrong.
    """
    await store.forget_instances(older_than=dt.timedelta(hours=1))  # long-dead servers
    state = await store.state()
    digest = content_digest(bundle.modules, bundle.data_json, bundle.manifest_json)
    signature = _directory_signature(settings)
    server = Caller(id=settings.instance_id, role="system")
    if state is not None:
        if state.desired_revision != bundle.revision:
            logger.warning("%s (revision %s) is not the fleet's policy: serving the desired "
                           "revision %s; `acgs policy push` and `activate` it to change that",
                           settings.policy_dir, bundle.revision, state.desired_revision)
        if verifier is not None and signature:
            await _sign_stored(settings, store, bundle.revision, digest=digest,
                               signature=signature, verifier=verifier, caller=server)
        return
    if verifier is not None:
        verifier.verify(digest=digest, signature=signature)
    checked = CheckedPolicy(revision=bundle.revision, digest=digest, name=bundle.name,
                            version=bundle.version, modules=bundle.modules,
                            data_json=bundle.data_json, manifest_json=bundle.manifest_json,
                            tests_passed=0)
    _, created = await store.insert_version(checked, signature=signature, caller=server,
                                            message=f"seeded from {settings.policy_dir}")
    if not created and verifier is not None:  # stored before (unsigned?): sign it as above
        await _sign_stored(settings, store, bundle.revision, digest=digest,
                           signature=signature, verifier=verifier, caller=server)
    state = await store.activate(bundle.revision, caller=server, only_if_unset=True,
                                 message="the first start of the fleet")
    logger.info("fleet policy: %s desired (generation %d)", state.desired_revision,
                state.generation)


async def _sign_stored(settings: Settings, store: PgPolicyStore, revision: str, *,
                       digest: str, signature: str, verifier: Ed25519Verifier,
                       caller: Caller) -> None:
    """ACGS_POLICY_DIR is signed by a trusted key and its revision is stored unsigned (a
    fleet that ran without trusted keys): the stored version takes the signature, as a push
    of the signed directory would give it (policy.version_signed, the server as actor)."""
    try:
        verifier.verify(digest=digest, signature=signature)
    except BadSignature as err:
        logger.warning("%s: %s is not used: %s", settings.policy_dir, SIGNATURE_FILE, err)
        return
    try:
        stored = await store.get_version(revision)
    except NotFound:
        return
    if stored.signature == signature:
        return
    if stored.signature:
        try:  # a stored signature that verifies stays; one that does not is replaced
            verifier.verify(digest=stored.digest(), signature=stored.signature)
            return
        except BadSignature:
            pass
    sig_path = settings.policy_dir / SIGNATURE_FILE
    _, signed = await store.attach_signature(revision, signature=signature, caller=caller,
                                             message=f"signed by {sig_path}",
                                             replacing=stored.signature)
    if signed:
        logger.warning("policy %s was stored unsigned: signed by %s", revision, sig_path)
