"""The development tokens file (``<ACGS_DATA_DIR>/dev-tokens``): one token per role.

Shell-sourceable lines ``ACGS_<ROLE>_TOKEN=<token>``, written atomically with
mode 0600 (the tokens are credentials, even in development).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

_LINE = re.compile(r"(?:export\s+)?ACGS_([A-Z]+)_TOKEN=['\"]?([A-Za-z0-9_.-]+)['\"]?\s*")
_HEADER = (
    "# ACGS-2 development tokens, one per role (ACGS_ENV=development only). Keep private.\n"
    "# Use: source {path}; then e.g. grpcurl -H \"authorization: Bearer $ACGS_AGENT_TOKEN\" ...\n"
)


def variable(role: str) -> str:
    """The shell variable holding ``role``'s token: ``ACGS_<ROLE>_TOKEN``."""
    return f"ACGS_{role.upper()}_TOKEN"


def read(path: Path) -> dict[str, str]:
    """Role → token from ``path``; empty when the file does not exist. Raises OSError."""
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return {}
    tokens = {}
    for line in text.splitlines():
        match = _LINE.fullmatch(line.strip())
        if match:
            tokens[match.group(1).lower()] = match.group(2)
    return tokens


def write(path: Path, tokens: Mapping[str, str]) -> None:
    """Replace ``path`` atomically with ``tokens`` (role → token), mode 0600. Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = _HEADER.format(path=path) + "".join(
        f"{variable(role)}={token}\n" for role, token in tokens.items()
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
