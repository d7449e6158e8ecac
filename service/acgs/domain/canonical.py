"""Canonical JSON: one byte string per meaning, used for cache keys and audit records.

Keys are sorted, separators are fixed, and a float with an integral value is
written as an integer (protobuf Struct carries every number as a double, so
``1`` and ``1.0`` must encode alike). NaN and infinities are refused: JSON has
no spelling for them and a policy cannot compare them meaningfully.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from acgs.errors import InvalidRequest

_MAX_SAFE_INT = 2**53


def normalize(value: Any, *, max_depth: int = 64, _depth: int = 0) -> Any:
    """Return ``value`` with integral floats as ints; raise InvalidRequest when too deep or NaN."""
    if _depth > max_depth:
        raise InvalidRequest(f"input nests deeper than {max_depth} levels")
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise InvalidRequest("input holds NaN or infinity, which JSON cannot carry")
        if value.is_integer() and abs(value) < _MAX_SAFE_INT:
            return int(value)
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidRequest("object keys must be strings")
            out[k] = normalize(v, max_depth=max_depth, _depth=_depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [normalize(v, max_depth=max_depth, _depth=_depth + 1) for v in value]
    raise InvalidRequest(f"unsupported value of type {type(value).__name__}")


def dumps(value: Any) -> str:
    """Canonical JSON text of an already normalized value."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def digest(*parts: str) -> str:
    """SHA-256 over length-prefixed parts, so that no two part lists share a digest."""
    h = hashlib.sha256()
    for part in parts:
        raw = part.encode("utf-8", "surrogatepass")
        h.update(len(raw).to_bytes(8, "big"))
        h.update(raw)
    return h.hexdigest()
