"""Tokens, the role table, rate limits and the CallerResolver, with a fake token table."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from acgs.adapters import dev_tokens
from acgs.domain import tokens as tk
from acgs.domain.model import Caller
from acgs.domain.rate_limit import Rate, RateLimiter
from acgs.entrypoints import admin_cli
from acgs.entrypoints.access import ACCESS, allowed_roles
from acgs.entrypoints.callers import CallerResolver
from acgs.errors import LimitExceeded, PermissionDenied, Unauthenticated
from acgs.lifecycle.callers import refreshing
from acgs.lifecycle.supervisor import Supervisor
from acgs.service_layer.authentication import TokenAuthenticator


@dataclass
class FakeTable:
    records: list[tk.TokenRecord] = field(default_factory=list)
    loads: int = 0
    down: bool = False

    async def load(self) -> Sequence[tk.TokenRecord]:
        self.loads += 1
        if self.down:
            raise ConnectionError("database down")
        return list(self.records)


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Context:
    metadata: tuple[tuple[str, str], ...]

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def issue(role: str = tk.AGENT) -> tk.IssuedToken:
    return tk.issue(role=role, name=f"unit {role}", created_by="tests")


def test_token_format_parse_and_constant_time_match() -> None:
    issued = issue()
    assert tk.parse(issued.token) == issued.record.id
    assert tk.matches(issued.token, issued.record)
    assert issued.token not in repr(issued.record)  # only the hash is stored
    other = issue()
    assert not tk.matches(other.token, issued.record)
    forged = f"{issued.record.id}.{other.token.partition('.')[2]}"
    assert tk.parse(forged) == issued.record.id and not tk.matches(forged, issued.record)
    for bad in ("", "acgs_12", f"{issued.record.id}.", "x" * 80, issued.token + "!"):
        assert tk.parse(bad) is None
    assert tk.bearer(f"bearer {issued.token} ") == issued.token
    assert tk.bearer(f"Basic {issued.token}") is None and tk.bearer("Bearer ") is None
    with pytest.raises(ValueError, match="unknown role"):
        tk.issue(role="root", name="x", created_by="tests")


def test_role_table_is_per_method_with_service_defaults() -> None:
    assert allowed_roles(ACCESS, "acgs.v1.Governance/Decide") == {tk.AGENT}
    assert allowed_roles(ACCESS, "acgs.v1.Audit/ListChains") == {tk.AUDITOR}
    assert allowed_roles(ACCESS, "acgs.v1.Escalations/Resolve") == {tk.ADMIN}
    assert allowed_roles(ACCESS, "acgs.v1.Unknown/Method") == frozenset()  # deny by default
    table = {**ACCESS, "acgs.v1.Audit/ListChains": frozenset({tk.AUDITOR, tk.ADMIN})}
    assert allowed_roles(table, "acgs.v1.Audit/ListChains") == {tk.AUDITOR, tk.ADMIN}
    assert allowed_roles(table, "acgs.v1.Audit/GetDecision") == {tk.AUDITOR}


def test_token_bucket_refills_and_names_the_wait() -> None:
    clock = Clock()
    limiter = RateLimiter(rates={tk.AGENT: Rate(per_s=10, burst=3)}, clock=clock)
    a, b = Caller("a", tk.AGENT), Caller("b", tk.AGENT)
    for _ in range(3):
        limiter.check(a)
    with pytest.raises(LimitExceeded) as info:
        limiter.check(a)
    assert info.value.retry_after_s == pytest.approx(0.1)
    limiter.check(b)  # buckets are per caller
    clock.now += 0.1
    limiter.check(a)
    for _ in range(100):
        limiter.check(Caller("c", tk.AUDITOR))  # no rate for the role: unlimited


def wrong_secret(token: str) -> str:
    """``token`` with its last character changed (replacing it by "A" is no change at all
    for one token in 64: that made these tests flaky)."""
    return token[:-1] + ("B" if token.endswith("A") else "A")


def test_authenticator_checks_secret_role_and_revocation() -> None:
    agent, auditor = issue(), issue(tk.AUDITOR)
    table = FakeTable([agent.record, auditor.record])
    auth = TokenAuthenticator(source=table, clock=Clock())

    async def scenario() -> None:
        await auth.load()
        assert await auth.authenticate(bearer(agent.token)) == Caller(agent.record.id, "agent")
        assert (await auth.authenticate(bearer(auditor.token))).role == "auditor"
        for metadata in ({}, {"authorization": agent.token}, bearer("acgs_x"),
                         bearer(wrong_secret(agent.token))):
            with pytest.raises(Unauthenticated):
                await auth.authenticate(metadata)
        table.records[0] = replace(agent.record, revoked_at=dt.datetime.now(dt.UTC))
        await auth.load()
        with pytest.raises(Unauthenticated, match=r"^invalid bearer token$"):
            await auth.authenticate(bearer(agent.token))

    asyncio.run(scenario())


def test_an_expired_token_is_refused_once_its_secret_matches() -> None:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    now = [start]
    agent = issue()
    record = replace(agent.record, expires_at=start + dt.timedelta(hours=1))
    auth = TokenAuthenticator(source=FakeTable([record]), clock=Clock(), now=lambda: now[0])

    async def scenario() -> None:
        await auth.load()
        assert (await auth.authenticate(bearer(agent.token))).id == record.id
        now[0] = start + dt.timedelta(hours=1)
        with pytest.raises(Unauthenticated, match=r"^bearer token expired$"):
            await auth.authenticate(bearer(agent.token))
        with pytest.raises(Unauthenticated, match=r"^invalid bearer token$"):  # wrong secret
            await auth.authenticate(bearer(wrong_secret(agent.token)))

    asyncio.run(scenario())


def test_token_expiry_is_a_future_aware_time_and_durations_parse() -> None:
    assert tk.parse_duration("90d") == dt.timedelta(days=90)
    assert tk.parse_duration(" 45s ") == dt.timedelta(seconds=45)
    for bad in ("0d", "1w", "-5m", "5", "h", ""):
        with pytest.raises(ValueError, match="duration"):
            tk.parse_duration(bad)
    with pytest.raises(ValueError, match="future"):
        tk.issue(role=tk.AGENT, name="x", created_by="t",
                 expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
    with pytest.raises(ValueError, match="future"):
        tk.issue(role=tk.AGENT, name="x", created_by="t", expires_at=dt.datetime(2999, 1, 1))


def test_unknown_ids_are_refused_at_once_and_share_one_reload_per_interval() -> None:
    table = FakeTable()
    auth = TokenAuthenticator(source=table, reload_interval_s=0.2)
    late = issue()

    async def scenario() -> None:
        await auth.load()
        start = time.monotonic()
        strangers = [bearer(issue().token) for _ in range(50)]
        results = await asyncio.gather(*(auth.authenticate(m) for m in strangers),
                                       return_exceptions=True)
        assert all(isinstance(r, Unauthenticated) for r in results)
        assert time.monotonic() - start < 0.1  # refused at once, not after the reload
        table.records.append(late.record)  # created a moment ago, e.g. by `acgs token create`
        with pytest.raises(Unauthenticated):  # not yet in this server's copy
            await auth.authenticate(bearer(late.token))
        await asyncio.sleep(0.25)
        assert table.loads == 2  # the start, then one reload shared by all fifty-one
        assert (await auth.authenticate(bearer(late.token))).id == late.record.id
        await auth.stop()

    asyncio.run(scenario())


def test_an_unknown_id_and_a_wrong_secret_are_refused_in_the_same_time() -> None:
    agent = issue()
    auth = TokenAuthenticator(source=FakeTable([agent.record]), reload_interval_s=0.01)
    wrong = bearer(wrong_secret(agent.token))

    async def took(metadata: dict[str, str]) -> float:
        start = time.perf_counter()
        with pytest.raises(Unauthenticated, match=r"^invalid bearer token$"):
            await auth.authenticate(metadata)
        return time.perf_counter() - start

    async def scenario() -> tuple[list[float], list[float]]:
        await auth.load()
        unknown, known = [], []
        for _ in range(300):
            unknown.append(await took(bearer(issue().token)))
            known.append(await took(wrong))
        await auth.stop()
        return unknown, known

    unknown, known = asyncio.run(scenario())
    assert abs(statistics.median(unknown) - statistics.median(known)) < 50e-6


def test_database_down_keeps_the_last_copy() -> None:
    agent = issue()
    table = FakeTable([agent.record])
    auth = TokenAuthenticator(source=table, refresh_interval_s=0.01, clock=Clock())

    async def scenario() -> None:
        parts = Supervisor()
        refreshing(parts, auth)
        await auth.load()
        await parts.start()
        table.down = True
        await asyncio.sleep(0.05)
        assert table.loads > 2
        assert (await auth.authenticate(bearer(agent.token))).role == tk.AGENT
        await parts.stop()

    asyncio.run(scenario())


def test_resolver_order_authenticate_authorize_limit() -> None:
    agent = issue()
    auth = TokenAuthenticator(source=FakeTable([agent.record]), clock=Clock())
    limiter = RateLimiter(rates={tk.AGENT: Rate(per_s=1, burst=1)}, clock=Clock())
    resolver = CallerResolver(authenticator=auth, access=ACCESS, limiter=limiter)
    ok = Context((("authorization", f"Bearer {agent.token}"),))

    async def scenario() -> None:
        await auth.load()
        with pytest.raises(Unauthenticated):
            await resolver.resolve(Context(()), "acgs.v1.Governance/Decide")
        with pytest.raises(PermissionDenied, match=r"acgs\.v1\.Audit/GetDecision"):
            await resolver.resolve(ok, "acgs.v1.Audit/GetDecision")
        assert (await resolver.resolve(ok, "acgs.v1.Governance/Decide")).id == agent.record.id
        with pytest.raises(LimitExceeded):
            await resolver.resolve(ok, "acgs.v1.Governance/Decide")
        with pytest.raises(Unauthenticated, match="more than one"):
            await resolver.resolve(Context(ok.metadata * 2), "acgs.v1.Governance/Decide")

    asyncio.run(scenario())


def test_dev_tokens_file_is_private_and_sourceable(tmp_path: Path) -> None:
    path = tmp_path / "dev-tokens"
    tokens = {role: issue(role).token for role in tk.ROLES}
    dev_tokens.write(path, tokens)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert dev_tokens.read(path) == tokens
    assert f"ACGS_AGENT_TOKEN={tokens['agent']}\n" in path.read_text()
    assert dev_tokens.read(tmp_path / "absent") == {}


def test_admin_cli_token_defaults_to_the_auditor_dev_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev_tokens.write(tmp_path / "dev-tokens", {tk.AGENT: "agent-tok", tk.AUDITOR: "auditor-tok"})
    monkeypatch.setenv("ACGS_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("ACGS_TOKEN", raising=False)
    assert admin_cli.token(argparse.Namespace(token=None)) == "auditor-tok"
    monkeypatch.setenv("ACGS_TOKEN", "from-env")
    assert admin_cli.token(argparse.Namespace(token=None)) == "from-env"
    assert admin_cli.token(argparse.Namespace(token="from-flag")) == "from-flag"
