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
(tests/unit/test_canonical_fast.py checks that the two agree). At import, a set of probes
at the known edges is encoded both ways; if any differs (an orjson release that writes
something otherwise), the fast path is off for the process.

One difference is kept: orjson writes an ``Enum`` (its value) and a ``UUID`` (its text)
where json raises TypeError. No caller passes either (records hold ``effect.value``).
"""

from __future__ import annotations

import hashlib
import json
import logging
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
    return _orjson(value, floats) if _FAST_PATH else None


def _orjson(value: Any, floats: bool) -> bytes | None:
    """orjson's bytes unless they may differ from the reference's (see the module)."""
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


# Every control character, the characters JSON encoders treat specially, keys whose UTF-8
# and UTF-16 orders differ, integers at 64 bits, and floats on both sides of each place
# where orjson's spelling may part from the reference's.
_TEXT_PROBE = "".join(map(chr, range(0x20))) + '"\\/\x7f\u2028\u2029\ufeff\uffff\U0001f600é'
_PROBES_WITHOUT_FLOATS: tuple[Any, ...] = (
    _TEXT_PROBE, {_TEXT_PROBE: [True, False, None]},
    {"\uffff": 1, "\U0001f600": 2, "\ue000": 3, "a": 4, "": 5, "é": 6},
    [0, -1, 2**63 - 1, -(2**63), 2**53, 2**53 + 1],
)
_FLOAT_PROBE = [0.1, -0.0, 0.5, 1.5, 0.0001, 0.00012, 0.0001234, 123456.789, 1e15 + 0.5,
                9007199254740992.0, 1e16, 1.5e16, 1e21, 1e22, 1e-5, 1e-6, 1e-7, 5e-324,
                1.7976931348623157e308, 2.2250738585072014e-308]


def _fast_path_agrees() -> bool:
    """Every probe orjson's path would take (floats=False is never given a float) encodes
    as the reference does."""
    cases = [(p, floats) for p in _PROBES_WITHOUT_FLOATS for floats in (True, False)]
    cases.append((_FLOAT_PROBE, True))
    for probe, floats in cases:
        fast = _orjson(probe, floats)
        if fast is not None and fast != _slow(probe).encode("utf-8"):
            return False
    return True


_FAST_PATH = _fast_path_agrees()
if not _FAST_PATH:  # pragma: no cover - an orjson release that writes otherwise
    logging.getLogger("acgs.canonical").warning(
        "orjson %s writes some probe values otherwise than json.dumps: canonical JSON "
        "uses json.dumps only (slower, same bytes)", orjson.__version__)


def digest(*parts: str) -> str:
    """SHA-256 over length-prefixed parts, so that no two part lists share a digest."""
    h = hashlib.sha256()
    for part in parts:
        raw = part.encode("utf-8", "surrogatepass")
        h.update(len(raw).to_bytes(8, "big"))
        h.update(raw)
    return h.hexdigest()
