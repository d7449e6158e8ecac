"""The checker's child processes end with their call, and at most `concurrency` run."""

from __future__ import annotations

import asyncio
import sys
import time

import psutil
import pytest
from acgs.adapters.policy_checker import SubprocessPolicyChecker
from acgs.errors import LimitExceeded

HASH = "cdd01ef066bc6cf2"
# A checker that never answers and has started a child of its own.
STUCK = [sys.executable, "-c",
         "import subprocess, sys, time\n"
         "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
         "time.sleep(120)\n"]
PARTS = {"modules": {"a.rego": "package a\n"}, "data_json": "{}", "manifest_json": "{}"}


def descendants() -> list[psutil.Process]:
    alive = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "time.sleep(120)" in " ".join(
                    child.cmdline()):
                alive.append(child)
        except psutil.NoSuchProcess:
            pass
    return alive


async def until(predicate: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.05)
    return False


def test_cancelled_checks_leave_no_process_and_the_cap_holds() -> None:
    async def main() -> None:
        checker = SubprocessPolicyChecker(constitutional_hash=HASH, concurrency=2, command=STUCK)
        for _ in range(3):  # each call ends at its caller's deadline
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(checker.check(**PARTS), 1.0)
        assert await until(lambda: not descendants() and checker.running == 0, 5.0), \
            descendants()
        running = [asyncio.ensure_future(checker.check(**PARTS)) for _ in range(2)]
        assert await until(lambda: len(descendants()) == 4, 10.0)  # 2 checkers + 2 children
        with pytest.raises(LimitExceeded, match="ACGS_POLICY_CHECKERS=2"):
            await checker.check(**PARTS)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        assert await until(lambda: not descendants() and checker.running == 0, 5.0), \
            descendants()

    asyncio.run(main())


def test_a_checker_over_its_time_limit_is_killed_with_its_children() -> None:
    async def main() -> None:
        from acgs.errors import PolicyError

        checker = SubprocessPolicyChecker(constitutional_hash=HASH, timeout_s=1.0,
                                          command=STUCK)
        with pytest.raises(PolicyError, match="took over 1 s"):
            await checker.check(**PARTS)
        assert await until(lambda: not descendants() and checker.running == 0, 5.0)

    asyncio.run(main())
