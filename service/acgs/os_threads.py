"""Give Python threads their names in the operating system too.

CPython 3.11 leaves every thread's OS name (``/proc/<pid>/task/<tid>/comm``, what
``top -H``, ``ps -L`` and ``make bench``'s CPU-by-thread table show) as the
process's own. Each of our threads calls :func:`name_os_thread` first, so an
operator can tell the journal writer from the shipper from an engine worker.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

_PR_SET_NAME = 15
_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def name_os_thread(name: str | None = None) -> None:
    """Set the calling thread's OS name (at most 15 bytes) to ``name``, or to its Python name.

    Best effort: a platform without ``prctl`` keeps the old name."""
    raw = (name or threading.current_thread().name).encode("ascii", "replace")[:15]
    try:
        _LIBC.prctl(_PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0)
    except AttributeError:  # no prctl (not Linux)
        return
