"""``acgs escalations list|watch|ack|approve|deny``: acgs.v1.Escalations over gRPC.

Like the other admin commands (:mod:`acgs.entrypoints.admin_cli`) they work
against any server of the fleet. The token is ``--token``, else
``$ACGS_TOKEN``, else the admin token of the development tokens file: the
server resolves as whoever the token names, never as a name given here.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

import grpc
from google.protobuf import json_format

from acgs.entrypoints.admin_cli import add_connection_args, channel, fail, metadata
from acgs.v1 import escalations_pb2 as pb
from acgs.v1 import escalations_pb2_grpc as pb_grpc
from acgs.v1 import governance_pb2 as gov_pb

_STATES = ("open", "acknowledged", "approved", "denied", "expired")


def _metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    return metadata(args, role="admin")


def _line(e: pb.Escalation) -> str:
    created = e.created_at.ToDatetime(tzinfo=dt.UTC).isoformat(timespec="seconds")
    expires = e.expires_at.ToDatetime(tzinfo=dt.UTC).isoformat(timespec="seconds")
    return (f"{e.escalation_id} {pb.EscalationState.Name(e.state):12} "
            f"{gov_pb.Severity.Name(e.severity):8} {e.reason:22} tenant={e.tenant_id or '-'} "
            f"principal={e.principal_id or '-'} requester={e.requester_id} "
            f"approvals={len(e.approvals)}/{e.required_approvals} count={e.count or 1} "
            f"created={created} expires={expires}")


def _print(message: Any, args: argparse.Namespace, line: str) -> None:
    if args.json:
        doc: dict[str, Any] = json_format.MessageToDict(message)
        print(json.dumps(doc, sort_keys=True), flush=True)
    else:
        print(line, flush=True)


def cmd_list(args: argparse.Namespace) -> int:
    """Every escalation matching the filters, oldest first."""
    request = pb.ListEscalationsRequest(state=args.state.upper() if args.state else None,
                                        reason=args.reason or "", tenant_id=args.tenant or "",
                                        page_size=500)
    with channel(args) as ch:
        stub = pb_grpc.EscalationsStub(ch)
        try:
            while True:
                page = stub.ListEscalations(request, metadata=_metadata(args), timeout=30)
                for e in page.escalations:
                    _print(e, args, _line(e))
                if not page.next_page_token:
                    return 0
                request.page_token = page.next_page_token
        except grpc.RpcError as err:
            return fail(err, args)


def cmd_watch(args: argparse.Namespace) -> int:
    """Print escalation events as they happen (from --after SEQ to replay); Ctrl-C ends."""
    request = pb.WatchEscalationsRequest(after_seq=args.after or 0, from_now=args.after is None)
    with channel(args) as ch:
        stub = pb_grpc.EscalationsStub(ch)
        try:
            for event in stub.WatchEscalations(request, metadata=_metadata(args)):
                _print(event, args, f"#{event.seq} {event.kind:12} by {event.actor_id}: "
                                    f"{_line(event.escalation)}")
        except grpc.RpcError as err:
            return fail(err, args)
        except KeyboardInterrupt:
            return 0
    return 0


def _change(args: argparse.Namespace, verdict: str | None) -> int:
    with channel(args) as ch:
        stub = pb_grpc.EscalationsStub(ch)
        try:
            if verdict is None:
                e = stub.AcknowledgeEscalation(pb.AcknowledgeEscalationRequest(
                    escalation_id=args.id, comment=args.comment), metadata=_metadata(args),
                    timeout=30)
            else:
                e = stub.ResolveEscalation(pb.ResolveEscalationRequest(
                    escalation_id=args.id, verdict=verdict, comment=args.comment),
                    metadata=_metadata(args), timeout=30)
        except grpc.RpcError as err:
            return fail(err, args)
    _print(e, args, _line(e) + (f" allow={e.approval_decision_id}"
                                if e.approval_decision_id else ""))
    return 0


def register(sub: Any) -> None:
    """Add the ``escalations`` command group to the CLI's sub-parsers."""
    group = sub.add_parser("escalations", help="decisions handed to humans (acgs.v1.Escalations)"
                           ).add_subparsers(dest="escalations_command", required=True)
    listing = group.add_parser("list", help="list escalations, oldest first")
    listing.add_argument("--state", choices=_STATES, help="only in this state (as of now)")
    listing.add_argument("--reason", help="only for this reason (e.g. high_impact_action)")
    listing.add_argument("--tenant", help="only of this tenant")
    listing.set_defaults(func=cmd_list)
    watch = group.add_parser("watch", help="print escalation events as they happen")
    watch.add_argument("--after", type=int, help="replay the events after this seq first")
    watch.set_defaults(func=cmd_watch)
    commands = [listing, watch]
    for name, verdict, text in (("ack", None, "acknowledge an open escalation"),
                                ("approve", "VERDICT_APPROVE", "approve an escalation"),
                                ("deny", "VERDICT_DENY", "deny an escalation")):
        cmd = group.add_parser(name, help=text)
        cmd.add_argument("id", help="the escalation id")
        cmd.add_argument("-m", "--comment", default="", help="why (kept in the audit trail)")
        cmd.set_defaults(func=lambda args, v=verdict: _change(args, v))
        commands.append(cmd)
    for cmd in commands:
        cmd.add_argument("--json", action="store_true", help="one JSON object per line")
        add_connection_args(cmd, role="admin")
