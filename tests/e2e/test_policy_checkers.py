"""Policy checker processes are bounded: they end with their call, and at most
ACGS_POLICY_CHECKERS run at once per server (issue 18)."""

from __future__ import annotations

import time

import grpc
import psutil
import pytest
from acgs.v1 import policy_admin_pb2 as pb
from acgs.v1 import policy_admin_pb2_grpc as pb_grpc

from tests.e2e.policy_support import parts
from tests.plugins.servers import ServerFactory, ServerProcess

pytestmark = pytest.mark.postgres

# About 17 s of evaluation in regopy (4 tests of ~4 s each; one query stays under rego-cpp's
# statement cap, which ends a longer one at once with "Maximum statement count reached"):
# far longer than any deadline below. (An earlier nested `every` over numbers.range
# failed in 2 ms with "Not a number" and passed only when the machine was loaded.)
SLOW_TEST = """package acgs.slow

import rego.v1

test_slow_1 if {
\tcount([x | some i in numbers.range(1, 1000); some j in numbers.range(1, 1000); x := i * j]) > 0
}

test_slow_2 if {
\tcount([x | some i in numbers.range(1, 1000); some j in numbers.range(1, 1000); x := i * j]) > 0
}

test_slow_3 if {
\tcount([x | some i in numbers.range(1, 1000); some j in numbers.range(1, 1000); x := i * j]) > 0
}

test_slow_4 if {
\tcount([x | some i in numbers.range(1, 1000); some j in numbers.range(1, 1000); x := i * j]) > 0
}
"""


def slow_request() -> pb.CreatePolicyVersionRequest:
    request = parts(version="slow")
    request.modules["tests/slow_test.rego"] = SLOW_TEST
    return request


def checkers(server: ServerProcess) -> list[psutil.Process]:
    """The server's live descendant processes (all of them checkers or their children)."""
    assert server.proc is not None
    alive = []
    for child in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.NoSuchProcess:
            pass
    return alive


def wait_for(predicate: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_cancelled_checks_leave_no_process_and_the_cap_holds(servers: ServerFactory) -> None:
    server = servers.start({"ACGS_POLICY_CHECKERS": "2"})
    assert checkers(server) == []
    with server.channel("admin") as channel:
        stub = pb_grpc.PolicyAdminStub(channel)
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as info:
                stub.ValidatePolicy(slow_request(), timeout=1.5)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert wait_for(lambda: checkers(server) == [], 5.0), checkers(server)

        # Two checks run (the cap); a third is refused at once, not queued.
        running = [stub.ValidatePolicy.future(slow_request(), timeout=60) for _ in range(2)]
        assert wait_for(lambda: len([p for p in checkers(server)
                                     if "policy_checker" in " ".join(p.cmdline())]) == 2, 20.0)
        with pytest.raises(grpc.RpcError) as info:
            stub.ValidatePolicy(slow_request(), timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "ACGS_POLICY_CHECKERS=2" in info.value.details()
        # The callers go away (a disconnect): their checkers go with them.
        for call in running:
            call.cancel()
        assert wait_for(lambda: checkers(server) == [], 5.0), checkers(server)
    # The slots are free again: a quick check runs.
    with server.channel("admin") as channel:
        assert pb_grpc.PolicyAdminStub(channel).ValidatePolicy(
            parts(version="quick"), timeout=60).tests_passed > 0
