"""A local stack on loopback: HAProxy (TLS), three API servers, PostgreSQL, Redis, Prometheus.

``python3 -m acgs.entrypoints.stack up`` (``make stack``) starts it under
``.acgs/stack/`` and returns; ``down`` (``make stack-down``) stops it; ``render``
prints a haproxy.cfg for given servers (the production path). PostgreSQL and Redis
come from ``ACGS_DATABASE_URL`` / ``ACGS_REDIS_URL`` when set, else throwaway local
ones (pgserver's PostgreSQL under ``.acgs/stack/pg``, ``redis-server`` without
persistence). A private CA signs HAProxy's certificate (``ca.pem``, ``server.pem``).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import urllib.request
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg

from acgs import CONSTITUTIONAL_HASH
from acgs.edge import EdgeConfig, Upstream, default_template, make_tls, render
from acgs.entrypoints.stack_procs import Processes, haproxy_command, http_ok, port, wait_until

logger = logging.getLogger("acgs.stack")

REPO = Path(__file__).resolve().parents[3]
PROMETHEUS = REPO / "observability" / "prometheus"
DECIDE_JSON = ('{"request_id": "stack-1", "tenant_id": "t1", '
               '"principal": {"id": "agent-7", "roles": ["operator"], "tenant_id": "t1"}, '
               '"action": {"type": "read"}, '
               '"resource": {"type": "document", "id": "d1", "tenant_id": "t1"}}')


def up(directory: Path, *, servers: int, env: Mapping[str, str]) -> dict[str, Any]:
    """Start everything (stopping what started if one part fails); return the endpoints."""
    directory = directory.resolve()  # configs name files that their programs resolve elsewhere
    procs = Processes(directory / "pids", directory / "logs")
    if procs.alive():
        raise RuntimeError(f"a stack is already running ({procs.pids_file}); make stack-down")
    procs.pids_file.unlink(missing_ok=True)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        return _start(directory, procs, servers=servers, env=env)
    except BaseException:
        procs.stop_recorded(timeout_s=10)
        raise


def _start(directory: Path, procs: Processes, *, servers: int,
           env: Mapping[str, str]) -> dict[str, Any]:
    tls = make_tls(directory)
    database = env.get("ACGS_DATABASE_URL") or _postgres(directory / "pg", procs)
    redis = env.get("ACGS_REDIS_URL") or _redis(directory, procs)
    # The first server alone (it migrates and, in development, issues the tokens), then the rest.
    run = secrets.token_hex(2)
    started = [_server(1, run, directory, procs, env=env, database=database, redis=redis)]
    _wait_ready(started)
    started += [_server(i, run, directory, procs, env=env, database=database, redis=redis)
                for i in range(2, servers + 1)]
    _wait_ready(started[1:])
    upstreams = [u for u, _ in started]
    edge = EdgeConfig(upstreams=upstreams, certificate=tls.server_pem,
                      tls_addr=f"127.0.0.1:{port(8443)}", h2c_addr=f"127.0.0.1:{port(8080)}",
                      stats_addr=f"127.0.0.1:{port(8405)}")
    _haproxy(directory, procs, edge)
    prometheus = _prometheus(directory, procs, edge)
    tokens = directory / "data" / "dev-tokens"
    endpoints = {
        "tokens": str(tokens) if tokens.exists() else None,
        "tls": edge.tls_addr, "h2c": edge.h2c_addr, "haproxy_stats": edge.stats_addr,
        "prometheus": prometheus, "ca": str(tls.ca), "database": database, "redis": redis,
        "servers": [{"name": u.name, "grpc": u.grpc_addr, "metrics": u.ready_port}
                    for u in upstreams],
    }
    (directory / "endpoints.json").write_text(json.dumps(endpoints, indent=2) + "\n")
    return endpoints


def _wait_ready(started: list[tuple[Upstream, subprocess.Popen[bytes]]]) -> None:
    """Until each server's /ready answers 200: policy loaded, stores reached, gRPC SERVING."""
    for u, proc in started:
        ready = f"http://127.0.0.1:{u.ready_port}/ready"
        wait_until(f"server {u.name}", functools.partial(http_ok, ready), timeout_s=90,
                   proc=proc)


def _postgres(directory: Path, procs: Processes) -> str:
    with warnings.catch_warnings():  # platformdirs warns at import without XDG_RUNTIME_DIR
        warnings.simplefilter("ignore")
        from pgserver.postgres_server import get_server
    server = get_server(directory.resolve(), cleanup_mode=None)  # outlives this process
    pid = server.get_pid()
    if pid is None:
        raise RuntimeError(f"PostgreSQL under {directory} did not start; see {directory}/log")
    procs.record("postgres", pid)
    admin = str(server.get_uri("postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'acgs'").fetchone() is None:
            conn.execute("CREATE DATABASE acgs")
    return str(server.get_uri("acgs"))


def _redis(directory: Path, procs: Processes) -> str | None:
    binary = shutil.which("redis-server")
    if binary is None:
        logger.warning("redis-server not found (apt-get install redis-server): the servers "
                       "run with their in-process cache only")
        return None
    p = port(6380)
    proc = procs.spawn("redis", [binary, "--bind", "127.0.0.1", "--port", str(p), "--save", "",
                                 "--appendonly", "no", "--dir", str(directory)])
    wait_until("redis", lambda: _redis_ping(p), timeout_s=10, proc=proc)
    return f"redis://127.0.0.1:{p}/0"


def _redis_ping(p: int) -> bool:
    with socket.create_connection(("127.0.0.1", p), timeout=1) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")


def _server(i: int, run: str, directory: Path, procs: Processes, *, env: Mapping[str, str],
            database: str, redis: str | None) -> tuple[Upstream, subprocess.Popen[bytes]]:
    grpc_port, metrics_port = port(50050 + i), port(9463 + i)
    # A new instance id per run: the journals of an earlier run are then orphans that the
    # new servers adopt and ship, not journals two runs would both claim.
    name = f"stack-{i}-{run}"
    server_env = {
        **env, "ACGS_GRPC_ADDR": f"127.0.0.1:{grpc_port}",
        "ACGS_METRICS_ADDR": f"127.0.0.1:{metrics_port}", "ACGS_INSTANCE_ID": name,
        "ACGS_DATA_DIR": str(directory / "data"), "ACGS_DATABASE_URL": database,
        "ACGS_REDIS_URL": redis or "", "ACGS_DRAIN_DELAY_S": env.get("ACGS_DRAIN_DELAY_S") or "1.5",
        "ACGS_POLICY_DIR": env.get("ACGS_POLICY_DIR") or str(REPO / "policy"),
        "PYTHONPATH": os.pathsep.join([str(REPO / "service"), str(REPO)]),
    }
    proc = procs.spawn(f"server-{i}", [sys.executable, "-m", "acgs.entrypoints.cli", "serve"],
                       env=server_env, cwd=REPO)
    return Upstream(name, f"127.0.0.1:{grpc_port}", metrics_port), proc


def _haproxy(directory: Path, procs: Processes, edge: EdgeConfig) -> None:
    proc = procs.spawn("haproxy", haproxy_command(edge, directory))
    stats = f"http://{edge.stats_addr}/stats;csv"
    wait_until("haproxy", lambda: _all_up(stats, len(edge.upstreams)), timeout_s=15, proc=proc)


def _all_up(stats_url: str, n: int) -> bool:
    with urllib.request.urlopen(stats_url, timeout=1) as resp:
        rows = resp.read().decode().splitlines()
    # One row per server, plus the backend's own summary row (also UP), which is not counted.
    servers = [r for r in rows if r.startswith("acgs_unary,")
               and r.split(",", 2)[1] not in ("FRONTEND", "BACKEND")]
    return sum(",UP," in r for r in servers) == n


def _prometheus(directory: Path, procs: Processes, edge: EdgeConfig) -> str | None:
    """observability/prometheus/prometheus.yml with this stack's targets and 5 s scrapes."""
    binary = shutil.which("prometheus")
    if binary is None:
        logger.warning("prometheus not found (apt-get install prometheus): not started")
        return None
    import yaml  # type: ignore[import-untyped]  # a dev dependency; only this command needs it

    config: dict[str, Any] = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="5s", evaluation_interval="5s")
    config["rule_files"] = [str(PROMETHEUS / f) for f in config["rule_files"]]
    home = directory / "prometheus"
    home.mkdir(exist_ok=True)
    targets = [{"targets": [f"127.0.0.1:{u.ready_port}" for u in edge.upstreams],
                "labels": {"environment": "stack"}}]
    (home / "acgs.json").write_text(json.dumps(targets))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["acgs"]["file_sd_configs"] = [{"files": [str(home / "acgs.json")]}]
    jobs["haproxy"]["static_configs"] = [{"targets": [edge.stats_addr]}]
    config["scrape_configs"] = [jobs["acgs"], jobs["haproxy"]]  # no exporters in this stack
    (home / "prometheus.yml").write_text(json.dumps(config, indent=2))  # JSON is YAML
    address = f"127.0.0.1:{port(9090)}"
    proc = procs.spawn("prometheus", [
        binary, f"--config.file={home / 'prometheus.yml'}", f"--web.listen-address={address}",
        f"--storage.tsdb.path={home / 'data'}", "--storage.tsdb.retention.time=1d"])
    wait_until("prometheus", lambda: http_ok(f"http://{address}/-/ready"), timeout_s=30,
               proc=proc)
    return f"http://{address}"


def describe(e: Mapping[str, Any], directory: Path) -> str:
    """What ``make stack`` prints: the endpoints and how to call through HAProxy."""
    tls_port = str(e["tls"]).rsplit(":", 1)[1]
    ca = os.path.relpath(e["ca"])
    lines = [
        f"ACGS-2 stack up (state and logs in {directory}; stop it with `make stack-down`)",
        f"  gRPC via HAProxy, TLS  : localhost:{tls_port}   (CA: {ca})",
        f"  gRPC via HAProxy, h2c  : {e['h2c']}",
        f"  HAProxy stats, metrics : http://{e['haproxy_stats']}/stats  /metrics",
        f"  Prometheus             : {e['prometheus'] or 'not started (no prometheus binary)'}",
        *(f"  server {s['name']:<15} : {s['grpc']}  http://127.0.0.1:{s['metrics']}/metrics "
          "/ready" for s in e["servers"]),
        f"  PostgreSQL             : {e['database']}",
        f"  Redis                  : {e['redis'] or 'none (in-process caches only)'}",
        "",
        "Call through HAProxy (TLS; every call but health and reflection needs the hash):",
        *([f"  source {os.path.relpath(e['tokens'])}   # a development token per role"]
          if e.get("tokens") else []),
        f"  grpcurl -cacert {ca} -H 'x-constitutional-hash: {CONSTITUTIONAL_HASH}' \\",
        *(['    -H "authorization: Bearer $ACGS_AGENT_TOKEN" \\'] if e.get("tokens") else []),
        f"    -d '{DECIDE_JSON}' \\",
        f"    localhost:{tls_port} acgs.v1.Governance/Decide",
        f"  grpcurl -cacert {ca} localhost:{tls_port} grpc.health.v1.Health/Check",
        *([] if e.get("tokens") else ["No tokens: the servers run with ACGS_AUTH=none."]),
    ]
    return "\n".join(lines)


def _render(args: argparse.Namespace) -> int:
    upstreams = []
    for spec in args.server:  # name=host:port/ready_port
        name, _, rest = spec.partition("=")
        addr, _, ready = rest.partition("/")
        upstreams.append(Upstream(name, addr, int(ready or 0)))
    config = EdgeConfig(upstreams=upstreams, certificate=Path(args.certificate),
                        tls_addr=args.tls_addr, h2c_addr=args.h2c_addr,
                        stats_addr=args.stats_addr)
    sys.stdout.write(render(config, default_template()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m acgs.entrypoints.stack",
                                     description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--dir", type=Path, default=Path(".acgs/stack"))
    sub = parser.add_subparsers(dest="command", required=True)
    up_cmd = sub.add_parser("up", help="start the stack and print its endpoints")
    up_cmd.add_argument("--servers", type=int, default=3)
    sub.add_parser("down", help="stop every process the stack started")
    r = sub.add_parser("render", help="print a haproxy.cfg from haproxy/haproxy.cfg.tmpl")
    r.add_argument("--server", action="append", required=True,
                   help="name=host:grpc_port/metrics_port (repeat per server)")
    r.add_argument("--certificate", required=True, help="PEM: certificate chain, then key")
    r.add_argument("--tls-addr", default="0.0.0.0:8443")
    r.add_argument("--h2c-addr", default=None)
    r.add_argument("--stats-addr", default="127.0.0.1:8405")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    if args.command == "render":
        return _render(args)
    if args.command == "down":
        Processes(args.dir / "pids", args.dir / "logs").stop_recorded()
        print(f"stack in {args.dir} stopped")
        return 0
    try:
        endpoints = up(args.dir, servers=args.servers, env=os.environ)
    except (RuntimeError, TimeoutError, OSError, psycopg.Error) as err:
        print(f"stack: {err}\n(logs in {args.dir / 'logs'})", file=sys.stderr)
        return 1
    print(describe(endpoints, args.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
