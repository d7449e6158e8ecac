"""Server memory stays flat under repeated decisions (a native leak guard)."""

from __future__ import annotations

from tests.client import allow_input
from tests.plugins.servers import ServerFactory


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_rss_is_flat_after_warm_up(servers: ServerFactory) -> None:
    # Cache off and audit off: every call evaluates, and nothing is meant to grow.
    server = servers.start({"ACGS_CACHE_LOCAL_SIZE": "0", "ACGS_AUDIT_ENABLED": "false"})
    assert server.proc is not None
    with server.client(timeout_s=10) as acgs:

        def run(n: int, offset: int) -> None:
            for i in range(n):
                doc = allow_input()
                doc["principal"]["id"] = f"agent-{offset + i}"
                acgs.decide(**{k: doc[k] for k in ("tenant_id", "principal", "action",
                                                   "resource", "context")})

        run(500, 0)
        before = _rss_mb(server.proc.pid)
        run(3000, 500)
        after = _rss_mb(server.proc.pid)
    # A leak of the kind seen (28 KB per evaluation) would add about 80 MB here.
    assert after - before < 15, f"RSS grew from {before:.0f} MB to {after:.0f} MB"
