"""Processes of the local stack (``acgs.entrypoints.stack``): start, wait, record, stop.

Every process is started in its own session (so closing the terminal does not stop
it) with its output in ``logs/<role>.log``, and recorded as ``<role> <pid>`` in the
pids file as soon as it runs, so ``stop_recorded`` can stop whatever was started,
even after a failed start. A pid is signalled only while its command line still
names the role's program (pids are reused).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from acgs.edge import EdgeConfig, default_template, render

logger = logging.getLogger("acgs.stack")

# role prefix -> a string the process's command line contains
_PROGRAMS = {"prometheus": "prometheus", "haproxy": "haproxy", "server": "acgs.entrypoints.cli",
             "redis": "redis-server", "postgres": "postgres"}
# stop order: edge and observers first, then the servers (they ship their journals to
# PostgreSQL on the way out), then the stores
_ORDER = ("prometheus", "haproxy", "server", "redis", "postgres")


class Processes:
    """The pids file of one stack."""

    def __init__(self, pids_file: Path, logs: Path) -> None:
        self.pids_file = pids_file
        self.logs = logs

    def spawn(self, role: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` detached, output to ``logs/<role>.log``; record its pid."""
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{role}.log").open("ab") as log:
            proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=dict(env) if env else None,
                                    cwd=cwd, start_new_session=True)
        self.record(role, proc.pid)
        return proc

    def record(self, role: str, pid: int) -> None:
        with self.pids_file.open("a") as out:
            out.write(f"{role} {pid}\n")

    def recorded(self) -> list[tuple[str, int]]:
        if not self.pids_file.exists():
            return []
        rows = [line.split() for line in self.pids_file.read_text().splitlines()]
        return [(r[0], int(r[1])) for r in rows if len(r) == 2 and r[1].isdigit()]

    def alive(self) -> list[tuple[str, int]]:
        return [(role, pid) for role, pid in self.recorded() if _is(role, pid)]

    def log_tail(self, role: str, chars: int = 3000) -> str:
        path = self.logs / f"{role}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop_recorded(self, *, timeout_s: float = 30.0) -> None:
        """Stop every recorded process, group by group in :data:`_ORDER`; remove the pids file.

        SIGTERM (PostgreSQL: SIGINT, its fast shutdown), then SIGKILL (PostgreSQL:
        SIGQUIT) for what is still running after ``timeout_s``.
        """
        procs = self.alive()
        for group in _ORDER:
            members = [(r, p) for r, p in procs if _group(r) == group]
            gentle, hard = ((signal.SIGINT, signal.SIGQUIT) if group == "postgres"
                            else (signal.SIGTERM, signal.SIGKILL))
            for role, pid in members:
                logger.info("stopping %s (pid %d)", role, pid)
                _signal(pid, gentle)
            if not _wait_gone([p for _, p in members], timeout_s):
                for role, pid in members:
                    if _is(role, pid):
                        logger.warning("%s (pid %d) still running: %s", role, pid, hard.name)
                        _signal(pid, hard)
                _wait_gone([p for _, p in members], 5.0)
        self.pids_file.unlink(missing_ok=True)


def _group(role: str) -> str:
    return next((g for g in _ORDER if role.startswith(g)), role)


def _is(role: str, pid: int) -> bool:
    """True when ``pid`` runs and its command line names the role's program."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return _PROGRAMS.get(_group(role), role) in cmdline


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(pids: list[int], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        running = [p for p in pids if _running(p)]
        if not running:
            return True
        time.sleep(0.1)
    return False


def _running(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap our own children; others are reaped by init
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def port(preferred: int, host: str = "127.0.0.1") -> int:
    """``preferred`` when it can be bound on ``host``, else a free port."""
    with socket.socket() as s:
        # as the servers bind: connections of an earlier run in TIME_WAIT do not block it
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, preferred))
        except OSError:
            s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until(what: str, ready: Callable[[], bool], *, timeout_s: float,
               proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``ready`` (OSError counts as not ready); raise TimeoutError, or RuntimeError when
    ``proc`` exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        with contextlib.suppress(OSError):
            if ready():
                return
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout_s:.0f} s")


def http_ok(url: str) -> bool:
    """True when ``url`` answers 200 within a second."""
    with urllib.request.urlopen(url, timeout=1) as resp:
        return bool(resp.status == 200)


def haproxy_command(edge: EdgeConfig, directory: Path) -> list[str]:
    """Write ``edge`` (rendered from the template) to ``directory/haproxy.cfg``, have
    ``haproxy -c`` check it, and return the command running it in the foreground.
    RuntimeError when haproxy is not installed or refuses the configuration."""
    binary = shutil.which("haproxy")
    if binary is None:
        raise RuntimeError("haproxy not found (apt-get install haproxy)")
    config = directory / "haproxy.cfg"
    config.write_text(render(edge, default_template()))
    check = subprocess.run([binary, "-c", "-q", "-f", str(config)], capture_output=True,
                           text=True, check=False)
    if check.returncode != 0:
        raise RuntimeError(f"haproxy -c {config}:\n{check.stdout}{check.stderr}")
    return [binary, "-db", "-f", str(config)]
