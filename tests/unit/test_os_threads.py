"""Our threads carry their names into the OS, where top -H and make bench's table read them."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
from acgs.os_threads import name_os_thread

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's /proc")


def _comm(tid: int) -> str:
    return Path(f"/proc/self/task/{tid}/comm").read_text().strip()


def test_a_thread_takes_its_python_name_cut_to_the_kernels_15_bytes() -> None:
    seen: list[str] = []

    def run() -> None:
        name_os_thread()
        seen.append(_comm(threading.get_native_id()))

    t = threading.Thread(target=run, name="acgs-journal-writer-long")
    t.start()
    t.join()
    assert seen == ["acgs-journal-wr"]


def test_the_journal_writer_is_named(tmp_path: Path) -> None:
    from acgs.adapters.journal import Journal

    journal = Journal(directory=tmp_path / "j", instance_id="t1")
    journal.open()
    try:
        thread = journal._thread
        assert thread is not None and thread.native_id is not None
        for _ in range(100):  # the thread names itself first thing; give it a moment
            if _comm(thread.native_id) == "acgs-journal":
                break
            threading.Event().wait(0.01)
        assert _comm(thread.native_id) == "acgs-journal"
    finally:
        journal.close()


def test_without_a_c_library_naming_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A platform where libc cannot be loaded must still run the service (best effort)."""
    import acgs.os_threads as os_threads

    monkeypatch.setattr(os_threads, "_LIBC", None)
    os_threads.name_os_thread("acgs-anything")  # no error
