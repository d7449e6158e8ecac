"""Settings for callers: ACGS_AUTH, TLS, rate limits; production refuses to run insecure."""

from __future__ import annotations

from pathlib import Path

import pytest
from acgs.config import Settings
from acgs.errors import ConfigurationError
from acgs.lifecycle.callers import rate_limiter, require_secure, server_credentials

PRODUCTION = {"ACGS_ENV": "production"}
TLS = {"ACGS_TLS_CERT": "/etc/acgs/cert.pem", "ACGS_TLS_KEY": "/etc/acgs/key.pem"}


def test_defaults_are_token_auth_and_generous_rates() -> None:
    s = Settings.from_env({})
    assert s.auth == "token" and not s.allow_insecure and s.tls_cert is None
    assert ("agent", 2000.0, 4000.0) in s.rate_limits
    rate_limiter(s)  # every default rate is valid


@pytest.mark.parametrize(("raw", "expected"), [
    ("10:20", ("agent", 10.0, 20.0)), ("5", ("agent", 5.0, 10.0)), ("0.5:1", ("agent", 0.5, 1.0)),
])
def test_rate_limit_per_role(raw: str, expected: tuple[str, float, float]) -> None:
    s = Settings.from_env({"ACGS_RATE_LIMIT_AGENT": raw})
    assert expected in s.rate_limits and len(s.rate_limits) == 3


def test_rate_limit_off_and_bad_values() -> None:
    s = Settings.from_env({"ACGS_RATE_LIMIT_AUDITOR": "off"})
    assert [r for r, _, _ in s.rate_limits] == ["agent", "admin"]
    for bad in ("fast", "10:x", "-1:5", "10:0.5", "nan"):
        with pytest.raises(ConfigurationError, match="ACGS_RATE_LIMIT_AGENT"):
            Settings.from_env({"ACGS_RATE_LIMIT_AGENT": bad})
    with pytest.raises(ConfigurationError, match="ACGS_AUTH"):
        Settings.from_env({"ACGS_AUTH": "basic"})


@pytest.mark.parametrize("env", [PRODUCTION, {**PRODUCTION, "ACGS_AUTH": "none", **TLS}])
def test_production_refuses_without_tls_or_token_auth(env: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError, match="ACGS_ALLOW_INSECURE"):
        require_secure(Settings.from_env(env))
    require_secure(Settings.from_env({**env, "ACGS_ALLOW_INSECURE": "true"}))


def test_production_with_tls_and_tokens_and_development_without() -> None:
    require_secure(Settings.from_env({**PRODUCTION, **TLS}))
    require_secure(Settings.from_env({"ACGS_AUTH": "none"}))  # development: allowed, warned


@pytest.mark.parametrize("env", [
    {"ACGS_TLS_CERT": "/c.pem"}, {"ACGS_TLS_KEY": "/k.pem"}, {"ACGS_TLS_CLIENT_CA": "/ca.pem"},
])
def test_half_a_tls_configuration_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError, match="ACGS_TLS"):
        require_secure(Settings.from_env(env))


def test_unreadable_certificate_is_a_configuration_error(tmp_path: Path) -> None:
    s = Settings.from_env({"ACGS_TLS_CERT": str(tmp_path / "nope.pem"),
                           "ACGS_TLS_KEY": str(tmp_path / "nope.key")})
    with pytest.raises(ConfigurationError, match="nope"):
        server_credentials(s)


def test_engine_workers_default_to_the_cpus_the_process_may_use() -> None:
    import os

    from acgs.config import Settings

    settings = Settings.from_env({"ACGS_ENV": "test"})
    assert settings.engine_workers == len(os.sched_getaffinity(0))
