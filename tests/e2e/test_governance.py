"""acgs.v1.Governance over a real gRPC channel to a real server process."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import pytest
from acgs.v1 import governance_pb2 as pb
from acgs.v1 import governance_pb2_grpc as pb_grpc

from tests.client import HASH, allow_input, decide_request
from tests.constitution_cases import CASES
from tests.fuzz_support import varint
from tests.plugins.servers import ServerProcess

EFFECT = {"ALLOW": pb.ALLOW, "DENY": pb.DENY, "ESCALATE": pb.ESCALATE}


@pytest.fixture(scope="module")
def channel(shared_server: ServerProcess) -> Iterator[grpc.Channel]:
    with shared_server.channel(options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.GovernanceStub:
    return pb_grpc.GovernanceStub(channel)


def raw_call(channel: grpc.Channel, method: str, body: bytes) -> grpc.StatusCode:
    """Send ``body`` as the request bytes of ``method``; return the status code."""
    call = channel.unary_unary(f"/acgs.v1.Governance/{method}")
    try:
        call(body, timeout=10)
    except grpc.RpcError as err:
        return err.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value.code()  # type: ignore[attr-defined,no-any-return]


REQUIRED = ("tenant_id", "principal.id", "principal.tenant_id", "action.type", "resource.type")


def missing_required(doc: dict[str, object]) -> list[str]:
    """Fields the server requires before the policy sees a request."""
    missing = []
    for path in REQUIRED:
        value: object = doc
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if not value:
            missing.append(path)
    return missing


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_constitution_case(stub: pb_grpc.GovernanceStub, case: object) -> None:
    if missing_required(case.policy_input):  # type: ignore[attr-defined]
        # Refused before evaluation: still never an ALLOW.
        assert case.effect != "ALLOW"  # type: ignore[attr-defined]
        request = decide_request(case.policy_input)  # type: ignore[attr-defined]
        assert code_of(lambda: stub.Decide(request)) == grpc.StatusCode.INVALID_ARGUMENT
        return
    decision = stub.Decide(decide_request(case.policy_input, request_id=case.name))  # type: ignore[attr-defined]
    assert decision.effect == EFFECT[case.effect]  # type: ignore[attr-defined]
    assert {v.principle for v in decision.violations} == set(case.principles)  # type: ignore[attr-defined]
    assert all(v.message and v.severity != pb.SEVERITY_UNSPECIFIED for v in decision.violations)
    assert decision.constitutional_hash == HASH
    assert decision.request_id == case.name  # type: ignore[attr-defined]
    assert decision.decision_id and decision.policy_revision
    assert decision.server_latency_us > 0


def test_every_effect_and_principle_is_covered() -> None:
    effects = {c.effect for c in CASES}
    principles = set().union(*(c.principles for c in CASES))
    assert effects == {"ALLOW", "DENY", "ESCALATE"}
    assert {
        "deny_by_default",
        "tenant_isolation",
        "role_permission",
        "priority_ceiling",
        "pii_purpose",
        "separation_of_powers",
        "high_impact_action",
    } <= principles


def test_allow(stub: pb_grpc.GovernanceStub) -> None:
    decision = stub.Decide(decide_request(allow_input()))
    assert decision.effect == pb.ALLOW and not decision.violations


@pytest.mark.parametrize("bad_hash", ["", "0000000000000000", HASH.upper()])
def test_hash_missing_or_wrong_is_failed_precondition(
    stub: pb_grpc.GovernanceStub, bad_hash: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Decide(decide_request(allow_input(), constitutional_hash=bad_hash))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert HASH in info.value.details()


def test_hash_in_metadata_is_accepted(stub: pb_grpc.GovernanceStub) -> None:
    request = decide_request(allow_input(), constitutional_hash="")
    decision = stub.Decide(request, metadata=(("x-constitutional-hash", HASH),))
    assert decision.effect == pb.ALLOW
    with pytest.raises(grpc.RpcError) as info:
        stub.Decide(request, metadata=(("x-constitutional-hash", "nope"),))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    "field", ["tenant_id", "principal.id", "principal.tenant_id", "action.type", "resource.type"]
)
def test_missing_field_is_invalid_argument(stub: pb_grpc.GovernanceStub, field: str) -> None:
    request = decide_request(allow_input())
    head, _, tail = field.partition(".")
    target = getattr(request, head) if tail else request
    target.ClearField(tail or head)
    with pytest.raises(grpc.RpcError) as info:
        stub.Decide(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in info.value.details()


def _ld(tag: int, payload: bytes) -> bytes:
    return bytes([tag]) + varint(len(payload)) + payload


def deep_struct_bytes(depth: int) -> bytes:
    """A Struct nested ``depth`` levels, encoded by hand (past protobuf's own limits)."""
    struct = b""
    for _ in range(depth):
        value = _ld(0x2A, struct)  # Value.struct_value
        entry = _ld(0x0A, b"n") + _ld(0x12, value)  # map entry: key, value
        struct = _ld(0x0A, entry)  # Struct.fields
    return struct


@pytest.mark.parametrize("depth", [40, 99, 150, 5000])
def test_deep_struct_is_invalid_argument(channel: grpc.Channel, depth: int) -> None:
    request = decide_request(allow_input()).SerializeToString()
    body = request + _ld(0x3A, deep_struct_bytes(depth))  # DecideRequest.context
    assert raw_call(channel, "Decide", body) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "body", [b"\xff\xff\xff", b"\x0a\xff", bytes(range(256)), b"\x12\x02\xc3\x28"]
)
def test_garbage_bytes_are_invalid_argument(channel: grpc.Channel, body: bytes) -> None:
    assert raw_call(channel, "Decide", body) == grpc.StatusCode.INVALID_ARGUMENT


def test_nan_in_struct_is_invalid_argument(stub: pb_grpc.GovernanceStub) -> None:
    request = decide_request(allow_input(context={"score": float("nan")}))
    assert code_of(lambda: stub.Decide(request)) == grpc.StatusCode.INVALID_ARGUMENT
    request = decide_request(allow_input(context={"score": float("inf")}))
    assert code_of(lambda: stub.Decide(request)) == grpc.StatusCode.INVALID_ARGUMENT


def test_oversize_message_is_resource_exhausted(stub: pb_grpc.GovernanceStub) -> None:
    request = decide_request(allow_input(context={"blob": "x" * (1024 * 1024 + 10)}))
    assert code_of(lambda: stub.Decide(request)) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_batch_of_1000_in_request_order(stub: pb_grpc.GovernanceStub) -> None:
    deny = allow_input(tenant_id="t2")
    requests = [
        decide_request(allow_input() if i % 3 else deny, request_id=f"b-{i}") for i in range(1000)
    ]
    response = stub.DecideBatch(pb.DecideBatchRequest(requests=requests), timeout=30)
    assert [d.request_id for d in response.decisions] == [f"b-{i}" for i in range(1000)]
    assert [d.effect for d in response.decisions] == [
        pb.ALLOW if i % 3 else pb.DENY for i in range(1000)
    ]
    assert len({d.decision_id for d in response.decisions}) == 1000


def test_batch_over_limit_is_resource_exhausted(stub: pb_grpc.GovernanceStub) -> None:
    requests = [decide_request(allow_input(), request_id=str(i)) for i in range(1001)]
    call = lambda: stub.DecideBatch(pb.DecideBatchRequest(requests=requests))  # noqa: E731
    assert code_of(call) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_batch_with_a_wrong_hash_is_refused_whole(stub: pb_grpc.GovernanceStub) -> None:
    requests = [
        decide_request(allow_input()),
        decide_request(allow_input(), constitutional_hash="x"),
    ]
    call = lambda: stub.DecideBatch(pb.DecideBatchRequest(requests=requests))  # noqa: E731
    assert code_of(call) == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("path", ["acgs/constitution/decision", "data.acgs.constitution.decision"])
def test_evaluate_any_rule(stub: pb_grpc.GovernanceStub, path: str) -> None:
    response = stub.Evaluate(
        pb.EvaluateRequest(
            constitutional_hash=HASH, path=path, input_json=json.dumps(allow_input())
        )
    )
    assert not response.undefined and response.policy_revision
    assert json.loads(response.result_json) == {"effect": "ALLOW", "violations": []}


@pytest.mark.parametrize(
    ("path", "input_json"),
    [
        ("acgs/constitution/decision", "{not json"),
        ("acgs/constitution/decision", "NaN"),
        ("acgs/constitution/decision", "[" * 5000 + "]" * 5000),
        ("acgs/constitution/no_such_rule", "{}"),
        ("", "{}"),
    ],
)
def test_evaluate_bad_input_is_invalid_argument(
    stub: pb_grpc.GovernanceStub, path: str, input_json: str
) -> None:
    request = pb.EvaluateRequest(constitutional_hash=HASH, path=path, input_json=input_json)
    assert code_of(lambda: stub.Evaluate(request)) == grpc.StatusCode.INVALID_ARGUMENT


def test_evaluate_requires_the_hash(stub: pb_grpc.GovernanceStub) -> None:
    request = pb.EvaluateRequest(path="acgs/constitution/decision", input_json="{}")
    assert code_of(lambda: stub.Evaluate(request)) == grpc.StatusCode.FAILED_PRECONDITION
