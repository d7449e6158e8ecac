"""The ``acgs`` command line: serve, and the admin commands.

Each sub-command is a small function; the parser only routes to them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from acgs.config import Settings
from acgs.entrypoints import admin_cli, escalations_cli, policy_cli, token_cli
from acgs.errors import AcgsError
from acgs.sealed_env import seal_environment

logger = logging.getLogger("acgs.cli")


async def _serve(settings: Settings) -> int:
    from acgs import lifecycle  # imported here: the other commands need no server stack
    from acgs.lifecycle.callers import dev_token_help

    app = await lifecycle.build(settings)
    await app.start()
    # Everything made so far (modules, descriptors, the compiled policy, pools) lives as
    # long as the process: move it out of the collector's way. Otherwise every full
    # collection walks those ~55,000 objects while no call is answered: 15-30 ms pauses
    # here, every 10-30 s under load, which alone put p99 at 1,000 decisions/s over 5 ms.
    gc.collect()
    gc.freeze()
    print(
        f"acgs: serving on {settings.grpc_addr.rsplit(':', 1)[0]}:{app.port} "
        f"(policy {app.engine.policy.revision}, metrics http://{settings.metrics_addr}/metrics)",
        flush=True,
    )
    if app.dev_tokens_file is not None:
        address = f"{settings.grpc_addr.rsplit(':', 1)[0]}:{app.port}"
        print(dev_token_help(app.dev_tokens_file, address, tls=settings.tls_cert is not None),
              flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info("signal received: draining")
    await app.stop()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    return asyncio.run(_serve(serve_settings()))


def serve_settings() -> Settings:
    """Read the settings, then seal the environment (before any policy is loaded)."""
    from acgs.adapters.regopy_binding import check_binding  # loads regopy: serve only

    settings = Settings.from_env()
    check_binding()
    removed = seal_environment(os.environ, [settings.database_url or "",
                                            settings.redis_url or ""])
    logger.info("removed %d variable(s) from the environment: %s", len(removed),
                ", ".join(removed))
    return settings


def cmd_policy_test(args: argparse.Namespace) -> int:
    from acgs.adapters.rego_tests import run_policy_tests

    if args.against_opa:
        return policy_cli.cmd_against_opa(args)
    return run_policy_tests(Path(args.dir), out=sys.stdout, verbose=args.verbose)


def cmd_migrate(args: argparse.Namespace) -> int:
    from acgs.lifecycle.database import migrate_database

    settings = Settings.from_env()
    applied = asyncio.run(migrate_database(settings))
    print(f"acgs: database at the constitution {settings.constitutional_hash}; "
          f"applied {len(applied)} migration(s): {', '.join(applied) or 'none (up to date)'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="acgs", description="ACGS-2 governance decision service")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve decisions over gRPC (settings from ACGS_*)")
    serve.set_defaults(func=cmd_serve)
    migrate = sub.add_parser("migrate", help="apply the SQL migrations (ACGS_DATABASE_URL)")
    migrate.set_defaults(func=cmd_migrate)
    admin_cli.register(sub)
    escalations_cli.register(sub)
    token_cli.register(sub)
    policy = sub.add_parser("policy", help="policy commands").add_subparsers(
        dest="policy_command", required=True
    )
    test = policy.add_parser("test", help="run the Rego unit tests (test_* rules) of a policy dir")
    test.add_argument("dir", nargs="?", default="policy",
                      help="policy directory; with --against-opa also a stored revision")
    test.add_argument("-v", "--verbose", action="store_true")
    test.add_argument("--against-opa", action="store_true",
                      help="compare the decision rule's answers with OPA's (needs opa_bindings)")
    test.add_argument("--samples", type=int, default=10_000,
                      help="requests to compare with --against-opa (10000)")
    test.add_argument("--seed", type=int, default=0, help="their random seed (0)")
    admin_cli.add_connection_args(test, role="admin")  # to fetch a stored revision
    test.set_defaults(func=cmd_policy_test)
    policy_cli.register(policy)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        code: int = args.func(args)
    except AcgsError as err:
        print(f"acgs: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
