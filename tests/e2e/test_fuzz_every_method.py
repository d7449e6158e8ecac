"""Every method of every acgs.v1 service, fuzzed over one real channel (issue 16).

At least 10,000 requests a run (tests/fuzz_requests.py draws them: timestamps past years
1-9999, page tokens of every shape, numbers at and past their limits, odd and long
strings, wrong credentials, random bytes), sent in batches of concurrent calls. Asserted:
never INTERNAL, UNKNOWN or any other code of :data:`tests.fuzz_support.NEVER` (a watch may
run out its short deadline); the code a request must get where the test knows it (a bad
timestamp: INVALID_ARGUMENT; no token: UNAUTHENTICATED; the wrong role:
PERMISSION_DENIED; a Decide: the oracle of tests/fuzz_support.py); never an ALLOW that
an in-process evaluation of the constitution does not give the same input; and afterwards
the server is alive and decides correctly. The counts per method and status are printed.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from acgs.adapters.rego_source import load_policy_dir
from acgs.adapters.regopy_engine import RegopyEngine
from acgs.domain import tokens as tk
from acgs.domain.model import Effect
from acgs.entrypoints import convert
from acgs.entrypoints.access import ACCESS, allowed_roles
from acgs.errors import AcgsError
from acgs.v1 import audit_pb2 as apb
from acgs.v1 import escalations_pb2 as epb
from acgs.v1 import governance_pb2 as gpb
from acgs.v1 import policy_admin_pb2 as ppb
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from hypothesis import Phase, given, seed, settings
from hypothesis import strategies as st

from tests import fuzz_mutants as fm
from tests import fuzz_requests as fr
from tests import fuzz_support as fz
from tests.client import HASH, allow_input, decide_request
from tests.plugins.servers import REPO, RoleTokens, ServerFactory, ServerProcess

pytestmark = pytest.mark.postgres

ENV = {**{f"ACGS_RATE_LIMIT_{role.upper()}": "off" for role in tk.ROLES},  # volume, not limits
       "ACGS_AUDIT_FSYNC_INTERVAL_MS": "5"}  # one fsync per 5 ms: the audit trail is not tested
TARGET = 10_000
DRAWN, MUTANTS = 5, 9  # per example: 5 requests drawn, each sent with 9 mutants: 50 calls
EXPENSIVE = {"acgs.v1.PolicyAdmin/CreatePolicyVersion",  # compiles and tests a policy (~0.5 s
             "acgs.v1.PolicyAdmin/ValidatePolicy"}    # on a busy machine): no mutants, and
MAX_EXPENSIVE = 12                                    # at most this many a run
WATCH = "acgs.v1.Escalations/WatchEscalations"
STREAMS = {"acgs.v1.Audit/ExportDecisions", "acgs.v1.PolicyAdmin/ReplayDecisions", WATCH}
OK = grpc.StatusCode.OK
CODES = [code.name for code in grpc.StatusCode]


class Constitution:
    """The policy of policy/, evaluated in this process: the judge of every ALLOW."""

    def __init__(self) -> None:
        self._engine = RegopyEngine(workers=1, constitutional_hash=HASH)
        self._loop = asyncio.new_event_loop()
        bundle = load_policy_dir(REPO / "policy", constitutional_hash=HASH)
        self._loop.run_until_complete(self._engine.activate(bundle))

    def allows(self, request: gpb.DecideRequest) -> bool:
        if request.constitutional_hash not in ("", HASH):
            return False
        try:
            policy_input = convert.decision_request(request, metadata_hash=HASH,
                                                    max_depth=fz.MAX_DEPTH).policy_input
        except AcgsError:
            return False
        result = self._loop.run_until_complete(self._engine.decide(policy_input, timeout_s=5))
        return result.effect is Effect.ALLOW

    def close(self) -> None:
        self._engine.close()
        self._loop.close()


class Runner:
    """Sends batches of Calls concurrently and judges each answer."""

    def __init__(self, channel: grpc.Channel, tokens: RoleTokens, judge: Constitution) -> None:
        self._channel = channel
        self._tokens = tokens
        self._judge = judge
        self.seen = fr.Seen()
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.allows = 0
        self.drawing = self.sending = 0.0

    def run(self, calls: list[fr.Call]) -> None:
        started = [(call, self._start(call)) for call in calls]
        for call, pending in started:
            code, replies = self._finish(call, pending)
            self.counts[call.method, code.name] += 1
            self._judge_one(call, code, replies)

    def _start(self, call: fr.Call) -> Any:
        metadata = (() if call.role is None
                    else (("authorization", f"Bearer {self._tokens.token(call.role)}"),))
        path = "/" + call.method
        if call.method in STREAMS:
            timeout = 0.1 if call.method == WATCH else 20
            return self._channel.unary_stream(path)(call.body, timeout=timeout,
                                                    metadata=metadata)
        return self._channel.unary_unary(path).future(call.body, timeout=20, metadata=metadata)

    def _finish(self, call: fr.Call, pending: Any) -> tuple[grpc.StatusCode, list[bytes]]:
        try:
            if call.method not in STREAMS:
                return OK, [pending.result()]
            replies: list[bytes] = []
            for reply in pending:
                replies.append(reply)
                if len(replies) == 5:  # enough to know it streams; the rest is volume
                    pending.cancel()
                    break
            return OK, replies
        except grpc.RpcError as err:
            code: grpc.StatusCode = err.code()  # type: ignore[attr-defined]
            if code == grpc.StatusCode.CANCELLED and call.method in STREAMS:
                return OK, []  # cancelled by us, above
            if code == grpc.StatusCode.DEADLINE_EXCEEDED and call.method == WATCH:
                return OK, []  # a watch stays open until its deadline: it was accepted
            return code, []

    def _judge_one(self, call: fr.Call, code: grpc.StatusCode, replies: list[bytes]) -> None:
        assert code not in fz.NEVER, (code, call)
        if call.expect is not None:
            assert code in call.expect, (code, call.expect, call)
        if code == OK:
            self._learn(call.method, replies)
        if code == OK and call.method.startswith("acgs.v1.Governance/Decide"):
            self._check_allows(call, replies[0])

    def _check_allows(self, call: fr.Call, reply: bytes) -> None:
        if call.method.endswith("/Decide"):
            pairs = [(gpb.DecideRequest.FromString(call.body), gpb.Decision.FromString(reply))]
        else:
            pairs = list(zip(gpb.DecideBatchRequest.FromString(call.body).requests,
                             gpb.DecideBatchResponse.FromString(reply).decisions, strict=True))
        for request, decision in pairs:
            if decision.effect == gpb.ALLOW:
                self.allows += 1
                assert self._judge.allows(request), ("an ALLOW the constitution does not give",
                                                     request)

    def _learn(self, method: str, replies: list[bytes]) -> None:
        """Remember ids and page tokens the server handed out, to send them back."""
        seen = self.seen
        if method == "acgs.v1.Governance/Decide":
            d = gpb.Decision.FromString(replies[0])
            seen.decisions.add(d.decision_id)
            if d.escalation_id:
                seen.escalations.add(d.escalation_id)
        elif method == "acgs.v1.Audit/ListDecisions":
            page = apb.ListDecisionsResponse.FromString(replies[0])
            if page.next_page_token:
                seen.page_tokens.add(page.next_page_token)
            seen.instances.update(r.instance_id for r in page.decisions[:2])
        elif method == "acgs.v1.Audit/ListEvents":
            events = apb.ListEventsResponse.FromString(replies[0])
            seen.page_tokens.update(t for t in (events.next_page_token, events.resume_token) if t)
            seen.instances.update(r.instance_id for r in events.events[:2])
        elif method == "acgs.v1.Escalations/ListEscalations":
            esc = epb.ListEscalationsResponse.FromString(replies[0])
            if esc.next_page_token:
                seen.page_tokens.add(esc.next_page_token)
            seen.escalations.update(e.escalation_id for e in esc.escalations[:3])


@st.composite
def twisted(draw: st.DrawFn, calls: st.SearchStrategy[fr.Call]) -> fr.Call:
    """A Call, now and then sent with another credential or with random bytes."""
    call = draw(calls)
    twist = draw(st.integers(0, 39))  # not 0..2: Hypothesis draws 0 far more often than 1/40
    allowed = allowed_roles(ACCESS, call.method)
    if twist == 37:
        call.role, call.expect = None, frozenset({grpc.StatusCode.UNAUTHENTICATED})
        call.wrong_caller = True
    elif twist == 38 and set(tk.ROLES) - allowed:
        call.role = draw(st.sampled_from(sorted(set(tk.ROLES) - allowed)))
        call.expect, call.wrong_caller = frozenset({grpc.StatusCode.PERMISSION_DENIED}), True
    elif twist == 39:
        call.body = draw(st.one_of(st.binary(max_size=64), st.just(call.body[:-1])))
        call.expect, call.request = None, None
    return call


@pytest.fixture
def judge() -> Iterator[Constitution]:
    constitution = Constitution()
    yield constitution
    constitution.close()


def test_every_method_of_every_service(servers: ServerFactory, tokens: RoleTokens,
                                       judge: Constitution,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    server = servers.start(ENV)
    options = [("grpc.max_send_message_length", 8 << 20)]
    with grpc.insecure_channel(server.address, options=options) as channel:
        runner = Runner(channel, tokens, judge)
        examples = TARGET // (DRAWN * (1 + MUTANTS))
        calls = twisted(fr.every_method(runner.seen))

        @settings(fz.fuzz(ci=examples // 8, local=examples // 8), phases=[Phase.generate])
        @given(st.data())  # no shrinking: the assertion names the request, and shrinking would
        # resend thousands
        def one_batch(data: st.DataObject) -> None:
            t0 = time.perf_counter()
            rng = random.Random(data.draw(st.integers(0, 2**32)))  # seeded: no lazy draws
            batch = []
            for _ in range(DRAWN):
                call = data.draw(calls)
                if call.method not in EXPENSIVE:
                    batch += [call, *fm.mutants(call, rng, runner.seen, MUTANTS)]
                elif sum(runner.counts[call.method, c] for c in CODES) < MAX_EXPENSIVE:
                    batch.append(call)
            t1 = time.perf_counter()
            runner.run(batch)
            runner.drawing += t1 - t0
            runner.sending += time.perf_counter() - t1

        start = time.monotonic()
        rounds = 0
        while sum(runner.counts.values()) < TARGET:  # requests without fields have no mutants
            rounds += 1  # a new seed each round: the same seed would draw the same requests
            seed(rounds)(one_batch)()
        took = time.monotonic() - start
        assert server.proc is not None and server.proc.poll() is None, server.log()
        assert server.health() == 1  # SERVING
        stub = channel.unary_unary("/acgs.v1.Governance/Decide")
        agent = (("authorization", f"Bearer {tokens.agent}"),)
        allowed = gpb.Decision.FromString(stub(decide_request(allow_input()).SerializeToString(),
                                               metadata=agent, timeout=10))
        denied = gpb.Decision.FromString(stub(decide_request(allow_input(
            tenant_id="t2")).SerializeToString(), metadata=agent, timeout=10))
        assert (allowed.effect, denied.effect) == (gpb.ALLOW, gpb.DENY)
    total = sum(runner.counts.values())
    with capsys.disabled():
        print(f"\n{total} requests to {len({m for m, _ in runner.counts})} methods in "
              f"{took:.1f} s ({runner.allows} ALLOWs, each one the constitution's); drawing "
              f"{runner.drawing:.1f} s, sending {runner.sending:.1f} s")
        print(table(runner.counts))
    assert total >= TARGET
    methods = {f"{s.full_name}/{m.name}" for s in SERVICES for m in s.methods}
    assert {m for m, _ in runner.counts} == methods  # every method was called


SERVICES = [gpb.DESCRIPTOR.services_by_name["Governance"],
            apb.DESCRIPTOR.services_by_name["Audit"],
            epb.DESCRIPTOR.services_by_name["Escalations"],
            ppb.DESCRIPTOR.services_by_name["PolicyAdmin"]]


def table(counts: collections.Counter[tuple[str, str]]) -> str:
    codes = sorted({c for _, c in counts})
    width = max(len(m) for m, _ in counts)
    lines = [" ".join([f"{'method':<{width}}", *(f"{c[:10]:>10}" for c in codes)])]
    for method in sorted({m for m, _ in counts}):
        lines.append(" ".join([f"{method:<{width}}",
                               *(f"{counts[method, c] or '':>10}" for c in codes)]))
    return "\n".join(lines)


SINCE = timestamp_pb2.Timestamp(seconds=10**12)  # year 33658


@pytest.mark.parametrize(("method", "role", "body"), [
    ("acgs.v1.Audit/ListDecisions", "auditor",
     apb.ListDecisionsRequest(filter=apb.DecisionFilter(since=SINCE))),
    ("acgs.v1.Audit/ExportDecisions", "auditor",
     apb.ExportDecisionsRequest(filter=apb.DecisionFilter(until=SINCE))),
    ("acgs.v1.PolicyAdmin/ReplayDecisions", "admin",
     ppb.ReplayDecisionsRequest(revision="r", since=SINCE)),
    ("acgs.v1.Escalations/ListEscalations", "admin", epb.ListEscalationsRequest(since=SINCE)),
    ("acgs.v1.Escalations/ListEscalations", "auditor", epb.ListEscalationsRequest(
        since=timestamp_pb2.Timestamp(seconds=0, nanos=-1))),
    ("acgs.v1.Escalations/ListEscalations", "admin", epb.ListEscalationsRequest(
        page_token=fr.b64(b'{"created": 1, "id": 2}'))),  # decodes, to the wrong shape
    ("acgs.v1.Escalations/ListEscalations", "admin", epb.ListEscalationsRequest(
        page_token=fr.b64(b'["2026-01-01T00:00:00+00:00", {"a": 1}]'))),
    ("acgs.v1.Audit/ListDecisions", "auditor", apb.ListDecisionsRequest(
        page_token=fr.b64(b"[1, \"s\", 9223372036854775808]"))),  # seq past a bigint
    ("acgs.v1.Governance/Evaluate", "agent", gpb.EvaluateRequest(
        constitutional_hash=HASH, path="acgs/constitution/decision",
        input_json='{"action": {"attributes": {"amount": 1e400}}}')),
])
def test_the_reported_mistakes_are_invalid_argument_naming_the_field(
        shared_server: ServerProcess, method: str, role: str, body: Message) -> None:
    """Issue 16 point 4: each of these was INTERNAL or UNAVAILABLE."""
    with shared_server.channel(role) as channel, pytest.raises(grpc.RpcError) as info:
        if method in STREAMS:
            list(channel.unary_stream("/" + method)(body.SerializeToString(), timeout=10))
        else:
            channel.unary_unary("/" + method)(body.SerializeToString(), timeout=10)
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err  # type: ignore[attr-defined]
    named = {"Evaluate": "input_json.action.attributes.amount"}.get(method.split("/")[1])
    details = err.details()  # type: ignore[attr-defined]
    assert named in details if named else any(
        f in details for f in ("since", "until", "page_token")), details
