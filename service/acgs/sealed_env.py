"""The server's second wall: once its settings are read, its environment holds no secret.

A policy that found a route to ``opa.runtime`` (the built-in refusal is the first
wall) would read this process's environment. So ``acgs serve`` removes, before it
loads any policy, every variable that could be worth reading: every ``ACGS_*``
(they are all in the Settings by then), the libpq (``PG*``) and Redis connection
variables, and anything named or shaped like a credential. Child processes the
server starts get what they need explicitly (the policy checker its request on
stdin, the embedded PostgreSQL its paths as arguments).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, MutableMapping

_PREFIXES = ("ACGS_", "PG", "REDIS")
_SECRET_NAME = re.compile(
    r"TOKEN|SECRET|PASSW|PASSPHRASE|CREDENTIAL|PRIVATE|API_?KEY|ACCESS_?KEY|_KEY$|AUTH|COOKIE"
    r"|SESSION|DSN|DATABASE_URL|_URL$|_URI$", re.IGNORECASE)
# A value that carries credentials whatever its name: scheme://user:password@host.
_CREDENTIAL_URL = re.compile(r"\w+://[^/\s:@]*:[^/\s@]+@")


def secret_names(environ: MutableMapping[str, str], known: Iterable[str] = ()) -> list[str]:
    """The variables of ``environ`` to remove; ``known`` are secret values (the database
    URL...) whose every occurrence in a value marks that variable too."""
    values = [v for v in known if v]
    return sorted(
        name for name, value in environ.items()
        if name.upper().startswith(_PREFIXES) or _SECRET_NAME.search(name)
        or _CREDENTIAL_URL.search(value) or any(v in value for v in values)
    )


def seal_environment(environ: MutableMapping[str, str], known: Iterable[str] = ()) -> list[str]:
    """Remove :func:`secret_names` from ``environ`` (``os.environ`` in the server); return
    the names removed (for the log, never the values)."""
    removed = secret_names(environ, known)
    for name in removed:
        del environ[name]
    return removed
