"""Start-up self-check: the installed regopy is the one whose private parts we use.

``regopy_calls`` binds rego-cpp's C functions next to regopy and builds regopy's
``Input``/``Output`` objects by hand (``_impl``, ``rego_shared.rego._name``,
``regoBundleQueryEntrypoint``). Those are not regopy's API: another release may
rename them, or change what they mean, and a wrong binding could build a
different input than the caller sent. ``pyproject.toml`` pins the version; this
check makes a server on any other build refuse to start, saying why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from acgs.errors import ConfigurationError

REGOPY_VERSION = "1.5.2"  # keep equal to the pin in pyproject.toml
_PROBE_INPUT = {"s": "é", "i": -(1 << 63), "f": 2.5, "b": True, "n": None, "a": [1, {"k": "v"}]}
_PROBE_POLICY = "package probe\n\nimport rego.v1\n\nechoed := input\n"


def check_binding(version: Callable[[], str] | None = None) -> None:
    """Raise ConfigurationError unless regopy is :data:`REGOPY_VERSION` and a probe through
    our private-part binding (build an input, query an entrypoint, read the output) gives
    back exactly what it was given."""
    import regopy

    found = version() if version is not None else str(getattr(regopy, "__version__", "?"))
    if found != REGOPY_VERSION:
        raise ConfigurationError(_mismatch(f"regopy {found} is installed"))
    try:
        echoed = _probe()
    except Exception as err:  # whatever a changed binding raises: say what it means
        raise ConfigurationError(_mismatch(f"the probe failed: {type(err).__name__}: {err}")
                                 ) from err
    if echoed != _PROBE_INPUT:
        raise ConfigurationError(_mismatch(f"the probe read back {echoed!r:.200}"))


def _mismatch(what: str) -> str:
    return (f"the regopy binding does not match: {what}; ACGS-2 uses private parts of regopy "
            f"{REGOPY_VERSION} (acgs/adapters/regopy_calls.py). Install regopy=={REGOPY_VERSION}"
            " or update regopy_calls.py and the pin together.")


def _probe() -> Any:
    from acgs.adapters.rego_source import compile_policy
    from acgs.adapters.regopy_calls import build_input, query_entrypoint
    from acgs.adapters.regopy_engine import output_value

    interp, bundle = compile_policy([("probe.rego", _PROBE_POLICY)], "{}", ["probe/echoed"])
    interp.set_input(build_input(_PROBE_INPUT))
    defined, value = output_value(query_entrypoint(interp, bundle, "probe/echoed"),
                                  "probe/echoed")
    return value if defined else None
