"""``acgs serve`` on an address already in use: one line naming the setting, exit 2 (as every
configuration error), and before the start-up (database, migrations, tokens, fleet) runs.

It used to be a traceback after all that: ``RuntimeError: Failed to bind to address ...``
for the gRPC port, ``OSError: [Errno 98] Address already in use`` for the metrics one."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from acgs.entrypoints.grpc_server import GrpcServer
from acgs.errors import ConfigurationError
from acgs.listen import why_not

from tests.plugins.servers import REPO, free_port


@pytest.fixture
def taken() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        yield int(other.getsockname()[1])


NO_DATABASE = {"ACGS_AUDIT_ENABLED": "false", "ACGS_AUTH": "none"}  # the reviewer's traceback


@pytest.mark.parametrize("setting", ["ACGS_GRPC_ADDR", "ACGS_METRICS_ADDR"])
@pytest.mark.parametrize("extra", [{}, NO_DATABASE], ids=["unreachable-database", "no-database"])
def test_serve_on_an_address_in_use_is_one_line_and_exit_2_before_the_database(
        taken: int, tmp_path: Path, setting: str, extra: dict[str, str]) -> None:
    closed = free_port()  # nothing listens there: a start-up that got to the database would
    # fail on it (or wait), not on the address
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'service'}{os.pathsep}{REPO}",
           "ACGS_ENV": "development", "ACGS_DATA_DIR": str(tmp_path / "data"),
           "ACGS_POLICY_DIR": str(REPO / "policy"),
           "ACGS_DATABASE_URL": f"postgresql://acgs@127.0.0.1:{closed}/acgs?connect_timeout=1",
           "ACGS_GRPC_ADDR": f"127.0.0.1:{free_port()}",
           "ACGS_METRICS_ADDR": f"127.0.0.1:{free_port()}"}
    env.pop("ACGS_REDIS_URL", None)
    env.update(extra)
    env[setting] = f"127.0.0.1:{taken}"
    run = subprocess.run([sys.executable, "-m", "acgs.entrypoints.cli", "serve"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2, run.stderr
    assert (f"acgs: error: cannot listen on {setting}=127.0.0.1:{taken} (address in use)\n"
            in run.stderr), run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "data").exists()  # no journal, keys, snapshots or tokens made


def test_the_grpc_server_names_the_setting_when_its_bind_fails(taken: int) -> None:
    """Should the address be taken between the check and the bind."""
    async def start() -> None:
        server = GrpcServer(address=f"127.0.0.1:{taken}", services=[], max_message_bytes=1024)
        await server.start()

    with pytest.raises(ConfigurationError) as caught:
        asyncio.run(start())
    assert str(caught.value) == (f"cannot listen on ACGS_GRPC_ADDR=127.0.0.1:{taken} "
                                 "(address in use)")


def test_the_probe_leaves_free_addresses_alone(taken: int) -> None:
    assert why_not("127.0.0.1:0") is None  # any free port
    assert why_not(f"127.0.0.1:{free_port()}") is None
    assert why_not(f"127.0.0.1:{taken}") == "address in use"
    assert why_not(f":{taken}") == "address in use"  # every address, as the metrics server
    assert why_not("127.0.0.1:port") == "not host:port"
