"""Direct calls into regopy's library for the per-decision steps, holding the GIL.

regopy builds an input document with one ``ctypes.CDLL`` call per JSON node and
reads an output with three more; every such call releases and re-takes the GIL.
On a server whose event loop wants the GIL at the same moment, each hand-over
costs a context switch, so the cheap steps became the expensive ones (measured:
75 µs for a typical input, 37 µs the same way without the hand-overs, and engine
threads using 380 µs of CPU per decision where the evaluation needs 230).

Here the same C functions are bound through ``ctypes.PyDLL`` (the GIL is kept
for these short calls); only the evaluation itself, through regopy, releases it.
The functions are rego-cpp's C API as regopy 1.5 declares them.
"""

from __future__ import annotations

import ctypes
import json
import math
from typing import Any

import regopy
from regopy import rego_shared
from regopy.output import Output, Result

from acgs.domain import numbers

_lib = ctypes.PyDLL(rego_shared.rego._name)
_P = ctypes.c_void_p


def _bind(name: str, restype: Any, *argtypes: Any) -> Any:
    fn = getattr(_lib, name)
    fn.restype, fn.argtypes = restype, list(argtypes)
    return fn


_new_input = _bind("regoNewInput", _P)
_free_input = _bind("regoFreeInput", None, _P)
_string = _bind("regoInputString", ctypes.c_uint32, _P, ctypes.c_char_p)
_int = _bind("regoInputInt", ctypes.c_uint32, _P, ctypes.c_int64)
_float = _bind("regoInputFloat", ctypes.c_uint32, _P, ctypes.c_double)
_bool = _bind("regoInputBoolean", ctypes.c_uint32, _P, ctypes.c_bool)
_null = _bind("regoInputNull", ctypes.c_uint32, _P)
_item = _bind("regoInputObjectItem", ctypes.c_uint32, _P)
_object = _bind("regoInputObject", ctypes.c_uint32, _P, ctypes.c_uint32)
_array = _bind("regoInputArray", ctypes.c_uint32, _P, ctypes.c_uint32)
_output_ok = _bind("regoOutputOk", ctypes.c_bool, _P)
_json_size = _bind("regoOutputJSONSize", ctypes.c_uint32, _P)
_json = _bind("regoOutputJSON", ctypes.c_uint32, _P, ctypes.c_char_p, ctypes.c_uint32)

_OK = 0  # regoEnum REGO_OK


def build_input(value: Any) -> regopy.Input:
    """``value`` (JSON-like: dict with str keys, list, tuple, str, int, float, bool, None) as
    a regopy Input, the same document ``regopy.Input(value)`` builds.

    Raises ValueError for anything else, for an integer outside int64, for a float that
    six decimals would change or that is not finite (numbers.py), and for a string
    holding a NUL character (the C API would cut it there: "admin\\0x" would reach the
    policy as "admin").
    """
    handle = _new_input()
    if not handle:
        raise MemoryError("regoNewInput failed")
    try:
        _add(handle, value)
    except BaseException:
        _free_input(handle)
        raise
    built: regopy.Input = object.__new__(regopy.Input)
    built._impl = handle  # freed by Input.__del__, as regopy's own
    return built


def _add(handle: int, value: Any) -> None:
    kind = type(value)
    if kind is str:
        _check(_string(handle, _text(value)))
    elif kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise ValueError(f"object key {key!r:.40} is not a string")
            _check(_string(handle, _text(key)))
            _add(handle, item)
            _check(_item(handle))
        _check(_object(handle, len(value)))
    elif kind is bool:
        _check(_bool(handle, value))
    elif kind is float:
        # regoInputFloat keeps std::to_string(value), six decimals: refuse what it would
        # change rather than evaluate another number (numbers.py; the entrypoints name the
        # field before it gets here).
        if not math.isfinite(value) or float(f"{value:f}") != value:
            raise ValueError(numbers.float_problem(value))
        _check(_float(handle, value))
    elif kind is int:
        if not numbers.INT64_MIN <= value <= numbers.INT64_MAX:
            raise ValueError(numbers.int_problem(value))
        _check(_int(handle, value))
    elif value is None:
        _check(_null(handle))
    elif kind is list or kind is tuple:
        for item in value:
            _add(handle, item)
        _check(_array(handle, len(value)))
    else:
        raise ValueError(f"cannot pass a {kind.__name__} to the policy")


def _text(value: str) -> bytes:
    if "\0" in value:
        raise ValueError("string contains a NUL character")
    return value.encode("utf-8")


def _check(code: int) -> None:
    if code != _OK:
        raise ValueError(f"regopy could not build the input (code {code})")


def read_output(output_handle: int) -> Output:
    """A regopy Output for the handle a query returned, read as ``Output(handle)`` would."""
    output: Output = object.__new__(Output)
    output._impl = output_handle  # freed by Output.__del__
    output.results = []
    if _output_ok(output_handle):
        size = _json_size(output_handle)
        buf = ctypes.create_string_buffer(size)
        if _json(output_handle, buf, size) != _OK:
            raise ValueError("regopy could not write the output as JSON")
        text = buf.value.decode("utf-8")
        parsed = {} if text == "undefined" else json.loads(text)
        output.results = [Result(r) for r in parsed] if isinstance(parsed, list) else [
            Result(parsed)]
    return output


def query_entrypoint(interp: regopy.Interpreter, bundle: regopy.Bundle, entrypoint: str) -> Output:
    """``interp.query_bundle_entrypoint(bundle, entrypoint)``: the evaluation releases the GIL
    (regopy's own binding), reading the result does not. Raises RegoError as regopy does."""
    handle = rego_shared.rego.regoBundleQueryEntrypoint(interp._impl, bundle._impl,
                                                        entrypoint.encode("utf-8"))
    if not handle:
        raise regopy.RegoError(rego_shared.rego_get_error(interp._impl))
    return read_output(handle)
