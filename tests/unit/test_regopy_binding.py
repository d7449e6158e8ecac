"""The start-up self-check refuses a regopy whose private parts we cannot trust."""

from __future__ import annotations

import types

import pytest
from acgs.adapters import regopy_binding, regopy_calls
from acgs.errors import ConfigurationError


def test_the_installed_regopy_passes() -> None:
    regopy_binding.check_binding()


def test_pin_and_check_name_the_same_version() -> None:
    from pathlib import Path
    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text("utf-8")
    assert f'"regopy=={regopy_binding.REGOPY_VERSION}"' in text


def test_another_version_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ConfigurationError, match=r"regopy 1\.6\.0 is installed; ACGS-2 uses "
                                                 r"private parts of regopy 1\.5\.2.*"
                                                 r"Install regopy==1\.5\.2"):
        regopy_binding.check_binding(lambda: "1.6.0")


def test_a_missing_private_symbol_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # A release that renamed the C entry point: the probe fails, the message says why.
    monkeypatch.setattr(regopy_calls.rego_shared, "rego", types.SimpleNamespace())
    with pytest.raises(ConfigurationError, match=r"binding does not match: the probe failed: "
                                                 r"AttributeError"):
        regopy_binding.check_binding()


def test_a_binding_that_changes_the_input_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    real = regopy_calls.build_input
    monkeypatch.setattr(regopy_calls, "build_input", lambda v: real({**v, "f": 2.0}))
    with pytest.raises(ConfigurationError, match=r"binding does not match: the probe read back"):
        regopy_binding.check_binding()
