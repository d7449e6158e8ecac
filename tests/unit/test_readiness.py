"""GET /ready on the metrics server: what HAProxy's health check reads."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from acgs.metrics import Metrics


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    m = Metrics(address="127.0.0.1:0", instance_id="ready-test")
    m.start()
    yield m
    m.close()


def get(m: Metrics, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{m.port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read().decode()


def test_not_ready_until_told(metrics: Metrics) -> None:
    assert get(metrics, "/ready") == (503, "NOT_SERVING\n")


def test_ready_follows_the_callback(metrics: Metrics) -> None:
    state = {"ready": True}
    metrics.watch_readiness(lambda: state["ready"])
    assert get(metrics, "/ready") == (200, "SERVING\n")
    state["ready"] = False
    assert get(metrics, "/ready") == (503, "NOT_SERVING\n")


def test_a_failing_callback_is_not_ready(metrics: Metrics) -> None:
    def broken() -> bool:
        raise RuntimeError("boom")

    metrics.watch_readiness(broken)
    assert get(metrics, "/ready")[0] == 503


def test_metrics_still_served(metrics: Metrics) -> None:
    status, body = get(metrics, "/metrics")
    assert status == 200 and "acgs_instance_info" in body


def test_an_unreachable_database_is_named_in_the_body_not_the_status(metrics: Metrics) -> None:
    database = {"reachable": False}
    metrics.watch_readiness(lambda: True)
    metrics.watch_database(reachable=lambda: database["reachable"],
                           note=lambda: "" if database["reachable"] else "database unreachable")
    assert get(metrics, "/ready") == (200, "SERVING\ndatabase unreachable\n")
    assert "acgs_database_reachable 0.0" in get(metrics, "/metrics")[1]
    database["reachable"] = True
    assert get(metrics, "/ready") == (200, "SERVING\n")
    assert "acgs_database_reachable 1.0" in get(metrics, "/metrics")[1]
@dataclass
class Shipper:
    note: str | None = None
    quarantined_records: int = 0
    restarts: int = 0
    stalled_for_s: float = 0.0

    def stall_note(self) -> str | None:
        return self.note

    kept_journals: int = 0

    def kept_note(self) -> str | None:
        return None


def test_a_stalled_shipper_shows_in_the_body_not_the_status(metrics: Metrics) -> None:
    shipper = Shipper()
    metrics.watch_readiness(lambda: True)
    metrics.watch_audit_shipper(shipper)
    assert get(metrics, "/ready") == (200, "SERVING\n")
    shipper.note = "audit shipper: no progress for 31 s with 7 records waiting"
    assert get(metrics, "/ready") == (200, f"SERVING\n{shipper.note}\n")
