"""acgs.metrics: a real Metrics server on a free port, scraped over HTTP."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from acgs import CONSTITUTIONAL_HASH
from acgs.domain.model import Decision, Effect, Severity, Violation
from acgs.metrics import LATENCY_BUCKETS_S, Metrics, NullTelemetry
from acgs.service_layer.ports import Telemetry
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

EXPECTED_FAMILIES = {
    # name in the exposition: type, label names (besides le)
    "acgs_decisions": ("counter", {"effect", "cached", "fail_safe"}),
    "acgs_decision_duration_seconds": ("histogram", {"cached"}),
    "acgs_engine_evaluation_duration_seconds": ("histogram", set()),
    "acgs_cache_hits": ("counter", {"tier"}),
    "acgs_cache_misses": ("counter", {"tier"}),
    "acgs_cache_redis_errors": ("counter", set()),
    "acgs_audit_journal_backlog_records": ("gauge", set()),
    "acgs_audit_shipped_records": ("counter", set()),
    "acgs_audit_checkpoints": ("counter", {"outcome"}),
    "acgs_audit_ship_lag_seconds": ("gauge", set()),
    "acgs_audit_ship_duration_seconds": ("histogram", set()),
    "acgs_audit_refusals": ("counter", set()),
    "acgs_audit_quarantined_records": ("counter", set()),
    "acgs_audit_shipper_restarts": ("counter", set()),
    "acgs_audit_shipper_stalled": ("gauge", set()),
    "acgs_audit_shipper_stalled_seconds": ("gauge", set()),
    "acgs_audit_journals_kept": ("gauge", set()),
    "acgs_escalations_open": ("gauge", {"reason", "severity"}),
    "acgs_escalations_created": ("counter", {"reason"}),
    "acgs_escalations_limited": ("counter", set()),
    "acgs_escalations_resolved": ("counter", {"reason", "outcome"}),
    "acgs_escalation_resolution_seconds": ("histogram", {"outcome"}),
    "acgs_constitutional_violations": ("counter", {"principle", "severity"}),
    "acgs_constitutional_hash_mismatches": ("counter", set()),
    "acgs_policy_info": ("gauge", {"revision", "constitutional_hash"}),
    "acgs_instance_info": ("gauge", {"instance_id", "version"}),
    "acgs_policy_shadow_evaluations": ("counter", set()),
    "acgs_policy_shadow_differences": ("counter", {"transition"}),
    "acgs_policy_shadow_dropped": ("counter", set()),
    "acgs_policy_auto_rollbacks": ("counter", set()),
    "acgs_database_reachable": ("gauge", set()),
}


def decision(effect: Effect, *, cached: bool = False, latency_us: int = 100,
             principles: tuple[str, ...] = (), severity: Severity = Severity.HIGH,
             fail_safe: bool = False) -> Decision:
    return Decision(
        decision_id="d", request_id="r", effect=effect,
        violations=tuple(Violation(p, severity, "m") for p in principles),
        policy_revision="rev-1", constitutional_hash=CONSTITUTIONAL_HASH, cached=cached,
        latency_us=latency_us, decided_at_ns=0, fail_safe=fail_safe,
    )


@dataclass
class FakeShipper:
    quarantined_records: int = 2
    restarts: int = 3
    stalled_for_s: float = 45.0
    note: str | None = "audit shipper: no progress for 45 s"

    def stall_note(self) -> str | None:
        return self.note

    kept_journals: int = 0

    def kept_note(self) -> str | None:
        return None


@dataclass
class Counters:
    hits: int = 0
    misses: int = 0


@dataclass
class RedisCounters(Counters):
    errors: int = 0


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    m = Metrics(address="127.0.0.1:0", instance_id="test-1", version="9.9.9")
    m.start()
    yield m
    m.close()


def scrape(m: Metrics, *, openmetrics: bool = False) -> str:
    accept = "application/openmetrics-text; version=1.0.0" if openmetrics else "text/plain"
    req = urllib.request.Request(f"http://127.0.0.1:{m.port}/metrics", headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return str(resp.read().decode())


def samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(text: str, name: str, **labels: str) -> float:
    found = [s.value for s in samples(text) if s.name == name and s.labels == labels]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return float(found[0])


def feed(m: Metrics) -> None:
    """Touch every instrument once."""
    m.decision_made(decision(Effect.ALLOW, cached=True, latency_us=20), engine_us=None)
    m.decision_made(decision(Effect.ALLOW, latency_us=300), engine_us=150.0)
    m.decision_made(decision(Effect.DENY, principles=("tenant_isolation", "role_permissions")),
                    engine_us=80.0)
    m.decision_made(decision(Effect.ESCALATE, principles=("high_impact_action",)), engine_us=60.0)
    m.hash_mismatch()
    m.audit_refused()
    m.escalation_created(reason="high_impact_action")
    m.set_open_escalations({("high_impact_action", "high"): 3})
    m.escalation_resolved(reason="high_impact_action", outcome="approved", duration_s=42.0)
    m.audit_shipped(records=10, duration_s=0.004)
    m.audit_checkpoint(ok=True)
    m.audit_checkpoint(ok=False)
    m.watch_audit_journal(backlog_records=lambda: 42, ship_lag_s=lambda: 1.5)
    m.watch_audit_shipper(FakeShipper())
    m.watch_cache(tier="local", stats=Counters(hits=7, misses=3))
    m.watch_cache(tier="redis", stats=RedisCounters(hits=2, misses=1, errors=4))
    m.watch_policy(revision=lambda: "rev-1")
    m.shadow_evaluated(transition="ALLOW->DENY")
    m.shadow_evaluated(transition="")
    m.shadow_dropped()
    m.policy_rolled_back()
    m.watch_database(reachable=lambda: True, note=lambda: "")


def test_every_family_has_its_exact_name_type_and_labels(metrics: Metrics) -> None:
    feed(metrics)
    families = {f.name: f for f in text_string_to_metric_families(scrape(metrics))}
    assert set(families) == set(EXPECTED_FAMILIES)
    for name, (kind, labels) in EXPECTED_FAMILIES.items():
        family = families[name]
        assert family.type == kind, name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, sample


def test_no_target_info_and_no_otel_scope_labels(metrics: Metrics) -> None:
    feed(metrics)
    text = scrape(metrics)
    assert "target_info" not in text
    assert "otel_scope" not in text
    assert all(s.name.startswith("acgs_") for s in samples(text))


def test_latency_buckets_run_from_25us_to_1s(metrics: Metrics) -> None:
    metrics.decision_made(decision(Effect.ALLOW, cached=True, latency_us=20), engine_us=None)
    metrics.decision_made(decision(Effect.ALLOW, latency_us=1_500), engine_us=30.0)
    text = scrape(metrics)
    for name in ("acgs_decision_duration_seconds", "acgs_engine_evaluation_duration_seconds"):
        bounds = [float(s.labels["le"]) for s in samples(text)
                  if s.name == f"{name}_bucket" and s.labels.get("cached", "false") == "false"]
        assert bounds == [*LATENCY_BUCKETS_S, float("inf")], name
    assert LATENCY_BUCKETS_S[0] == 0.000025
    cached = {"cached": "true"}
    assert value(text, "acgs_decision_duration_seconds_bucket", **cached, le="2.5e-05") == 1
    uncached = {"cached": "false"}
    assert value(text, "acgs_decision_duration_seconds_bucket", **uncached, le="0.001") == 0
    assert value(text, "acgs_decision_duration_seconds_bucket", **uncached, le="0.002") == 1
    assert value(text, "acgs_decision_duration_seconds_count", **uncached) == 1
    assert value(text, "acgs_decision_duration_seconds_sum", **uncached) == pytest.approx(0.0015)
    assert value(text, "acgs_engine_evaluation_duration_seconds_bucket", le="5e-05") == 1


def test_decisions_are_counted_by_effect_cached_and_fail_safe(metrics: Metrics) -> None:
    text = scrape(metrics)  # series start at 0, so rate() sees the first decision
    assert value(text, "acgs_decisions_total", effect="ALLOW", cached="true",
                 fail_safe="false") == 0
    assert value(text, "acgs_decisions_total", effect="DENY", cached="false",
                 fail_safe="true") == 0
    feed(metrics)
    metrics.decision_made(decision(Effect.DENY, principles=("fail_safe",),
                                   severity=Severity.CRITICAL, fail_safe=True), engine_us=None)
    text = scrape(metrics)
    assert value(text, "acgs_decisions_total", effect="ALLOW", cached="true",
                 fail_safe="false") == 1
    assert value(text, "acgs_decisions_total", effect="ALLOW", cached="false",
                 fail_safe="false") == 1
    assert value(text, "acgs_decisions_total", effect="DENY", cached="false",
                 fail_safe="true") == 1
    assert value(text, "acgs_constitutional_hash_mismatches_total") == 1
    assert value(text, "acgs_audit_refusals_total") == 1


def test_violations_count_each_principle_of_a_deny_or_escalate_once(metrics: Metrics) -> None:
    twice = ("tenant_isolation", "tenant_isolation", "role_permissions")
    metrics.decision_made(decision(Effect.DENY, principles=twice), engine_us=None)
    metrics.decision_made(decision(Effect.ESCALATE, principles=("high_impact_action",)),
                          engine_us=None)
    metrics.decision_made(decision(Effect.ALLOW, principles=("advisory",)), engine_us=None)
    text = scrape(metrics)
    violations = {(s.labels["principle"], s.labels["severity"]): s.value for s in samples(text)
                  if s.name == "acgs_constitutional_violations_total"}
    assert violations == {
        ("tenant_isolation", "high"): 1, ("role_permissions", "high"): 1,
        ("high_impact_action", "high"): 1,
        # The service's own principles exist from the start, at 0.
        ("fail_safe", "critical"): 0, ("audit_unavailable", "critical"): 0,
        ("constitutional_hash", "critical"): 0,
    }


def test_watched_sources_are_read_at_each_scrape(metrics: Metrics) -> None:
    feed(metrics)
    local = Counters(hits=7, misses=3)
    metrics.watch_cache(tier="local", stats=local)
    text = scrape(metrics)
    assert value(text, "acgs_cache_hits_total", tier="local") == 7
    assert value(text, "acgs_cache_misses_total", tier="redis") == 1
    assert value(text, "acgs_cache_redis_errors_total") == 4
    assert value(text, "acgs_audit_journal_backlog_records") == 42
    assert value(text, "acgs_audit_ship_lag_seconds") == 1.5
    assert value(text, "acgs_audit_shipped_records_total") == 10
    assert value(text, "acgs_audit_quarantined_records_total") == 2
    assert value(text, "acgs_audit_shipper_restarts_total") == 3
    assert value(text, "acgs_audit_shipper_stalled") == 1
    assert value(text, "acgs_audit_shipper_stalled_seconds") == 45
    assert value(text, "acgs_audit_journals_kept") == 0
    assert value(text, "acgs_audit_checkpoints_total", outcome="failed") == 1
    assert value(text, "acgs_escalations_open", reason="high_impact_action", severity="high") == 3
    assert value(text, "acgs_escalations_created_total", reason="high_impact_action") == 1
    assert value(text, "acgs_escalations_resolved_total", reason="high_impact_action",
                 outcome="approved") == 1
    assert value(text, "acgs_escalation_resolution_seconds_bucket", outcome="approved",
                 le="60.0") == 1
    local.hits = 8
    assert value(scrape(metrics), "acgs_cache_hits_total", tier="local") == 8


def test_info_metrics_follow_the_active_revision(metrics: Metrics) -> None:
    revision = ["rev-1"]
    metrics.watch_policy(revision=lambda: revision[0])
    text = scrape(metrics)
    assert value(text, "acgs_policy_info", revision="rev-1",
                 constitutional_hash=CONSTITUTIONAL_HASH) == 1
    assert value(text, "acgs_instance_info", instance_id="test-1", version="9.9.9") == 1
    revision[0] = "rev-2"
    policy = [s.labels["revision"] for s in samples(scrape(metrics))
              if s.name == "acgs_policy_info"]
    assert policy == ["rev-2"]  # the old revision's series is gone, not left at 1


def test_openmetrics_scrape_has_the_same_names(metrics: Metrics) -> None:
    feed(metrics)
    om = openmetrics_families(scrape(metrics, openmetrics=True))  # type: ignore[no-untyped-call]
    names = {s.name for f in om for s in f.samples}
    assert {s.name for s in samples(scrape(metrics))} == names


def test_lifecycle(metrics: Metrics) -> None:
    with pytest.raises(RuntimeError):
        metrics.start()
    port = metrics.port
    metrics.close()
    metrics.close()  # idempotent (the fixture closes it again)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    unstarted = Metrics(address="127.0.0.1:0", instance_id="x")
    with pytest.raises(RuntimeError):
        _ = unstarted.port
    unstarted.decision_made(decision(Effect.ALLOW), engine_us=None)  # records before start
    assert b"acgs_decisions_total" in unstarted.render()
    unstarted.close()


def test_both_implement_telemetry() -> None:
    implementations: list[Telemetry] = [NullTelemetry(), Metrics(instance_id="x")]
    for telemetry in implementations:
        telemetry.decision_made(decision(Effect.DENY, principles=("p",)), engine_us=1.0)
        telemetry.hash_mismatch()
        telemetry.audit_refused()
    implementations[1].close()  # type: ignore[attr-defined]
