"""promtool on observability/prometheus: config, rules, and the rules' own unit tests.

Also checks that the rules and dashboards name only metrics acgs.metrics exports.
Needs `promtool` (Debian package `prometheus`): skipped without it, except under CI=true.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from acgs.lifecycle.supervisor import TaskState
from acgs.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "observability" / "prometheus"
DASHBOARDS = REPO / "observability" / "grafana" / "dashboards"
RULE_FILES = sorted((PROM / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROM / "tests" / "rules").glob("*_test.yml"))

pytestmark = pytest.mark.prometheus


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is required in CI (apt-get install prometheus)")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return path


def run(*args: str) -> str:
    proc = subprocess.run([promtool(), *args], cwd=PROM, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def rules() -> list[dict[str, Any]]:
    return [rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"]]


def test_config_is_valid() -> None:
    out = run("check", "config", "prometheus.yml")
    assert "SUCCESS" in out


def test_rules_are_valid() -> None:
    assert RULE_FILES, "no rule files"
    run("check", "rules", *(str(p) for p in RULE_FILES))


def test_rule_unit_tests_pass() -> None:
    assert RULE_TESTS, "no rule tests"
    run("test", "rules", *(str(p) for p in RULE_TESTS))


def test_every_alert_is_tested_firing_and_silent() -> None:
    fired: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                (fired if case.get("exp_alerts") else silent).add(case["alertname"])
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert alerts - fired == set(), "alerts never made to fire"
    assert alerts - silent == set(), "alerts never held silent"


def test_every_recording_rule_is_tested() -> None:
    tested = {case["expr"].strip() for path in RULE_TESTS
              for test in yaml.safe_load(path.read_text())["tests"]
              for case in test.get("promql_expr_test", [])}
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    assert recorded - tested == set()


def exported_names() -> set[str]:
    """Every sample name a fully fed Metrics exposes (histograms with their suffixes)."""
    m = Metrics(address="127.0.0.1:0", instance_id="names")
    m.escalation_created(reason="r")
    m.set_open_escalations({("r", "high"): 1})
    m.audit_shipped(records=1, duration_s=0.01)
    m.watch_audit_journal(backlog_records=lambda: 0, ship_lag_s=lambda: 0.0)
    m.watch_cache(tier="local", stats=_Stats())
    m.watch_policy(revision=lambda: "rev")
    m.watch_database(reachable=lambda: True, note=lambda: "")
    m.watch_tasks(states=lambda: [TaskState("shipper", True, 0, "")], note=lambda: "")
    text = m.render().decode()
    m.close()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines()
            if line and not line.startswith("#")}


class _Stats:
    hits = 1
    misses = 1


def acgs_names(exprs: list[str]) -> set[str]:
    """Metric names in ``exprs``; recording rules (``level:acgs_...:op``) are not metrics."""
    return {name for expr in exprs for name in re.findall(r"(?<![:\w])acgs_\w+(?![:\w])", expr)}


def test_rules_and_dashboards_use_exported_names_only() -> None:
    exprs = [rule["expr"] for rule in rules()]
    for path in DASHBOARDS.glob("*.json"):
        exprs += [t["expr"] for t in panel_targets(json.loads(path.read_text()))]
    unknown = acgs_names(exprs) - exported_names()
    assert unknown == set(), f"not exported by acgs.metrics: {sorted(unknown)}"


def panel_targets(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = dashboard["panels"]
    panels = panels + [p for row in panels for p in row.get("panels", [])]
    return [t for p in panels for t in p.get("targets", [])]
