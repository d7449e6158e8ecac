"""Give Python threads their names in the operating system too.

CPython 3.11 leaves every thread's OS name (``/proc/<pid>/task/<tid>/comm``, what
``top -H``, ``ps -L`` and ``make bench``'s CPU-by-thread table show) as the
process's own. Each of our threads calls :func:`name_os_thread` first, so an
operator can tell the journal writer from the shipper from an engine worker.
Linux only (``prctl``); elsewhere, or where the C library cannot be loaded, it does
nothing.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from typing import Any

_PR_SET_NAME = 15


def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)  # the process's own symbols: glibc or musl
    except OSError:
        return None


_LIBC = _libc()


def name_os_thread(name: str | None = None) -> None:
    """Set the calling thread's OS name (at most 15 bytes) to ``name``, or to its Python name.

    Best effort: a platform without ``prctl`` keeps the old name."""
    prctl = getattr(_LIBC, "prctl", None)
    if prctl is None:
        return
    raw = (name or threading.current_thread().name).encode("ascii", "replace")[:15]
    prctl(_PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0)
