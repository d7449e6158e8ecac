"""Where load goes: a server's own port (``direct``) or HAProxy in front of it (``haproxy``).

HAProxy runs the project's own configuration: :func:`acgs.edge.render` of
``haproxy/haproxy.cfg.tmpl`` with one upstream (the server's gRPC port, health-checked
with GET /ready on its metrics port) and :func:`acgs.edge.make_tls`'s certificate, checked
with ``haproxy -c`` and started in the foreground as ``make stack`` does
(:mod:`acgs.entrypoints.stack`). Load goes to the cleartext HTTP/2 (h2c) listener; the
TLS listener the template requires is bound but idle. HAProxy runs on the load
generator's CPUs (it sizes its threads by them) and stops with the server.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path

from acgs.edge import EdgeConfig, Upstream, make_tls
from acgs.entrypoints.stack_procs import haproxy_command, wait_until

from bench.server import Server, free_port, proc_cpu_s, terminate

TARGETS = ("direct", "haproxy")


class Edge:
    """HAProxy in front of one :class:`~bench.server.Server`. ``start`` returns once HAProxy
    reports the server UP with its last health check (GET /ready) passed."""

    def __init__(self, server: Server, *, cpus: set[int] | None) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix=f"acgs-bench-edge-{server.name}-"))
        self.upstream = Upstream(f"bench-{server.name}", f"127.0.0.1:{server.port}",
                                 server.metrics_port)
        self.config = EdgeConfig(
            upstreams=[self.upstream], certificate=self._dir / "server.pem",  # make_tls's
            tls_addr=f"127.0.0.1:{free_port()}", h2c_addr=f"127.0.0.1:{free_port()}",
            stats_addr=f"127.0.0.1:{free_port()}")
        self.log_path = self._dir / "haproxy.log"
        self._cpus = cpus
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def h2c(self) -> tuple[str, int]:
        assert self.config.h2c_addr is not None
        host, _, port = self.config.h2c_addr.rpartition(":")
        return host, int(port)

    def start(self, timeout_s: float = 15.0) -> Edge:
        try:
            self._launch()
            wait_until("haproxy's check of the server", self._checked, timeout_s=timeout_s,
                       proc=self.proc)
        except BaseException as err:
            tail = self.log_path.read_text(errors="replace")[-3000:] if self.proc else ""
            self.stop()
            if isinstance(err, Exception):
                raise RuntimeError(f"HAProxy in front of {self.upstream.name}: {err}\n"
                                   f"{tail}") from err
            raise
        return self

    def _launch(self) -> None:
        """Render the configuration, ``haproxy -c`` it, start HAProxy in the foreground."""
        make_tls(self._dir)
        command = haproxy_command(self.config, self._dir)
        cpus = self._cpus
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)

    def _checked(self) -> bool:
        """The server is UP and HAProxy's last check of it was an HTTP 200 (L7OK), not only
        the state HAProxy starts servers in."""
        url = f"http://{self.config.stats_addr}/stats;csv"
        with urllib.request.urlopen(url, timeout=1) as resp:
            rows = csv.DictReader(io.StringIO(resp.read().decode().removeprefix("# ")))
            return any(r["pxname"] == "acgs_unary" and r["svname"] == self.upstream.name
                       and r["status"] == "UP" and r["check_status"] == "L7OK" for r in rows)

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 10 s) to this HAProxy; remove its directory."""
        terminate(self.proc, 10)
        shutil.rmtree(self._dir, ignore_errors=True)

    def cpu_s(self) -> float:
        """HAProxy's user + system CPU seconds so far (every thread)."""
        return proc_cpu_s(self.pid)

    def threads(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(status.split("Threads:", 1)[1].split()[0])


def endpoint(server: Server, target: str, *, cpus: set[int] | None = None) -> tuple[str, int]:
    """Where load goes. ``direct``: the server's own port. ``haproxy``: the h2c listener of
    an HAProxy in front of ``server`` (started on ``cpus`` at the first call, stopped by
    ``server.stop()``; its CPU time is ``server.edge.cpu_s()``)."""
    if target == "direct":
        return "127.0.0.1", server.port
    if target == "haproxy":
        if server.edge is None:
            server.edge = Edge(server, cpus=cpus).start()
        return server.edge.h2c
    raise ValueError(f"unknown target {target!r} (known: {', '.join(TARGETS)})")
