"""Admin commands of the ``acgs`` CLI that talk to a server over gRPC.

They use the same API as any other client (``acgs.v1.Audit``, …), so they work
against any server of the fleet, local or behind HAProxy.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import grpc

from acgs import CONSTITUTIONAL_HASH
from acgs.adapters import dev_tokens
from acgs.entrypoints import audit_events_cli, audit_export_cli
from acgs.v1 import audit_pb2, audit_pb2_grpc


def add_connection_args(parser: argparse.ArgumentParser, *, role: str = "auditor") -> None:
    """--addr, --cacert and --token for a command that calls a server with ``role``'s token
    (the one :func:`metadata` is given: each command's help names its own)."""
    parser.add_argument("--addr", default=os.environ.get("ACGS_ADDR", "localhost:50051"),
                        help="server address (default: $ACGS_ADDR or localhost:50051)")
    parser.add_argument("--cacert", default=os.environ.get("ACGS_CACERT"),
                        help="CA certificate (PEM) to verify the server's TLS certificate "
                             "with (default: $ACGS_CACERT); plaintext when neither is given")
    parser.add_argument("--token", default=None,
                        help=f"bearer token (default: $ACGS_TOKEN, else the {role} token of "
                             "$ACGS_DATA_DIR/dev-tokens when that file exists)")


def channel(args: argparse.Namespace) -> grpc.Channel:
    if args.cacert:
        with open(args.cacert, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        return grpc.secure_channel(args.addr, creds)
    return grpc.insecure_channel(args.addr)


def token(args: argparse.Namespace, *, role: str = "auditor") -> str | None:
    """--token, else $ACGS_TOKEN, else ``role``'s token in the development tokens file.

    Notes on ``args`` where it came from and the role the command uses, for :func:`fail`."""
    args.token_role = role
    if args.token:
        args.token_from = "--token"
        return str(args.token)
    if os.environ.get("ACGS_TOKEN"):
        args.token_from = "$ACGS_TOKEN"
        return os.environ["ACGS_TOKEN"]
    path = Path(os.environ.get("ACGS_DATA_DIR") or ".acgs") / "dev-tokens"
    args.token_from = str(path)
    try:
        return dev_tokens.read(path).get(role)
    except OSError:
        return None


def metadata(args: argparse.Namespace, *, role: str = "auditor") -> tuple[tuple[str, str], ...]:
    """The constitutional hash and ``role``'s bearer token (see :func:`token`) for a call."""
    md = [("x-constitutional-hash", CONSTITUTIONAL_HASH)]
    bearer = token(args, role=role)
    if bearer:
        md.append(("authorization", f"Bearer {bearer}"))
    return tuple(md)


_REFUSALS = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)


def fail(err: grpc.RpcError, args: argparse.Namespace | None = None) -> int:
    """Report a failed call on stderr; the exit status of a command that made it.

    A refused token that came from $ACGS_TOKEN (not --token) is said to have: a shell may
    still hold another role's token there, and the command then never used the one its
    help names."""
    code: grpc.StatusCode = err.code()  # type: ignore[attr-defined]
    note = ""
    if code in _REFUSALS and args is not None and getattr(args, "token_from", "") == "$ACGS_TOKEN":
        role = getattr(args, "token_role", "auditor")
        note = (f" (the token came from $ACGS_TOKEN; this command needs an {role} token: "
                "pass one with --token, or set ACGS_TOKEN to one)")
    print(f"acgs: {code.name}: {err.details()}{note}", file=sys.stderr)  # type: ignore[attr-defined]
    return 1


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Verify every chain (or one), or an export offline: exit 0 when all are intact, else 1."""
    if args.export:
        return audit_export_cli.verify_offline(args, show=_print_report)
    trust = ""
    with channel(args) as ch:
        stub = audit_pb2_grpc.AuditStub(ch)
        try:
            if args.instance:
                names = [args.instance]
            else:
                chains = stub.ListChains(audit_pb2.ListChainsRequest(), metadata=metadata(args))
                names = [c.instance_id for c in chains.chains]
            broken = 0
            for name in names:
                report = stub.VerifyChain(
                    audit_pb2.VerifyChainRequest(instance_id=name), metadata=metadata(args)
                )
                broken += _print_report(name, report)
                trust = report.trust
        except grpc.RpcError as err:
            return fail(err, args)
    if not names:
        print("no audit chains yet")
    elif trust:
        print(f"trusted: {trust}")
    return 1 if broken else 0


def cmd_audit_export(args: argparse.Namespace) -> int:
    return audit_export_cli.export(args, channel=channel, metadata=metadata)


def _print_report(name: str, report: audit_pb2.VerifyChainResponse) -> int:
    for q in report.quarantined:
        print(f"{name}: seq {q.seq} QUARANTINED ({q.source}): {q.reason}")
    if report.ok:
        signed = (f", checkpoint signed at seq {report.checkpoint_seq}"
                  if report.checkpoint_seq else "")
        print(f"{name}: ok ({report.records_checked} records, last seq {report.last_seq}"
              f"{signed})")
    else:
        print(f"{name}: BROKEN at seq {report.broken_seq}: {report.reason} — {report.detail}")
    for note in report.notes:
        print(f"  note: {note}")
    if report.keys_used:
        print(f"  signed by key(s): {', '.join(report.keys_used)}")
    return 0 if report.ok else 1


def register(sub: Any) -> None:
    """Add the ``audit`` command group to the CLI's sub-parsers."""
    audit = sub.add_parser("audit", help="read and verify the audit trail (acgs.v1.Audit)")
    group = audit.add_subparsers(dest="audit_command", required=True)
    verify = group.add_parser("verify", help="verify the hash chains and their signed "
                              "checkpoints (online, or an export offline); exit 1 if broken")
    which = verify.add_mutually_exclusive_group()
    which.add_argument("--instance", help="one instance's chain")
    which.add_argument("--all", action="store_true", help="every chain (the default)")
    which.add_argument("--export", metavar="FILE",
                       help="verify an `acgs audit export` file offline: no server, no database")
    verify.add_argument("--public-key", action="append", metavar="PEM",
                        help="with --export: a public key trusted to sign checkpoints (repeat)")
    add_connection_args(verify)
    verify.set_defaults(func=cmd_audit_verify)
    export = group.add_parser("export", help="write the trail (ExportDecisions) to a file "
                              "that `acgs audit verify --export` checks offline")
    export.add_argument("--instance", help="one instance's chain (default: all)")
    export.add_argument("-o", "--out", required=True, help="the file to write")
    add_connection_args(export)
    export.set_defaults(func=cmd_audit_export)
    tail = group.add_parser("tail", help="show the latest events (decisions, escalations, "
                            "policy and token changes...), one line each (ListEvents)")
    tail.add_argument("-n", type=int, default=20, help="how many (default 20)")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new ones")
    audit_events_cli.add_filter_args(tail, default_since="1h")
    add_connection_args(tail)
    tail.set_defaults(func=lambda a: audit_events_cli.cmd_tail(a, channel=channel,
                                                               metadata=metadata))
    listing = group.add_parser("events", help="list events (ListEvents): a page, or --all")
    audit_events_cli.add_filter_args(listing, default_since=None)
    listing.add_argument("--all", action="store_true", help="every page, not just the first")
    listing.add_argument("--page-size", type=int, default=100, help="events a page (100)")
    listing.add_argument("--page-token", default="", help="the page to read (printed after "
                         "the previous one)")
    add_connection_args(listing)
    listing.set_defaults(func=lambda a: audit_events_cli.cmd_events(a, channel=channel,
                                                                    metadata=metadata))
