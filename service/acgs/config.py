"""Settings: one frozen object, built once from the ``ACGS_*`` environment.

Only :func:`Settings.from_env` reads the environment; everything else receives
the object (or the values it needs) from :mod:`acgs.lifecycle`.
"""

from __future__ import annotations

import math
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from acgs import CONSTITUTIONAL_HASH
from acgs.errors import ConfigurationError


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as err:
        raise ConfigurationError(f"{name}={raw!r} is not an integer") from err
    if value < minimum:
        raise ConfigurationError(f"{name}={value} is below its minimum {minimum}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as err:
        raise ConfigurationError(f"{name}={raw!r} is not a number") from err
    if not math.isfinite(value):
        raise ConfigurationError(f"{name}={raw!r} is not a finite number")
    if value < 0:
        raise ConfigurationError(f"{name}={value} must not be negative")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name}={raw!r} is not a boolean (true/false)")


def _path(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name)
    return Path(raw) if raw else None


RateLimits = tuple[tuple[str, float, float], ...]
"""(role, calls per second, burst) of every rate-limited role."""


def _rates(env: Mapping[str, str], default: RateLimits) -> RateLimits:
    """``ACGS_RATE_LIMIT_<ROLE>=rps:burst`` (burst defaults to 2 x rps; ``off`` or 0: none)."""
    out = []
    for role, per_s, burst in default:
        name, raw = f"ACGS_RATE_LIMIT_{role.upper()}", env.get(f"ACGS_RATE_LIMIT_{role.upper()}")
        if raw is not None and raw.strip():
            if raw.strip().lower() in ("off", "0"):
                continue
            try:
                rps, _, b = raw.partition(":")
                per_s, burst = float(rps), float(b) if b else 2 * float(rps)
            except ValueError as err:
                raise ConfigurationError(f"{name}={raw!r} is not rps[:burst]") from err
            if not (per_s > 0 and burst >= 1):  # also refuses nan
                raise ConfigurationError(f"{name}={raw!r}: need rps > 0 and burst >= 1")
        out.append((role, per_s, burst))
    return tuple(out)


def _list(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = env.get(name)
    if raw is None:
        return default
    return tuple(item.strip() for item in raw.split(",") if item.strip())


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of an ACGS-2 server. See the README's configuration table."""

    grpc_addr: str = "127.0.0.1:50051"
    metrics_addr: str = "127.0.0.1:9464"
    environment: str = "development"
    instance_id: str = field(
        default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    )
    constitutional_hash: str = CONSTITUTIONAL_HASH
    data_dir: Path = Path(".acgs")
    policy_dir: Path = Path("policy")
    database_url: str | None = None
    redis_url: str | None = None
    engine_workers: int = 2
    eval_timeout_ms: int = 250
    max_message_bytes: int = 1024 * 1024
    max_batch: int = 1000
    max_input_depth: int = 32
    # Request strings, in characters: identifiers (several are indexed in PostgreSQL, whose
    # btree entries hold at most 2704 bytes: 600 four-byte characters and the rest of the
    # key fit) and free text (Struct string values, comments).
    max_id_chars: int = 256
    max_text_chars: int = 65536
    # principal.roles entries: regopy's evaluation of the constitution is quadratic in them
    # (each built-in call copies a frame that grows with the input), so 6,000 roles held an
    # engine thread for 35 s, past any timeout.
    max_roles: int = 64
    # Values in a request's Structs (each object entry, list item and scalar), and in
    # Evaluate's input_json: building the engine's input holds the GIL (~4 µs a value), and
    # the constitution's cost grows with principal.roles x action.attributes.
    max_input_nodes: int = 1000
    grace_period_s: float = 10.0
    drain_delay_s: float = 0.0
    # Audit trail
    audit_enabled: bool = True
    audit_fsync_interval_ms: float = 0.0
    audit_journal_max_bytes: int = 1024 * 1024 * 1024
    audit_mask_fields: tuple[str, ...] = ()
    audit_ship_batch: int = 1000
    audit_ship_stall_s: float = 30.0
    # Signed checkpoints of the audit chain (a key PostgreSQL never holds)
    audit_signing_key: Path | None = None
    audit_checkpoint_s: float = 10.0
    audit_trusted_keys: tuple[Path, ...] = ()
    # Cache
    cache_local_size: int = 100_000
    # Keys carry the revisions, so a TTL only retires idle entries; 60 s cost ~10 points of
    # hit rate at 100 rps in bench/cache_bench.py.
    cache_local_ttl_s: float = 300.0
    cache_redis_ttl_s: float = 300.0
    cache_redis_timeout_ms: float = 5.0
    cache_effects: tuple[str, ...] = ("ALLOW", "DENY")
    # Escalations
    escalation_ttl_s: float = 3600.0
    escalation_required_approvals: int = 1
    escalation_sweep_s: float = 5.0
    escalation_group_s: float = 300.0
    # New escalations one caller may open on one server per sliding window (0: no cap); past
    # it, decisions are DENY escalation_limit (grouping cannot stop a caller that varies
    # the resource of each request).
    escalation_caller_limit: int = 100
    escalation_caller_window_s: float = 300.0
    # Idempotency of request_id
    idempotency_window_s: float = 600.0
    idempotency_max_entries: int = 100_000
    # Policy lifecycle across the fleet
    policy_sync_s: float = 1.0
    policy_max_lag_s: float = 10.0
    policy_live_s: float = 3.0
    policy_trusted_keys: tuple[Path, ...] = ()
    # Auto-rollback of an activation that fails safe on too many decisions (share 0: off)
    policy_rollback_failsafe_share: float = 0.5
    policy_rollback_window_s: float = 30.0
    policy_rollback_min_decisions: int = 20
    # Shadow evaluation of a candidate version: inputs waiting for it (more are dropped)
    policy_shadow_queue: int = 1000
    policy_checkers: int = 2  # checker processes at once; more ValidatePolicy calls are refused
    # Callers: bearer tokens, TLS, rate limits
    auth: str = "token"
    allow_insecure: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    tls_client_map: Path | None = None
    token_refresh_s: float = 1.0
    # Starting and running while PostgreSQL is unreachable (lifecycle.offline)
    database_retry_s: float = 2.0
    # The connection budget (lifecycle.database): one pool shared by every part
    db_pool_min: int = 1
    db_pool_max: int = 8
    rate_limits: RateLimits = (("agent", 2000.0, 4000.0), ("admin", 50.0, 100.0),
                               ("auditor", 100.0, 200.0))

    @property
    def is_production(self) -> bool:
        return self.environment == "production"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build the settings from ``ACGS_*`` variables; raise ConfigurationError if bad."""
        e = os.environ if env is None else env
        d = cls()
        environment = e.get("ACGS_ENV", d.environment)
        if environment not in ("development", "production", "test"):
            raise ConfigurationError(
                f"ACGS_ENV={environment!r}: expected development, production or test"
            )
        pool_min, pool_max = _pool_sizes(e, d.db_pool_min, d.db_pool_max)
        caller_limit, caller_window_s = _escalation_cap(e, d.escalation_caller_limit,
                                                        d.escalation_caller_window_s)
        return cls(
            grpc_addr=e.get("ACGS_GRPC_ADDR", d.grpc_addr),
            metrics_addr=e.get("ACGS_METRICS_ADDR", d.metrics_addr),
            environment=environment,
            instance_id=e.get("ACGS_INSTANCE_ID") or d.instance_id,
            data_dir=Path(e.get("ACGS_DATA_DIR", str(d.data_dir))),
            policy_dir=Path(e.get("ACGS_POLICY_DIR", str(d.policy_dir))),
            database_url=e.get("ACGS_DATABASE_URL") or None,
            redis_url=e.get("ACGS_REDIS_URL") or None,
            engine_workers=_int(e, "ACGS_ENGINE_WORKERS", usable_cpus(), minimum=1),
            eval_timeout_ms=_int(e, "ACGS_EVAL_TIMEOUT_MS", d.eval_timeout_ms, minimum=1),
            max_message_bytes=_int(e, "ACGS_MAX_MESSAGE_BYTES", d.max_message_bytes, minimum=1024),
            max_batch=_int(e, "ACGS_MAX_BATCH", d.max_batch, minimum=1),
            max_input_depth=_int(e, "ACGS_MAX_INPUT_DEPTH", d.max_input_depth, minimum=2),
            max_id_chars=_at_most(_int(e, "ACGS_MAX_ID_CHARS", d.max_id_chars, minimum=16),
                                  "ACGS_MAX_ID_CHARS", MAX_INDEXED_CHARS),
            max_text_chars=_int(e, "ACGS_MAX_TEXT_CHARS", d.max_text_chars, minimum=256),
            max_roles=_int(e, "ACGS_MAX_ROLES", d.max_roles, minimum=1),
            max_input_nodes=_int(e, "ACGS_MAX_INPUT_NODES", d.max_input_nodes, minimum=16),
            grace_period_s=_float(e, "ACGS_GRACE_PERIOD_S", d.grace_period_s),
            drain_delay_s=_float(e, "ACGS_DRAIN_DELAY_S", d.drain_delay_s),
            audit_enabled=_bool(e, "ACGS_AUDIT_ENABLED", d.audit_enabled),
            audit_fsync_interval_ms=_float(
                e, "ACGS_AUDIT_FSYNC_INTERVAL_MS", d.audit_fsync_interval_ms
            ),
            audit_journal_max_bytes=_int(
                e, "ACGS_AUDIT_JOURNAL_MAX_BYTES", d.audit_journal_max_bytes, minimum=4096
            ),
            audit_mask_fields=_list(e, "ACGS_AUDIT_MASK_FIELDS", d.audit_mask_fields),
            audit_ship_batch=_int(e, "ACGS_AUDIT_SHIP_BATCH", d.audit_ship_batch, minimum=1),
            audit_ship_stall_s=_float(e, "ACGS_AUDIT_SHIP_STALL_S", d.audit_ship_stall_s),
            audit_signing_key=_path(e, "ACGS_AUDIT_SIGNING_KEY"),
            audit_checkpoint_s=_float(e, "ACGS_AUDIT_CHECKPOINT_S", d.audit_checkpoint_s),
            audit_trusted_keys=tuple(Path(p) for p in _list(e, "ACGS_AUDIT_TRUSTED_KEYS", ())),
            cache_local_size=_int(e, "ACGS_CACHE_LOCAL_SIZE", d.cache_local_size),
            cache_local_ttl_s=_float(e, "ACGS_CACHE_LOCAL_TTL_S", d.cache_local_ttl_s),
            cache_redis_ttl_s=_float(e, "ACGS_CACHE_REDIS_TTL_S", d.cache_redis_ttl_s),
            cache_redis_timeout_ms=_float(
                e, "ACGS_CACHE_REDIS_TIMEOUT_MS", d.cache_redis_timeout_ms
            ),
            cache_effects=_list(e, "ACGS_CACHE_EFFECTS", d.cache_effects),
            escalation_ttl_s=_float(e, "ACGS_ESCALATION_TTL_S", d.escalation_ttl_s),
            escalation_required_approvals=_int(e, "ACGS_ESCALATION_REQUIRED_APPROVALS",
                                               d.escalation_required_approvals, minimum=1),
            escalation_sweep_s=_float(e, "ACGS_ESCALATION_SWEEP_S", d.escalation_sweep_s),
            escalation_group_s=_float(e, "ACGS_ESCALATION_GROUP_S", d.escalation_group_s),
            escalation_caller_limit=caller_limit,
            escalation_caller_window_s=caller_window_s,
            idempotency_window_s=_float(e, "ACGS_IDEMPOTENCY_WINDOW_S", d.idempotency_window_s),
            idempotency_max_entries=_int(e, "ACGS_IDEMPOTENCY_MAX_ENTRIES",
                                         d.idempotency_max_entries, minimum=1),
            policy_sync_s=_float(e, "ACGS_POLICY_SYNC_S", d.policy_sync_s),
            policy_max_lag_s=_float(e, "ACGS_POLICY_MAX_LAG_S", d.policy_max_lag_s),
            policy_live_s=_float(e, "ACGS_POLICY_LIVE_S", d.policy_live_s),
            policy_trusted_keys=tuple(Path(p) for p in _list(e, "ACGS_POLICY_TRUSTED_KEYS", ())),
            policy_rollback_failsafe_share=_share(e, "ACGS_POLICY_ROLLBACK_FAILSAFE_SHARE",
                                                  d.policy_rollback_failsafe_share),
            policy_rollback_window_s=_float(e, "ACGS_POLICY_ROLLBACK_WINDOW_S",
                                            d.policy_rollback_window_s),
            policy_rollback_min_decisions=_int(e, "ACGS_POLICY_ROLLBACK_MIN_DECISIONS",
                                               d.policy_rollback_min_decisions, minimum=1),
            policy_shadow_queue=_int(e, "ACGS_POLICY_SHADOW_QUEUE", d.policy_shadow_queue,
                                     minimum=1),
            policy_checkers=_int(e, "ACGS_POLICY_CHECKERS", d.policy_checkers, minimum=1),
            auth=_auth(e.get("ACGS_AUTH") or d.auth),
            allow_insecure=_bool(e, "ACGS_ALLOW_INSECURE", d.allow_insecure),
            tls_cert=_path(e, "ACGS_TLS_CERT"),
            tls_key=_path(e, "ACGS_TLS_KEY"),
            tls_client_ca=_path(e, "ACGS_TLS_CLIENT_CA"),
            tls_client_map=_path(e, "ACGS_TLS_CLIENT_MAP"),
            token_refresh_s=_float(e, "ACGS_TOKEN_REFRESH_S", d.token_refresh_s),
            rate_limits=_rates(e, d.rate_limits),
            database_retry_s=_float(e, "ACGS_DATABASE_RETRY_S", d.database_retry_s),
            db_pool_min=pool_min,
            db_pool_max=pool_max,
        )


def _pool_sizes(env: Mapping[str, str], least: int, most: int) -> tuple[int, int]:
    """ACGS_DB_POOL_MIN and ACGS_DB_POOL_MAX (lifecycle.database: the connection budget)."""
    low = _int(env, "ACGS_DB_POOL_MIN", least, minimum=0)
    high = _int(env, "ACGS_DB_POOL_MAX", most, minimum=1)
    if high < low:
        raise ConfigurationError(f"ACGS_DB_POOL_MAX={high} is below ACGS_DB_POOL_MIN={low}")
    return low, high


def _escalation_cap(env: Mapping[str, str], limit: int, window_s: float) -> tuple[int, float]:
    """ACGS_ESCALATION_CALLER_LIMIT (0: no cap) and ACGS_ESCALATION_CALLER_WINDOW_S; a cap
    needs a window: a window of 0 would count nothing and so silently lift the cap."""
    limit = _int(env, "ACGS_ESCALATION_CALLER_LIMIT", limit, minimum=0)
    window_s = _float(env, "ACGS_ESCALATION_CALLER_WINDOW_S", window_s)
    if limit > 0 and window_s <= 0:
        raise ConfigurationError(
            f"ACGS_ESCALATION_CALLER_WINDOW_S={window_s} must be above 0 while "
            f"ACGS_ESCALATION_CALLER_LIMIT={limit} (set the limit to 0 for no cap)")
    return limit, window_s


def _share(env: Mapping[str, str], name: str, default: float) -> float:
    value = _float(env, name, default)
    if value >= 1:
        raise ConfigurationError(f"{name}={value} must be below 1 (0 turns it off)")
    return value


MAX_INDEXED_CHARS = 600
"""The most characters an indexed request string may be allowed: 4 bytes each in UTF-8,
plus the rest of an audit index key, stay under PostgreSQL's btree entry bound (2704 B)."""


def _at_most(value: int, name: str, maximum: int) -> int:
    if value > maximum:
        raise ConfigurationError(f"{name}={value} is above its maximum {maximum}: PostgreSQL "
                                 "could not index such a string, so no record holding one "
                                 "could be shipped")
    return value


def _auth(value: str) -> str:
    if value not in ("token", "none"):
        raise ConfigurationError(f"ACGS_AUTH={value!r}: expected token or none")
    return value


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a container's or taskset's share),
    not every CPU of the machine: more engine threads than CPUs only switch more."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform
        return os.cpu_count() or 2
