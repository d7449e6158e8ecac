"""Hypothesis strategies for a request to every method of every acgs.v1 service.

Each strategy draws a :class:`Call`: the method, the body's bytes, the credential it is
sent with, and what the answer must be when the test knows (``expect``); otherwise the
answer may be anything but what :data:`tests.fuzz_support.NEVER` rules out. Values sit at
and past their limits: timestamps outside years 1-9999, int32/int64/uint32 extremes, page
tokens of every shape, NaN and infinities, 1e400 in JSON, odd and long strings.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from typing import Any

import grpc
from acgs.v1 import audit_pb2 as apb
from acgs.v1 import escalations_pb2 as epb
from acgs.v1 import governance_pb2 as gpb
from acgs.v1 import policy_admin_pb2 as ppb
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from hypothesis import strategies as st

from tests import fuzz_support as fz
from tests.client import HASH, allow_input

INVALID = grpc.StatusCode.INVALID_ARGUMENT
MIN_S, MAX_S = -62_135_596_800, 253_402_300_799  # years 1 and 9999
INT32 = (0, 1, -1, 2**31 - 1, -(2**31))
INT64 = (0, 1, -1, 2**63 - 1, -(2**63))
UINT32 = (0, 1, 2**32 - 1)


@dataclass
class Call:
    """One request: ``expect`` is the set of codes it may get (None: any but NEVER)."""

    method: str  # "acgs.v1.Service/Method"
    body: bytes
    role: str | None  # a role's token; None: no token
    expect: frozenset[grpc.StatusCode] | None = None
    request: Message | None = None  # the message, when ``body`` is one
    docs: list[tuple[dict[str, Any], str]] = field(default_factory=list)  # Decide inputs
    wrong_caller: bool = False  # sent without a token or with one of the wrong role

    def __repr__(self) -> str:  # bodies run to megabytes: a short description
        shown = str(self.request) if self.request is not None else repr(self.body)
        return f"Call({self.method}, role={self.role}, {shown[:600]!r})"


@dataclass
class Seen:
    """Ids the server has handed out so far, to send back (valid ids reach deeper code)."""

    decisions: set[str] = field(default_factory=set)
    escalations: set[str] = field(default_factory=set)
    instances: set[str] = field(default_factory=set)
    page_tokens: set[str] = field(default_factory=set)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


# -- values --------------------------------------------------------------------------------

odd_strings = st.one_of(
    st.sampled_from(["", " ", "\x00", "é", "\ud7ff", "\U0010ffff", "../../etc", "'; DROP",
                     "%s%n", "\u202e", "a" * 300]),
    st.text(max_size=24),
    st.integers(1_000, 70_000).map(lambda n: fz.Huge("x" * n)),  # long: INVALID or served
)
json_numbers = st.one_of(
    st.sampled_from(["1e308", "1.7976931348623157e308", "1e309", "-1e400", "1e400", "5e-324",
                     "1e-400", "-0", "0.1", str(2**53 + 1), str(2**63), str(2**64),
                     "1" + "0" * 30, "9" * 5000]),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers().map(str),
)


def _stamp(seconds: int, nanos: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


good_times = st.builds(_stamp, st.integers(MIN_S, MAX_S), st.integers(0, 999_999_999))
bad_times = st.one_of(
    st.builds(_stamp, st.one_of(st.integers(MAX_S + 1, 2**63 - 1),
                                st.integers(-(2**63), MIN_S - 1), st.just(10**12)),
              st.integers(0, 999_999_999)),
    st.builds(_stamp, st.integers(MIN_S, MAX_S),
              st.one_of(st.integers(-(2**31), -1), st.integers(1_000_000_000, 2**31 - 1))),
)
times = st.one_of(st.none(), good_times, bad_times)


def bad_time(*stamps: timestamp_pb2.Timestamp | None) -> bool:
    return any(s is not None and not (MIN_S <= s.seconds <= MAX_S and 0 <= s.nanos < 10**9)
               for s in stamps)


def page_tokens(seen: Seen) -> st.SearchStrategy[str]:
    shapes = st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
                  st.sampled_from([2**63, -(2**63) - 1, 10**30, "2026-01-01T00:00:00",
                                   "2026-01-01T00:00:00+00:00",
                                   "00000000-0000-0000-0000-000000000000"])),
        lambda inner: st.one_of(st.lists(inner, max_size=4),
                                st.dictionaries(st.text(max_size=4), inner, max_size=2)),
        max_leaves=6)
    return st.one_of(
        st.just(""), st.text(max_size=40), st.binary(max_size=40).map(b64),
        shapes.map(lambda v: b64(json.dumps(v).encode())),
        st.integers(1, 5000).map(lambda n: b64(b"[" * n)),
        pick(seen.page_tokens),
    )


def pick(pool: set[str]) -> st.SearchStrategy[str]:
    """One of ``pool`` as it is when drawn (it grows as the run goes), "" while it is empty.
    Drawn as an index, so that the draws do not depend on the pool (Hypothesis checks)."""
    def one(i: int) -> str:
        known = sorted(pool)
        return known[i % len(known)] if known else ""

    return st.integers(0, 1 << 16).map(one)


def ids(pool: set[str]) -> st.SearchStrategy[str]:
    return st.one_of(odd_strings, st.uuids().map(str), pick(pool))


# -- one strategy per method ---------------------------------------------------------------


def _call(method: str, role: str | None, msg: Message, *, invalid: bool = False) -> Call:
    return Call(method, msg.SerializeToString(), role,
                frozenset({INVALID}) if invalid else known_code(method, msg), request=msg)


@st.composite
def decide(draw: st.DrawFn) -> Call:
    doc, h = draw(fz.decide_docs())
    msg = fz.request_of(doc, h)
    size = msg.ByteSize()
    code = grpc.StatusCode.RESOURCE_EXHAUSTED if size > 1 << 20 else fz.expected_code(doc, h)
    return Call("acgs.v1.Governance/Decide", msg.SerializeToString(), "agent",
                frozenset({code}), request=msg, docs=[(doc, h)])


@st.composite
def decide_near_allow(draw: st.DrawFn) -> Call:
    """An allowed request with a field or two changed: ALLOWs to judge (fuzzed documents
    rarely get one), and DENYs a step away from them."""
    doc = allow_input()
    doc["tenant_id"] = draw(st.sampled_from(["t1", "t1", "t2"]))
    doc["resource"]["tenant_id"] = draw(st.sampled_from(["t1", "t1", "t2", ""]))
    doc["principal"]["roles"] = draw(st.one_of(st.just(["operator"]), st.lists(st.sampled_from(
        ["operator", "viewer", "admin", "auditor", "root", ""]), min_size=1, max_size=3)))
    doc["action"]["type"] = draw(st.one_of(st.just("read"), st.sampled_from(
        ["read", "write", "delete", "fund_transfer", "policy_change", "data_deletion"])))
    doc["action"]["attributes"] = draw(st.dictionaries(
        st.sampled_from(["impact_score", "amount", "priority", "emergency"]),
        st.one_of(st.floats(), st.booleans(), st.integers(-(2**63), 2**63)), max_size=2))
    doc["context"] = draw(st.dictionaries(st.sampled_from(["emergency", "justification"]),
                                          fz.scalars, max_size=2))
    msg = fz.request_of(doc, HASH)
    return Call("acgs.v1.Governance/Decide", msg.SerializeToString(), "agent",
                frozenset({fz.expected_code(doc, HASH)}), request=msg, docs=[(doc, HASH)])


@st.composite
def decide_batch(draw: st.DrawFn) -> Call:
    docs = draw(st.lists(fz.decide_docs(), max_size=4))
    msg = gpb.DecideBatchRequest(requests=[fz.request_of(d, h) for d, h in docs])
    return Call("acgs.v1.Governance/DecideBatch", msg.SerializeToString(), "agent",
                request=msg, docs=docs)


@st.composite
def evaluate(draw: st.DrawFn) -> Call:
    number = draw(json_numbers)
    text = draw(st.one_of(fz.evaluate_inputs, st.just(number),
                          st.just(f'{{"principal": {{"n": [{number}]}}}}')))
    msg = gpb.EvaluateRequest(constitutional_hash=draw(fz.hashes),
                              path=draw(fz.evaluate_paths), input_json=text)
    past = text in (number, f'{{"principal": {{"n": [{number}]}}}}') and \
        number in ("1e309", "-1e400", "1e400")
    return _call("acgs.v1.Governance/Evaluate", "agent", msg, invalid=past)  # before the hash


def decision_filter(draw: st.DrawFn) -> tuple[apb.DecisionFilter, bool]:
    since, until = draw(times), draw(times)
    f = apb.DecisionFilter(principal_id=draw(odd_strings), tenant_id=draw(odd_strings),
                           effect=draw(st.sampled_from([0, 1, 2, 3, 4, -1, 2**31 - 1])),
                           policy_revision=draw(odd_strings), instance_id=draw(odd_strings))
    if since is not None:
        f.since.CopyFrom(since)
    if until is not None:
        f.until.CopyFrom(until)
    return f, bad_time(since, until)


def get_decision(seen: Seen) -> st.SearchStrategy[Call]:
    return ids(seen.decisions).map(lambda i: _call(
        "acgs.v1.Audit/GetDecision", "auditor", apb.GetDecisionRequest(decision_id=i)))


def list_decisions(seen: Seen) -> st.SearchStrategy[Call]:
    @st.composite
    def draw_one(draw: st.DrawFn) -> Call:
        f, bad = decision_filter(draw)
        token = draw(page_tokens(seen))
        msg = apb.ListDecisionsRequest(filter=f, page_size=draw(st.sampled_from((*INT32, 7))),
                                       page_token=token)
        return _call("acgs.v1.Audit/ListDecisions", "auditor", msg, invalid=bad)
    return draw_one()


KINDS = ("decision", "evaluation", "escalation.opened", "escalation.changed",
         "incident.opened", "policy.version_created", "policy.version_signed",
         "policy.activated",
         "policy.rolled_back", "token.created", "token.revoked", "checkpoint")


def list_events(seen: Seen) -> st.SearchStrategy[Call]:
    @st.composite
    def draw_one(draw: st.DrawFn) -> Call:
        since, until = draw(times), draw(times)
        kinds = draw(st.lists(st.one_of(st.sampled_from(KINDS), odd_strings), max_size=3))
        f = apb.EventFilter(kinds=kinds, actor=draw(odd_strings),
                            instance_id=draw(st.one_of(odd_strings, st.just("admin"))))
        if since is not None:
            f.since.CopyFrom(since)
        if until is not None:
            f.until.CopyFrom(until)
        msg = apb.ListEventsRequest(filter=f, page_size=draw(st.sampled_from((*INT32, 7))),
                                    page_token=draw(page_tokens(seen)))
        # A kind that is none is INVALID_ARGUMENT, like a time outside years 1-9999.
        bad = bad_time(since, until) or any(k not in KINDS for k in kinds)
        return _call("acgs.v1.Audit/ListEvents", "auditor", msg, invalid=bad)
    return draw_one()


@st.composite
def export_decisions(draw: st.DrawFn) -> Call:
    f, bad = decision_filter(draw)
    return _call("acgs.v1.Audit/ExportDecisions", "auditor",
                 apb.ExportDecisionsRequest(filter=f), invalid=bad)


def verify_chain(seen: Seen) -> st.SearchStrategy[Call]:
    return st.builds(
        lambda i, a, b: _call("acgs.v1.Audit/VerifyChain", "auditor",
                              apb.VerifyChainRequest(instance_id=i, from_seq=a, to_seq=b)),
        ids(seen.instances), st.sampled_from((*INT64, 2, 50)), st.sampled_from((*INT64, 3)))


def list_escalations(seen: Seen) -> st.SearchStrategy[Call]:
    @st.composite
    def draw_one(draw: st.DrawFn) -> Call:
        since, until = draw(times), draw(times)
        msg = epb.ListEscalationsRequest(
            state=draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, -1, 2**31 - 1])),
            reason=draw(odd_strings), tenant_id=draw(odd_strings),
            page_size=draw(st.sampled_from((*INT32, 3))), page_token=draw(page_tokens(seen)))
        if since is not None:
            msg.since.CopyFrom(since)
        if until is not None:
            msg.until.CopyFrom(until)
        role = draw(st.sampled_from(["admin", "auditor"]))
        return _call("acgs.v1.Escalations/ListEscalations", role, msg,
                     invalid=bad_time(since, until))
    return draw_one()


def escalation_calls(seen: Seen) -> list[st.SearchStrategy[Call]]:
    esc = ids(seen.escalations)
    verdicts = st.sampled_from([0, 1, 2, 3, -1, 2**31 - 1])
    return [
        st.builds(lambda i, r: _call("acgs.v1.Escalations/GetEscalation", r,
                                     epb.GetEscalationRequest(escalation_id=i)),
                  esc, st.sampled_from(["admin", "auditor", "agent"])),
        st.builds(lambda i, c: _call("acgs.v1.Escalations/AcknowledgeEscalation", "admin",
                                     epb.AcknowledgeEscalationRequest(escalation_id=i,
                                                                      comment=c)),
                  esc, odd_strings),
        st.builds(lambda i, v, c: _call("acgs.v1.Escalations/ResolveEscalation", "admin",
                                        epb.ResolveEscalationRequest(escalation_id=i, verdict=v,
                                                                     comment=c)),
                  esc, verdicts, odd_strings),
        st.builds(lambda s, n, r: _call("acgs.v1.Escalations/WatchEscalations", r,
                                        epb.WatchEscalationsRequest(after_seq=s, from_now=n)),
                  st.sampled_from(INT64), st.booleans(), st.sampled_from(["admin", "auditor"])),
    ]


modules = st.dictionaries(odd_strings, st.one_of(
    odd_strings, st.sampled_from(["package x\n", "package acgs.constitution\ndecision := 1\n",
                                  "package p\nimport rego.v1\nallow if { input.x > 1e400 }\n"])),
    max_size=3)
json_texts = st.one_of(odd_strings, json_numbers, fz.evaluate_inputs)


def policy_calls(seen: Seen) -> list[st.SearchStrategy[Call]]:
    admin = "acgs.v1.PolicyAdmin/"
    revisions = st.one_of(odd_strings, st.text("0123456789abcdef", min_size=64, max_size=64))
    create = st.builds(lambda m, d, mf, s: ppb.CreatePolicyVersionRequest(
        modules=m, data_json=d, manifest_json=mf, signature=s),
        modules, json_texts, json_texts, odd_strings)

    @st.composite
    def replay(draw: st.DrawFn) -> Call:
        since, until = draw(times), draw(times)
        msg = ppb.ReplayDecisionsRequest(
            revision=draw(revisions), limit=draw(st.sampled_from(UINT32)),
            examples=draw(st.sampled_from(UINT32)),
            sample=draw(st.sampled_from([0.0, 0.5, 1.0, -0.0, 1e-320, 1.0000001, -1.0,
                                         float("nan"), float("inf"), -float("inf")])))
        if since is not None:
            msg.since.CopyFrom(since)
        if until is not None:
            msg.until.CopyFrom(until)
        # A revision and a sample in range, then the times are checked: INVALID_ARGUMENT.
        bad = bad_time(since, until) and bool(msg.revision) and 0 <= msg.sample <= 1
        return _call(admin + "ReplayDecisions", "admin", msg, invalid=bad)

    return [
        create.map(lambda m: _call(admin + "CreatePolicyVersion", "admin", m)),
        create.map(lambda m: _call(admin + "ValidatePolicy", "admin", m)),
        st.just(_call(admin + "ListPolicyVersions", "admin", ppb.ListPolicyVersionsRequest())),
        st.just(_call(admin + "ListInstances", "admin", ppb.ListInstancesRequest())),
        revisions.map(lambda r: _call(admin + "GetPolicyVersion", "admin",
                                      ppb.GetPolicyVersionRequest(revision=r))),
        st.builds(lambda r, t: _call(admin + "ActivatePolicyVersion", "admin",
                                     ppb.ActivatePolicyVersionRequest(revision=r, timeout_ms=t)),
                  revisions, st.sampled_from(UINT32)),
        st.sampled_from(UINT32).map(lambda t: _call(admin + "RollbackPolicy", "admin",
                                                    ppb.RollbackPolicyRequest(timeout_ms=t))),
        st.builds(lambda n, b: _call(admin + "ListPolicyHistory", "admin",
                                     ppb.ListPolicyHistoryRequest(limit=n, before_seq=b),
                                     invalid=n > 1000),
                  st.sampled_from((*UINT32, 1000, 1001)), st.sampled_from((0, 1, 2**64 - 1))),
        replay(),
        st.builds(lambda r, s, e: _call(admin + "StartShadow", "admin", ppb.StartShadowRequest(
            revision=r, sample=s, examples=e)),
            revisions, st.sampled_from([0.0, 0.1, 1.0, 1.0000001, -1.0, 1e-320, float("nan"),
                                        float("inf")]), st.sampled_from(UINT32)),
        st.just(_call(admin + "StopShadow", "admin", ppb.StopShadowRequest())),
        st.just(_call(admin + "GetShadowReport", "admin", ppb.GetShadowReportRequest())),
    ]


def every_method(seen: Seen) -> st.SearchStrategy[Call]:
    """A Call to any acgs.v1 method, with odd values (``seen`` supplies real ids)."""
    branches = [
        decide(), decide_near_allow(), decide_batch(), evaluate(), get_decision(seen),
        list_decisions(seen), list_events(seen), export_decisions(), verify_chain(seen),
        st.just(_call("acgs.v1.Audit/ListChains", "auditor", apb.ListChainsRequest())),
        list_escalations(seen), *escalation_calls(seen), *policy_calls(seen),
    ]
    # A branch by a wide integer modulo their number: Hypothesis favours the first
    # branches of a one_of (and small integers) so much that some methods went undrawn.
    return st.integers(0, 2**20).flatmap(lambda k: branches[k % len(branches)])


def known_code(method: str, msg: Message) -> frozenset[grpc.StatusCode] | None:
    """INVALID_ARGUMENT where a time is outside years 1-9999 (or Evaluate's input holds a
    number past a double); None where the test does not know the answer."""
    stamps: tuple[Any, ...] = ()
    if method in ("acgs.v1.Audit/ListDecisions", "acgs.v1.Audit/ExportDecisions",
                  "acgs.v1.Audit/ListEvents"):
        f = msg.filter  # type: ignore[attr-defined]
        stamps = (f.since if f.HasField("since") else None,
                  f.until if f.HasField("until") else None)
        if method == "acgs.v1.Audit/ListEvents" and any(k not in KINDS for k in f.kinds):
            return frozenset({INVALID})
    elif method == "acgs.v1.Escalations/ListEscalations" or (
            method == "acgs.v1.PolicyAdmin/ReplayDecisions"
            and msg.revision and 0 <= msg.sample <= 1):  # type: ignore[attr-defined]
        stamps = tuple(getattr(msg, t) if msg.HasField(t) else None for t in ("since", "until"))
    elif method == "acgs.v1.Governance/Evaluate":
        return frozenset({INVALID}) if _past_a_double(msg.input_json) else None  # type: ignore[attr-defined]
    return frozenset({INVALID}) if bad_time(*stamps) else None


def _past_a_double(text: str) -> bool:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return False
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return True
        stack.extend(v.values() if isinstance(v, dict) else v if isinstance(v, list) else ())
    return False
