"""Canonical JSON: one byte string per meaning, used for cache keys and audit records.

Keys are sorted, separators are fixed, and a float with an integral value is
written as an integer (protobuf Struct carries every number as a double, so
``1`` and ``1.0`` must encode alike). NaN and infinities are refused: JSON has
no spelling for them and a policy cannot compare them meaningfully.

The bytes are those of ``json.dumps(value, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)``: audit records are hashed over them, so they may never change.
orjson writes them about five times faster and gives the same bytes for strings,
integers, booleans, null, lists and string-keyed objects; it spells some floats
differently (``1e+16`` is ``1e16`` there, ``1e-05`` is ``0.00001``), refuses integers
past 64 bits and lone surrogates, and knows types JSON has none for. So its output is
taken only when it holds no exponent, no number below 1e-4 and no ``null`` (orjson's
spelling of NaN); every other value takes the ``json`` path, which defines the format
(tests/unit/test_canonical_fast.py checks that the two agree).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

import orjson

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


_ORJSON_OPTIONS = (orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS
                   | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS)
# Where orjson's floats may read otherwise: a number in exponent form ("e", an optional
# sign, a digit; orjson writes a lowercase "e"), and a number below 1e-4, which orjson
# writes out in full ("0.00001") where the reference writes "1e-05". Either can also match
# inside a string ("1e5" as text); then the slow path runs, and gives the same bytes.
_EXPONENT = re.compile(rb"e[-+]?[0-9]")


def dumps(value: Any, *, floats: bool = True) -> str:
    """Canonical JSON text of an already normalized value. ``floats=False``: the caller
    knows ``value`` holds no float anywhere (only str, int, bool, None, list, dict), so
    orjson's bytes need no check (an audit record's body: its fields are typed so)."""
    out = _fast(value, floats)
    return out.decode("utf-8") if out is not None else _slow(value)


def dumps_bytes(value: Any, *, floats: bool = True) -> bytes:
    """:func:`dumps` as UTF-8 bytes (what is hashed and written)."""
    out = _fast(value, floats)
    return out if out is not None else _slow(value).encode("utf-8")


def _fast(value: Any, floats: bool) -> bytes | None:
    """orjson's bytes when they are certainly the reference's, else None."""
    try:
        out = orjson.dumps(value, option=_ORJSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError included
        return None
    # orjson writes NaN and infinities as null, where the reference refuses them.
    if floats and (b"null" in out or b"0.0000" in out or _EXPONENT.search(out) is not None):
        return None
    return out


def _slow(value: Any) -> str:
    """The reference encoding; raises ValueError (NaN) or TypeError (no JSON type) as json
    does."""
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
