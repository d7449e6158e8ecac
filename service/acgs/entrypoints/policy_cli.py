"""``acgs policy push|activate|rollback|list|history|instances|shadow|shadow-report|sign``.

Every command but ``sign`` calls acgs.v1.PolicyAdmin on any server of the fleet
(``--addr``), with ``--token``, else ``$ACGS_TOKEN``, else the admin token of
``$ACGS_DATA_DIR/dev-tokens``. ``sign`` works offline, with a private key.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import grpc

from acgs import CONSTITUTIONAL_HASH
from acgs.adapters.policy_examples import EXAMPLES_DIR, with_examples
from acgs.domain.policy_version import SIGNATURE_FILE
from acgs.entrypoints import admin_cli
from acgs.errors import PolicyError
from acgs.v1 import policy_admin_pb2 as pb
from acgs.v1 import policy_admin_pb2_grpc as pb_grpc


def read_policy_dir(directory: Path) -> pb.CreatePolicyVersionRequest:
    """The upload of ``directory``: ``*.rego`` (not hidden), data.json, manifest.json (with
    ``examples/*.json`` folded in) and the signature in ``policy.sig`` when present.
    Raises PolicyError when unreadable."""
    try:
        modules = {f.relative_to(directory).as_posix(): f.read_text("utf-8")
                   for f in sorted(directory.rglob("*.rego"))
                   if not any(p.startswith(".") for p in f.relative_to(directory).parts)}
        data = directory / "data.json"
        sig = directory / SIGNATURE_FILE
        manifest_json = (directory / "manifest.json").read_text("utf-8")
        if (directory / EXAMPLES_DIR).is_dir():  # folded in as the server folds its own
            manifest_json = json.dumps(with_examples(directory, json.loads(manifest_json)))
        return pb.CreatePolicyVersionRequest(
            modules=modules, manifest_json=manifest_json,
            data_json=data.read_text("utf-8") if data.exists() else "{}",
            signature=sig.read_text("ascii").strip() if sig.exists() else "")
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise PolicyError(f"cannot read policy directory {directory}: {err}") from err


def _call(args: argparse.Namespace, method: str, request: Any, *, timeout: float = 60.0) -> Any:
    with admin_cli.channel(args) as ch:
        return getattr(pb_grpc.PolicyAdminStub(ch), method)(
            request, metadata=admin_cli.metadata(args, role="admin"), timeout=timeout)


def cmd_push(args: argparse.Namespace) -> int:
    """Upload DIR as a version (checked, tests run); print its revision."""
    request = read_policy_dir(Path(args.dir))
    try:
        if args.dry_run:
            checked = _call(args, "ValidatePolicy", request)
            print(f"{checked.revision} valid ({checked.tests_passed} Rego tests passed)")
            return 0
        request.message = args.message
        version = _call(args, "CreatePolicyVersion", request)
    except grpc.RpcError as err:
        return admin_cli.fail(err, args)
    print(version.revision)
    if version.signature_attached:
        print(f"acgs: {version.revision} was stored unsigned (by {version.created_by} at "
              f"{_when(version.created_at)}: {version.message or '-'}); it is signed now",
              file=sys.stderr)
        return 0
    if version.already_stored:
        print(f"acgs: {version.revision} was stored already (by {version.created_by} at "
              f"{_when(version.created_at)}: {version.message or '-'}); nothing changed",
              file=sys.stderr)
        return 0
    print(f"acgs: stored {version.name} {version.version} as {version.revision} "
          f"({version.tests_passed} Rego tests passed); activate with "
          f"`acgs policy activate {version.revision}`", file=sys.stderr)
    return 0


def _when(ts: Any) -> str:
    return f"{ts.ToDatetime().isoformat(timespec='seconds')}Z"


def _report(result: pb.ActivationResult) -> int:
    print(f"{result.revision} desired (generation {result.generation}, previous "
          f"{result.previous_revision or '-'}); acknowledged by {len(result.acknowledged)}: "
          f"{', '.join(result.acknowledged) or '-'}")
    if not result.complete:
        print(f"acgs: not yet serving it: {', '.join(result.pending)}", file=sys.stderr)
        return 1
    return 0


def cmd_activate(args: argparse.Namespace) -> int:
    """Make REV the fleet's policy; exit 1 if a live server did not acknowledge in time."""
    request = pb.ActivatePolicyVersionRequest(revision=args.revision, message=args.message,
                                              timeout_ms=int(args.wait * 1000))
    try:
        return _report(_call(args, "ActivatePolicyVersion", request, timeout=args.wait + 5))
    except grpc.RpcError as err:
        return admin_cli.fail(err, args)


def cmd_rollback(args: argparse.Namespace) -> int:
    """Undo the activation in force: the one beneath it in the history is in force again."""
    request = pb.RollbackPolicyRequest(timeout_ms=int(args.wait * 1000), message=args.message)
    try:
        return _report(_call(args, "RollbackPolicy", request, timeout=args.wait + 5))
    except grpc.RpcError as err:
        return admin_cli.fail(err, args)


def cmd_list(args: argparse.Namespace) -> int:
    """Every stored version, newest first: revision, name and version, upload time,
    signed or not, uploader and message; ``*`` marks the fleet's desired one."""
    try:
        versions = _call(args, "ListPolicyVersions", pb.ListPolicyVersionsRequest()).versions
    except grpc.RpcError as err:
        return admin_cli.fail(err, args)
    for v in versions:
        print(f"{'*' if v.desired else ' '} {v.revision}  {v.name} {v.version}  "
              f"{_when(v.created_at)}  {'signed' if v.signed else 'unsigned'}  "
              f"by {v.created_by}  {v.message or '-'}")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    """Activations and rollbacks, newest first (``--limit``, ``--before SEQ`` for older
    pages); ``*`` marks the activation in force."""
    try:
        answer = _call(args, "ListPolicyHistory", pb.ListPolicyHistoryRequest(
            limit=args.limit, before_seq=args.before))
    except grpc.RpcError as err:
        return admin_cli.fail(err, args)
    if not answer.entries:
        print("no policy history")
    for e in answer.entries:
        actor = e.actor_identity or e.actor_id
        if e.action == "rolled_back":
            what = (f"rolled back #{e.undoes} ({e.replaced_revision}): "
                    f"{e.revision} desired again")
        else:
            what = f"activated {e.revision} (replacing {e.replaced_revision or '-'})"
        print(f"{'*' if e.current else ' '} #{e.seq}  {_when(e.at)}  {what}  "
              f"by {actor} ({e.actor_role})  {e.message or '-'}")
    if answer.next_before_seq:
        print(f"acgs: older entries: `acgs policy history --before {answer.next_before_seq}`",
              file=sys.stderr)
    return 0


def cmd_instances(args: argparse.Namespace) -> int:
    """The servers of the fleet and the revision each serves."""
    try:
        answer = _call(args, "ListInstances", pb.ListInstancesRequest())
    except grpc.RpcError as err:
        return admin_cli.fail(err, args)
    print(f"desired {answer.desired_revision or '-'} (generation {answer.generation})")
    for i in answer.instances:
        state = ("live" if i.live else "silent") + (", serving" if i.serving else "")
        print(f"{i.instance_id}  {i.address}  {i.active_revision}  {state}")
    return 0


def cmd_shadow(args: argparse.Namespace) -> int:
    """Shadow REV on every server (a sampled share of live decisions), or stop (--stop)."""
    if args.stop == bool(args.revision):
        print("acgs: give a revision to shadow, or --stop", file=sys.stderr)
        return 2
    try:
        if args.stop:
            state = _call(args, "StopShadow", pb.StopShadowRequest())
            print(f"shadow stopped (generation {state.generation})")
            return 0
        state = _call(args, "StartShadow", pb.StartShadowRequest(
            revision=args.revision, sample=args.sample, examples=args.examples))
    except grpc.RpcError as err:
        return admin_cli.fail(err, args)
    print(f"shadowing {state.candidate_revision} on {state.sample:.0%} of live decisions "
          f"(generation {state.generation}); see `acgs policy shadow-report`")
    return 0


def cmd_shadow_report(args: argparse.Namespace) -> int:
    """The shadow's differences by transition, fleet-wide, with examples."""
    try:
        report = _call(args, "GetShadowReport", pb.GetShadowReportRequest())
    except grpc.RpcError as err:
        return admin_cli.fail(err, args)
    if args.json:
        from google.protobuf import json_format

        print(json_format.MessageToJson(report, preserving_proto_field_name=True))
        return 0
    state = report.state
    if not state.candidate_revision:
        print("no shadow running")
        return 0
    print(f"candidate {state.candidate_revision} at {state.sample:.0%} (generation "
          f"{state.generation}): {report.evaluated} evaluated, {report.differences} differ, "
          f"{report.dropped} dropped")
    for t in report.transitions:
        print(f"  {t.transition}: {t.count}")
        for e in t.examples:
            print(f"    {e.decision_id} ({e.instance_id}, live {e.live_revision}): "
                  f"{e.input_json}")
    for server in report.servers:
        print(f"server {server.instance_id}: {server.evaluated} evaluated, "
              f"{server.differences} differ, {server.dropped} dropped")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    """Sign DIR's content with an Ed25519 private key (PEM); write DIR/policy.sig."""
    from acgs.adapters.policy_signatures import sign
    from acgs.adapters.rego_source import load_policy_dir
    from acgs.domain.policy_version import content_digest

    directory = Path(args.dir)
    bundle = load_policy_dir(directory, constitutional_hash=CONSTITUTIONAL_HASH)
    digest = content_digest(bundle.modules, bundle.data_json, bundle.manifest_json)
    signature = sign(digest, private_key_pem=Path(args.key).read_bytes())
    (directory / SIGNATURE_FILE).write_text(signature + "\n", "ascii")
    print(json.dumps({"revision": bundle.revision, "signature_file":
                      str(directory / SIGNATURE_FILE)}))
    return 0


def cmd_against_opa(args: argparse.Namespace) -> int:
    """Compare DIR's or stored REV's decision rule with OPA's on ``--samples`` requests drawn
    around its branches (acgs.entrypoints.opa_requests); exit 1 on any divergence, 2 when OPA's
    engine is not installed."""
    import random

    from acgs.entrypoints import opa_diff, opa_requests

    try:
        import opa_bindings  # noqa: F401  # optional: installed for tests only
    except ImportError:
        print(f"acgs: cannot compare with OPA: {opa_diff.MISSING_PACKAGE}", file=sys.stderr)
        return 2
    bundle = _bundle_of(args)
    if bundle is None:
        return 1
    rng = random.Random(args.seed)
    vocab = opa_requests.vocabulary(bundle)
    differential = opa_diff.Differential(bundle)
    try:
        left = args.samples
        while left > 0:
            differential.check(opa_requests.random_request(rng.choice, vocab)
                               for _ in range(min(left, 500)))
            left -= 500
    finally:
        differential.close()
    report = differential.report
    print(f"{bundle.revision} ({bundle.name} {bundle.version}) against OPA: {report.summary()}")
    for line in report.divergences:
        print(f"  {line}", file=sys.stderr)
    if not report.ok:
        print(f"acgs: {bundle.revision} answers differently from OPA (seed {args.seed}); "
              "do not activate it", file=sys.stderr)
    return 0 if report.ok else 1


def _bundle_of(args: argparse.Namespace) -> Any:
    """The PolicyBundle of args.dir: a directory, else a stored revision (GetPolicyVersion);
    None (after saying why) when the revision cannot be fetched."""
    from acgs.adapters.rego_source import bundle_from_parts, load_policy_dir

    if Path(args.dir).is_dir():
        return load_policy_dir(Path(args.dir), constitutional_hash=CONSTITUTIONAL_HASH)
    try:
        version = _call(args, "GetPolicyVersion", pb.GetPolicyVersionRequest(revision=args.dir))
    except grpc.RpcError as err:
        admin_cli.fail(err, args)
        return None
    return bundle_from_parts(modules=dict(version.modules), data_json=version.data_json,
                             manifest=json.loads(version.manifest_json),
                             constitutional_hash=CONSTITUTIONAL_HASH)


def register(policy: Any) -> None:
    """Add the lifecycle commands to the ``policy`` command group's sub-parsers."""
    push = policy.add_parser("push", help="upload a policy directory as a version")
    push.add_argument("dir")
    push.add_argument("--dry-run", action="store_true", help="check only (ValidatePolicy)")
    push.add_argument("-m", "--message", default="", help="why (stored with the version)")
    push.set_defaults(func=cmd_push)
    activate = policy.add_parser("activate", help="make a version the fleet's policy")
    activate.add_argument("revision")
    rollback = policy.add_parser("rollback", help="undo the activation in force (step back "
                                 "one activation in `acgs policy history`)")
    for cmd, fn in ((activate, cmd_activate), (rollback, cmd_rollback)):
        cmd.add_argument("--wait", type=float, default=10.0,
                         help="seconds to wait for every server's acknowledgement (10)")
        cmd.add_argument("-m", "--message", default="", help="why (kept in the history)")
        cmd.set_defaults(func=fn)
    listing = policy.add_parser("list", help="stored versions (* = desired)")
    listing.set_defaults(func=cmd_list)
    history = policy.add_parser("history", help="activations and rollbacks, newest first "
                                "(* = the activation in force)")
    history.add_argument("--limit", type=int, default=50, help="entries shown (50, max 1000)")
    history.add_argument("--before", type=int, default=0, help="only entries before this #")
    history.set_defaults(func=cmd_history)
    instances = policy.add_parser("instances", help="servers and the revision each serves")
    instances.set_defaults(func=cmd_instances)
    shadow = policy.add_parser("shadow", help="decide a share of live decisions under a "
                               "candidate too, and count the differences (--stop: end it)")
    shadow.add_argument("revision", nargs="?", default="")
    shadow.add_argument("--sample", type=float, default=0.1,
                        help="fraction of live decisions shadowed (0.1)")
    shadow.add_argument("--examples", type=int, default=5,
                        help="examples kept per transition (5)")
    shadow.add_argument("--stop", action="store_true", help="stop shadowing")
    shadow.set_defaults(func=cmd_shadow)
    shadow_report = policy.add_parser("shadow-report", help="the shadow's differences")
    shadow_report.add_argument("--json", action="store_true")
    shadow_report.set_defaults(func=cmd_shadow_report)
    for cmd in (push, activate, rollback, listing, history, instances, shadow, shadow_report):
        admin_cli.add_connection_args(cmd, role="admin")
    signer = policy.add_parser("sign", help="sign a policy directory (writes DIR/policy.sig)")
    signer.add_argument("dir")
    signer.add_argument("--key", required=True, help="Ed25519 private key, PEM")
    signer.set_defaults(func=cmd_sign)
