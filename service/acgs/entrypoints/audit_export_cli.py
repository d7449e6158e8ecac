"""``acgs audit export`` and ``acgs audit verify --export``: exports verified offline.

``export`` writes ``acgs.v1.Audit/ExportDecisions`` to a file, one record per
line in the journal's own form (:mod:`acgs.domain.audit_export`).
``verify --export FILE --public-key K`` checks such a file with no database and
no server, trusting only the keys given, exactly as ``VerifyChain`` would.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import grpc

from acgs.adapters.audit_signing import TrustedKeys, load_public_keys
from acgs.domain.audit_export import export_line, read_export, verify_export
from acgs.entrypoints.audit_servicer import record_from_proto, report_to_proto
from acgs.errors import ConfigurationError
from acgs.v1 import audit_pb2, audit_pb2_grpc

Channel = Callable[[argparse.Namespace], grpc.Channel]
Metadata = Callable[[argparse.Namespace], tuple[tuple[str, str], ...]]
Printer = Callable[[str, audit_pb2.VerifyChainResponse], int]


def export(args: argparse.Namespace, *, channel: Channel, metadata: Metadata) -> int:
    """Write every record (of one instance, or all) and the checkpoints kept apart to a file."""
    request = audit_pb2.ExportDecisionsRequest(
        filter=audit_pb2.DecisionFilter(instance_id=args.instance or ""))
    count = 0
    with channel(args) as ch, open(args.out, "w", encoding="utf-8") as out:
        stub = audit_pb2_grpc.AuditStub(ch)
        try:
            for record in stub.ExportDecisions(request, metadata=metadata(args)):
                out.write(export_line(record_from_proto(record)) + "\n")
                count += 1
        except grpc.RpcError as err:
            from acgs.entrypoints.admin_cli import fail  # admin_cli imports this module

            return fail(err, args)
    print(f"exported {count} records to {args.out}", file=sys.stderr)
    return 0


def verify_offline(args: argparse.Namespace, *, show: Printer) -> int:
    """Verify an export file against the given public keys only; 0 when every chain is intact."""
    if not args.public_key:
        raise ConfigurationError("--export needs --public-key (the keys you trust to have "
                                 "signed the checkpoints; a server's is audit-signing-key.pub.pem)")
    keys = TrustedKeys(keys=load_public_keys([Path(p) for p in args.public_key],
                                             setting="--public-key"), source="--public-key")
    try:
        with open(args.export, encoding="utf-8") as f:
            chains = read_export(f)
    except (OSError, ValueError) as err:
        raise ConfigurationError(f"--export {args.export}: {err}") from err
    if not chains:
        print("the export holds no records")
        return 1
    broken = 0
    for report in verify_export(chains, keys):
        broken += show(report.instance_id, report_to_proto(report))
    print(f"trusted: {keys.trust}")
    return 1 if broken else 0
