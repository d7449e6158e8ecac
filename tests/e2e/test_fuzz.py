"""Fuzzing a real server over one real channel: structured requests with NaN, huge strings
and deep nesting, random and mutated protobuf bytes, invalid UTF-8, random Evaluate input,
random tokens, random Audit bodies. Never INTERNAL, never a hang, never an ALLOW the
oracle (tests/fuzz_support.py) rules out; afterwards the server still answers correctly.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from acgs.domain import tokens as tk
from acgs.v1 import governance_pb2 as pb
from hypothesis import given
from hypothesis import strategies as st

from tests import fuzz_support as fz
from tests.client import HASH, allow_input, decide_request
from tests.plugins.servers import RoleTokens, ServerProcess

pytestmark = pytest.mark.postgres

LIMIT = 1024 * 1024  # the server's ACGS_MAX_MESSAGE_BYTES
GOVERNANCE = "/acgs.v1.Governance/"
AUDIT_UNARY = ["/acgs.v1.Audit/GetDecision", "/acgs.v1.Audit/ListDecisions",
               "/acgs.v1.Audit/VerifyChain", "/acgs.v1.Audit/ListChains"]
Reply = tuple[grpc.StatusCode, bytes]


class Fuzzer:
    """Sends each kind of bad input through ``channel`` and judges the answer."""

    def __init__(self, channel: grpc.Channel, tokens: RoleTokens) -> None:
        self._channel = channel
        self._tokens = tokens
        self.tried: collections.Counter[str] = collections.Counter()

    def send(self, path: str, body: bytes, *, token: str | None = None,
             header: str | None = None) -> Reply:
        header = header or f"Bearer {token or self._tokens.agent}"
        try:
            reply = self._channel.unary_unary(path)(body, timeout=10,
                                                    metadata=(("authorization", header),))
        except grpc.RpcError as err:
            assert err.code() not in fz.NEVER, (path, err)
            return err.code(), b""
        return grpc.StatusCode.OK, reply

    def structured(self, data: st.DataObject) -> None:
        docs = data.draw(st.lists(fz.decide_docs(), min_size=1, max_size=3))
        batch = data.draw(st.booleans()) or len(docs) > 1
        requests = [fz.request_of(doc, h) for doc, h in docs]
        body = (pb.DecideBatchRequest(requests=requests) if batch else requests[0])
        raw = body.SerializeToString()
        status, reply = self.send(GOVERNANCE + ("DecideBatch" if batch else "Decide"), raw)
        assert status == expected(docs, len(raw))
        if status == grpc.StatusCode.OK:
            decisions = (pb.DecideBatchResponse.FromString(reply).decisions if batch
                         else [pb.Decision.FromString(reply)])
            for (doc, _), decision in zip(docs, decisions, strict=True):
                assert decision.effect != pb.ALLOW or fz.may_allow(doc), doc

    def raw_bytes(self, data: st.DataObject) -> None:
        body = data.draw(st.one_of(st.binary(max_size=512), fz.mutated()))
        method = data.draw(st.sampled_from(["Decide", "DecideBatch", "Evaluate"]))
        status, reply = self.send(GOVERNANCE + method, body)
        if status != grpc.StatusCode.OK or method == "Evaluate":
            return
        if method == "Decide":
            pairs = [(pb.DecideRequest.FromString(body), pb.Decision.FromString(reply))]
        else:
            pairs = list(zip(pb.DecideBatchRequest.FromString(body).requests,
                             pb.DecideBatchResponse.FromString(reply).decisions, strict=True))
        for request, decision in pairs:
            assert decision.effect != pb.ALLOW or allowable(request), request

    def invalid_utf8(self, data: st.DataObject) -> None:
        path = data.draw(st.sampled_from([(2,), (3,), (4, 1), (5, 1), (6, 3)]))
        value = data.draw(fz.invalid_utf8)
        for number in reversed(path):
            value = fz.string_field(number, value)
        status, _ = self.send(GOVERNANCE + "Decide", fz.VALID + value)
        assert status == grpc.StatusCode.INVALID_ARGUMENT

    def deep(self, data: st.DataObject) -> None:
        status, _ = self.send(GOVERNANCE + "Decide", data.draw(fz.deep_bodies))
        assert status == grpc.StatusCode.INVALID_ARGUMENT

    def evaluate(self, data: st.DataObject) -> None:
        h = data.draw(fz.hashes)
        request = pb.EvaluateRequest(constitutional_hash=h, path=data.draw(fz.evaluate_paths),
                                     input_json=data.draw(fz.evaluate_inputs))
        status, _ = self.send(GOVERNANCE + "Evaluate", request.SerializeToString())
        assert h == HASH or status != grpc.StatusCode.OK

    def tokens(self, data: st.DataObject) -> None:
        printable = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
        token = data.draw(st.one_of(
            st.text(printable, max_size=120),
            st.builds(lambda: tk.issue(role="agent", name="x", created_by="fuzz").token),
            st.text(printable, min_size=43, max_size=43).map(
                lambda s: f"{self._tokens.id(tk.AGENT)}.{s}"),
        ))
        scheme = data.draw(st.sampled_from(["Bearer", "bearer", "Basic", "", "Bearer  "]))
        status, _ = self.send(GOVERNANCE + "Decide", fz.VALID, header=f"{scheme} {token}")
        assert status == grpc.StatusCode.UNAUTHENTICATED

    def audit(self, data: st.DataObject) -> None:
        path = data.draw(st.sampled_from(AUDIT_UNARY))
        self.send(path, data.draw(st.binary(max_size=256)), token=self._tokens.auditor)


KINDS: dict[str, Callable[[Fuzzer, st.DataObject], None]] = {
    "structured": Fuzzer.structured, "raw bytes": Fuzzer.raw_bytes,
    "invalid utf-8": Fuzzer.invalid_utf8, "deep nesting": Fuzzer.deep,
    "evaluate": Fuzzer.evaluate, "tokens": Fuzzer.tokens, "audit": Fuzzer.audit,
}


def expected(docs: list[tuple[dict[str, Any], str]], size: int) -> grpc.StatusCode:
    if size > LIMIT:
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    codes = [fz.expected_code(doc, h) for doc, h in docs]
    for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
        if code in codes:
            return code
    return grpc.StatusCode.OK


def allowable(m: pb.DecideRequest) -> bool:
    """Whether a request the server allowed is a well-formed, tenant-consistent one."""
    doc = {"tenant_id": m.tenant_id, "principal": {"id": m.principal.id,
           "tenant_id": m.principal.tenant_id}, "resource": {"tenant_id": m.resource.tenant_id}}
    return m.constitutional_hash == HASH and fz.may_allow(doc)


def test_fuzz_the_server(shared_server: ServerProcess, tokens: RoleTokens,
                         capsys: pytest.CaptureFixture[str]) -> None:
    options = [("grpc.max_send_message_length", 8 << 20)]
    with grpc.insecure_channel(shared_server.address, options=options) as channel:
        fuzzer = Fuzzer(channel, tokens)

        @fz.fuzz(ci=3_000, local=300)
        @given(st.data())
        def one_input(data: st.DataObject) -> None:
            kind = data.draw(st.sampled_from(sorted(KINDS)))
            fuzzer.tried[kind] += 1
            KINDS[kind](fuzzer, data)

        start = time.monotonic()
        one_input()
        took = time.monotonic() - start
        assert shared_server.proc is not None and shared_server.proc.poll() is None
        assert decide(fuzzer, allow_input()) == pb.ALLOW  # still answers, and correctly
        assert decide(fuzzer, allow_input(tenant_id="t2")) == pb.DENY
    with capsys.disabled():
        print(f"\nfuzzed the server with {sum(fuzzer.tried.values())} inputs in {took:.1f} s: "
              f"{dict(sorted(fuzzer.tried.items()))}")


def decide(fuzzer: Fuzzer, doc: dict[str, Any]) -> int:
    status, reply = fuzzer.send(GOVERNANCE + "Decide", decide_request(doc).SerializeToString())
    assert status == grpc.StatusCode.OK
    return int(pb.Decision.FromString(reply).effect)
