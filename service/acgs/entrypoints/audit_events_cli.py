"""``acgs audit tail`` and ``acgs audit events``: the trail's events, one line each.

Both read ``acgs.v1.Audit/ListEvents`` (an auditor's token), filtered by kind,
actor, chain and time. ``tail`` prints the last ``-n`` events since ``--since``,
then with ``--follow`` polls each chain after the last seq it has seen
(``ListChains`` names the chains and their last seq; ``filter.after_seq``): a
chain reaches PostgreSQL in seq order, so no event is missed, however late it
arrives (a server that was offline), and none is printed twice. A line reads:
time, chain#seq, event kind (a legacy record by the event it is), actor (caller
id/role) and a short summary of the payload; ``--json`` prints each record whole.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import json_format

from acgs.domain import events, tokens
from acgs.v1 import audit_pb2, audit_pb2_grpc
from acgs.v1 import governance_pb2 as gov_pb

Channel = Callable[[argparse.Namespace], grpc.Channel]
Metadata = Callable[[argparse.Namespace], tuple[tuple[str, str], ...]]
POLL_S = 1.0
PAGE = 500


def since(text: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """``--since``: an ISO 8601 time (UTC when it names no zone) or a duration ago (30m);
    ValueError for anything else."""
    try:
        return (now or dt.datetime.now(dt.UTC)) - tokens.parse_duration(text)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError as err:
        raise ValueError(f"--since {text!r} is neither a time (2026-12-03T10:00:00Z) nor a "
                         "duration ago (90s, 30m, 12h, 7d)") from err
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def kinds(values: list[str] | None) -> list[str]:
    """``--kind a,b --kind c`` as one list (the server names an unknown kind)."""
    return [k.strip() for v in values or () for k in v.split(",") if k.strip()]


def event_filter(args: argparse.Namespace) -> audit_pb2.EventFilter:
    f = audit_pb2.EventFilter(kinds=kinds(args.kind), actor=args.actor or "",
                              instance_id=args.instance or "")
    if args.since:
        f.since.FromDatetime(since(args.since))
    return f


def pages(stub: audit_pb2_grpc.AuditStub, metadata: tuple[tuple[str, str], ...],
          where: audit_pb2.EventFilter, token: str = "", *, page_size: int = PAGE
          ) -> Iterator[audit_pb2.ListEventsResponse]:
    """Every page from ``token`` to the last one there is now."""
    while True:
        page = stub.ListEvents(audit_pb2.ListEventsRequest(
            filter=where, page_size=page_size, page_token=token), metadata=metadata, timeout=30)
        yield page
        token = page.next_page_token
        if not token:
            return


def summary(r: audit_pb2.AuditRecord) -> str:
    """What happened, in a few words (never raises: an undecodable payload says so)."""
    try:
        event = events.decode(r.kind, r.data) if r.schema >= 1 else None
    except events.EventError as err:
        return f"undecodable data ({err})"
    if isinstance(event, events.TokenCreated):
        expires = event.expires_at.isoformat(timespec="seconds") if event.expires_at else "never"
        return (f"token {event.token_id} {event.name!r} role={event.role} "
                f"identity={event.identity or '-'} expires={expires}")
    if isinstance(event, events.TokenRevoked):
        return f"token {event.token_id} {event.name!r}"
    if isinstance(event, events.PolicyVersionCreated):
        return (f"revision {event.revision[:12]} {event.name} {event.version} "
                f"signed={str(event.signed).lower()} tests={event.tests_passed} "
                f"message={event.message!r}")
    if isinstance(event, events.PolicyVersionSigned):
        return (f"revision {event.revision[:12]} {event.name} {event.version} signed "
                f"message={event.message!r}")
    if isinstance(event, events.PolicyActivated):
        return (f"revision {event.revision[:12]} (was {event.previous_revision[:12] or '-'}) "
                f"history#{event.history_seq} message={event.message!r}")
    if isinstance(event, events.PolicyRolledBack):
        return (f"revision {event.revision[:12]} (rolled back "
                f"{event.rolled_back_revision[:12]}) history#{event.history_seq} "
                f"reason={event.reason!r}")
    if isinstance(event, events.PolicyShadowStarted):
        return (f"shadowing revision {event.revision[:12]} sample={event.sample:g} "
                f"examples={event.examples} generation={event.generation}")
    if isinstance(event, events.PolicyShadowStopped):
        return f"shadow stopped generation={event.generation}"
    if isinstance(event, events.EscalationOpened):  # incidents too
        e = event.escalation
        return (f"escalation {e.id} reason={e.reason} decision={e.decision_id or '-'} "
                f"tenant={e.tenant_id or '-'}")
    if isinstance(event, events.EscalationChanged):
        by = event.resolved_by or event.acknowledged_by or "-"
        return (f"escalation {event.escalation_id} {event.change}: {event.from_state.value} -> "
                f"{event.state.value} by={by}")
    if isinstance(event, events.ApprovalOf):
        return (f"ALLOW approving escalation {event.escalation_id} "
                f"(approvers {', '.join(event.approvers) or '-'}) id={r.decision_id}")
    if r.kind == events.CHECKPOINT:
        return "signed checkpoint of the chain"
    if r.kind == "escalation":  # schema 0: the event is in the request
        try:
            detail = json.loads(r.request_json)["escalation"]
            return f"escalation {detail.get('id', '-')} {detail.get('event', '?')}"
        except (ValueError, KeyError, TypeError, AttributeError):
            return "escalation (request unreadable)"
    principles = ",".join(v.principle for v in r.violations) or "-"
    return (f"{gov_pb.Effect.Name(r.effect)} principal={r.principal_id or '-'} "
            f"tenant={r.tenant_id or '-'} violations={principles} "
            f"cached={str(r.cached).lower()} id={r.decision_id}")


def line(r: audit_pb2.AuditRecord) -> str:
    when = r.decided_at.ToDatetime(tzinfo=dt.UTC).isoformat(timespec="milliseconds")
    kind = events.kind_of(r.kind, r.schema, r.request_json)
    return (f"{when} {r.instance_id}#{r.seq} {kind:22} "
            f"{r.caller_id or '-'}/{r.caller_role or '-'} {summary(r)}")


def emit(r: audit_pb2.AuditRecord, args: argparse.Namespace) -> None:
    if args.json:
        doc: dict[str, Any] = json_format.MessageToDict(r)
        print(json.dumps(doc, sort_keys=True), flush=True)
    else:
        print(line(r), flush=True)


def chain_heads(stub: audit_pb2_grpc.AuditStub, metadata: tuple[tuple[str, str], ...],
                where: audit_pb2.EventFilter) -> dict[str, int]:
    """The last seq of each chain (only ``where.instance_id``'s, if it names one)."""
    chains = stub.ListChains(audit_pb2.ListChainsRequest(), metadata=metadata, timeout=30)
    return {c.instance_id: c.last_seq for c in chains.chains
            if not where.instance_id or c.instance_id == where.instance_id}


def follow(stub: audit_pb2_grpc.AuditStub, metadata: tuple[tuple[str, str], ...],
           where: audit_pb2.EventFilter, heads: dict[str, int]
           ) -> Iterator[audit_pb2.AuditRecord]:
    """The events each chain gained since ``heads`` (updated), chain by chain, in seq order."""
    for chain, last in chain_heads(stub, metadata, where).items():
        seen = heads.get(chain, 0)
        if last <= seen:
            continue
        mine = audit_pb2.EventFilter()
        mine.CopyFrom(where)
        mine.instance_id, mine.after_seq = chain, seen
        mine.ClearField("since")  # a late record may be older than --since
        found = [r for page in pages(stub, metadata, mine) for r in page.events
                 if r.seq <= last]
        yield from sorted(found, key=lambda r: r.seq)
        heads[chain] = last


def cmd_tail(args: argparse.Namespace, *, channel: Channel, metadata: Metadata) -> int:
    """The last ``-n`` events since ``--since``; with ``--follow`` every later one as it
    is recorded (records reach the database a moment after they happen)."""
    try:
        where = event_filter(args)
    except ValueError as err:
        print(f"acgs: error: {err}", file=sys.stderr)
        return 2
    md = metadata(args)
    with channel(args) as ch:
        stub = audit_pb2_grpc.AuditStub(ch)
        try:
            heads = chain_heads(stub, md, where)  # before the scan: nothing falls between
            last: collections.deque[audit_pb2.AuditRecord] = collections.deque(maxlen=args.n)
            printed: set[tuple[str, int]] = set()  # read by the scan, past the heads
            for page in pages(stub, md, where):
                last.extend(page.events)
                printed.update((r.instance_id, r.seq) for r in page.events
                               if r.seq > heads.get(r.instance_id, 0))
            for record in last:
                emit(record, args)
            while args.follow:
                time.sleep(POLL_S)
                for record in follow(stub, md, where, heads):
                    if (record.instance_id, record.seq) not in printed:
                        emit(record, args)
                printed.clear()  # from now on each record is read once
        except grpc.RpcError as err:
            from acgs.entrypoints.admin_cli import fail  # admin_cli imports this module

            return fail(err, args)
        except KeyboardInterrupt:
            return 0
    return 0


def cmd_events(args: argparse.Namespace, *, channel: Channel, metadata: Metadata) -> int:
    """One page of events (``--page-token`` to go on), or every page with ``--all``."""
    try:
        where = event_filter(args)
    except ValueError as err:
        print(f"acgs: error: {err}", file=sys.stderr)
        return 2
    with channel(args) as ch:
        stub = audit_pb2_grpc.AuditStub(ch)
        try:
            for page in pages(stub, metadata(args), where, args.page_token,
                              page_size=args.page_size):
                for record in page.events:
                    emit(record, args)
                if not args.all:
                    if page.next_page_token:
                        print(f"next page: --page-token {page.next_page_token}",
                              file=sys.stderr)
                    break
        except grpc.RpcError as err:
            from acgs.entrypoints.admin_cli import fail  # admin_cli imports this module

            return fail(err, args)
    return 0


def add_filter_args(parser: argparse.ArgumentParser, *, default_since: str | None) -> None:
    parser.add_argument("--kind", action="append", metavar="KINDS",
                        help="event kinds, comma-separated or repeated: "
                             f"{', '.join(events.KINDS)}")
    parser.add_argument("--actor", help="only events done by this caller id (a token id, "
                                        "user@host for acgs token commands)")
    parser.add_argument("--instance", help="only this chain (a server instance, or admin)")
    default = f"; default {default_since}" if default_since else ""
    parser.add_argument("--since", default=default_since,
                        help="from this time (ISO 8601, UTC by default) or this long ago "
                             f"(90s, 30m, 12h, 7d){default}")
    parser.add_argument("--json", action="store_true", help="one JSON record per line")
