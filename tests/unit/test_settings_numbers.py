"""Durations in the settings are finite: "fsync at most every inf ms" would never fsync."""

from __future__ import annotations

import pytest
from acgs.config import Settings
from acgs.errors import ConfigurationError


@pytest.mark.parametrize("name", ["ACGS_AUDIT_FSYNC_INTERVAL_MS", "ACGS_GRACE_PERIOD_S",
                                  "ACGS_AUDIT_SHIP_STALL_S"])
@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "NaN", "Infinity"])
def test_a_duration_must_be_a_finite_number(name: str, raw: str) -> None:
    with pytest.raises(ConfigurationError, match=f"{name}.*not a finite number"):
        Settings.from_env({name: raw})


def test_finite_durations_still_parse() -> None:
    settings = Settings.from_env({"ACGS_AUDIT_FSYNC_INTERVAL_MS": "2.5"})
    assert settings.audit_fsync_interval_ms == 2.5
