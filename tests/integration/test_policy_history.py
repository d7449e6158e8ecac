"""The policy history and its events in a real PostgreSQL (PgPolicyStore, migration 0014).

- Activations push, rollbacks pop: two rollbacks step back twice, never forward to
  what was rolled back; a rollback with nothing beneath is refused and records nothing.
- A version stored unsigned takes a signature once (policy.version_signed).
- Every upload, activation and rollback is one event of the "admin" chain, with the
  admin who did it, written in the transaction of its change: a change that fails
  leaves no event, and the chain verifies.
- policy_state (a view now) still gives the desired revision and a generation that
  grows with every change; the NOTIFY still wakes listeners.
- An automatic rollback is the same rollback, by the server, with its reason.
- A database migrated before 0014 keeps its desired and previous revisions.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from acgs import CONSTITUTIONAL_HASH
from acgs.adapters.pg_audit_queries import AuditQueries
from acgs.adapters.pg_migrations import default_directory, migrate
from acgs.adapters.pg_policies import CHANNEL, PgPolicyStore
from acgs.domain import events
from acgs.domain.model import Caller
from acgs.domain.policy_version import CheckedPolicy, FleetState
from acgs.errors import InvalidTransition, NotFound
from acgs.service_layer.policy_watch import AutoRollback
from psycopg_pool import AsyncConnectionPool

pytestmark = pytest.mark.postgres

ALICE = Caller(id="tok-alice", role="admin", identity="alice@example")
BOB = Caller(id="tok-bob", role="admin")
T = TypeVar("T")


def policy(revision: str, version: str = "1.0.0") -> CheckedPolicy:
    return CheckedPolicy(revision=revision, digest=revision * 4, name="constitution",
                         version=version, modules=(("a.rego", "package a"),), data_json="{}",
                         manifest_json="{}", tests_passed=3)


def run(url: str, body: Callable[[PgPolicyStore], Awaitable[T]], *, channel: str = CHANNEL) -> T:
    async def go() -> T:
        async with AsyncConnectionPool(url, min_size=1, max_size=4, open=False,
                                       kwargs={"autocommit": True}) as pool:
            return await body(PgPolicyStore(pool=pool, channel=channel))

    return asyncio.run(go())


def admin_events(url: str) -> list[tuple[int, str, str, str, events.Event | None]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT seq, kind, caller_id, caller_role, data FROM audit_decisions"
                            " WHERE instance_id = 'admin' ORDER BY seq").fetchall()
    return [(r[0], r[1], r[2], r[3], events.decode(r[1], r[4])) for r in rows]


def verify_admin(url: str) -> tuple[bool, int]:
    async def go() -> tuple[bool, int]:
        async with AsyncConnectionPool(url, min_size=1, max_size=2, open=False) as pool:
            report = await AuditQueries(pool=pool).verify_chain("admin")
            return report.ok, report.checked

    return asyncio.run(go())


async def store_all(store: PgPolicyStore, *revisions: str) -> None:
    for revision in revisions:
        await store.insert_version(policy(revision), signature="", caller=ALICE,
                                   message=f"upload {revision}")


def test_two_rollbacks_step_back_twice_and_never_forward(pg_url: str) -> None:
    async def body(store: PgPolicyStore) -> list[Any]:
        await store_all(store, "A", "B", "C", "D")
        seen: list[Any] = []
        for revision in ("A", "B", "C"):
            seen.append(await store.activate(revision, caller=ALICE, message=f"go {revision}"))
        seen.append(await store.roll_back(caller=BOB, reason="C misbehaves"))
        seen.append(await store.roll_back(caller=BOB, reason="B too"))
        with pytest.raises(InvalidTransition, match="nothing to roll back to"):
            await store.roll_back(caller=BOB)
        seen.append(await store.state())
        seen.append(await store.activate("D", caller=ALICE))  # pushes onto A
        seen.append(await store.roll_back(caller=ALICE))  # back to A: not C, not B
        seen.append(await store.history(limit=100))
        seen.append(await store.history(limit=2, before_seq=6))
        return seen

    *states, history, page = run(pg_url, body)
    assert states == [FleetState("A", "", 1), FleetState("B", "A", 2), FleetState("C", "B", 3),
                      FleetState("B", "C", 4), FleetState("A", "B", 5), FleetState("A", "B", 5),
                      FleetState("D", "A", 6), FleetState("A", "D", 7)]
    assert [(e.seq, e.action, e.revision, e.replaced_revision, e.beneath, e.undoes, e.actor_id,
             e.message, e.current) for e in history] == [
        (7, "rolled_back", "A", "D", 0, 6, "tok-alice", "", False),
        (6, "activated", "D", "A", 1, 0, "tok-alice", "", False),
        (5, "rolled_back", "A", "B", 0, 2, "tok-bob", "B too", False),
        (4, "rolled_back", "B", "C", 0, 3, "tok-bob", "C misbehaves", False),
        (3, "activated", "C", "B", 2, 0, "tok-alice", "go C", False),
        (2, "activated", "B", "A", 1, 0, "tok-alice", "go B", False),
        (1, "activated", "A", "", 0, 0, "tok-alice", "go A", True),  # in force again
    ]
    assert history[-1].actor_identity == "alice@example" and history[-1].actor_role == "admin"
    assert [e.seq for e in page] == [5, 4]
    with psycopg.connect(pg_url) as conn:  # the view the servers' sync reads
        row = conn.execute("SELECT desired_revision, previous_revision, generation, "
                           "activated_by FROM policy_state").fetchall()
    assert row == [("A", "D", 7, "tok-alice")]


def test_every_change_is_an_admin_event_with_its_actor(pg_url: str) -> None:
    async def body(store: PgPolicyStore) -> list[Any]:
        first, created = await store.insert_version(policy("A"), signature="sig", caller=ALICE,
                                                    message="initial")
        again, again_created = await store.insert_version(policy("A"), signature="", caller=BOB,
                                                          message="the same content")
        await store.insert_version(policy("B", "2.0.0"), signature="", caller=ALICE)
        await store.activate("A", caller=ALICE, message="first")
        await store.activate("A", caller=BOB)  # desired already: nothing changes
        await store.activate("B", caller=BOB, message="ship 2.0")
        await store.roll_back(caller=ALICE, reason="2.0 denies reads")
        return [first, created, again, again_created, await store.history(limit=10),
                await store.list_versions()]

    first, created, again, again_created, history, versions = run(pg_url, body)
    assert created and not again_created
    assert (again.created_by, again.message) == ("tok-alice", "initial")  # the first upload's
    assert first.message == "initial" and {v.revision: v.message for v in versions} == {
        "A": "initial", "B": ""}
    assert admin_events(pg_url) == [
        (1, "policy.version_created", "tok-alice", "admin",
         events.PolicyVersionCreated("A", "constitution", "1.0.0", "initial", True, 3)),
        (2, "policy.version_created", "tok-alice", "admin",
         events.PolicyVersionCreated("B", "constitution", "2.0.0", "", False, 3)),
        (3, "policy.activated", "tok-alice", "admin",
         events.PolicyActivated("A", "", 1, "first")),
        (4, "policy.activated", "tok-bob", "admin",
         events.PolicyActivated("B", "A", 2, "ship 2.0")),
        (5, "policy.rolled_back", "tok-alice", "admin",
         events.PolicyRolledBack("A", "B", 3, "2.0 denies reads")),
    ]
    with psycopg.connect(pg_url) as conn:
        ids = dict(conn.execute("SELECT seq, decision_id::text FROM audit_decisions "
                                "WHERE instance_id = 'admin'").fetchall())
        times = conn.execute("SELECT h.at = a.decided_at FROM policy_history h JOIN "
                             "audit_decisions a ON a.decision_id::text = h.event_id").fetchall()
    assert {e.seq: e.event_id for e in history} == {1: ids[3], 2: ids[4], 3: ids[5]}
    assert times == [(True,)] * 3
    assert verify_admin(pg_url) == (True, 5)


def test_a_version_stored_unsigned_takes_a_signature_once_on_the_record(pg_url: str) -> None:
    """The one change a stored version takes: its signature, when it had none, recorded as
    policy.version_signed with who attached it; a signed version keeps its signature and an
    attempt records nothing; an unknown revision is NotFound."""
    async def body(store: PgPolicyStore) -> list[Any]:
        await store.insert_version(policy("A"), signature="", caller=ALICE, message="initial")
        signed = await store.attach_signature("A", signature="sig-1", caller=BOB,
                                              message="signed after the push")
        again = await store.attach_signature("A", signature="sig-2", caller=ALICE)
        with pytest.raises(NotFound):
            await store.attach_signature("missing", signature="sig", caller=ALICE)
        return [signed, again, await store.get_version("A")]

    (first, first_signed), (second, second_signed), stored = run(pg_url, body)
    assert first_signed and not second_signed
    assert first.signature == second.signature == stored.signature == "sig-1"
    assert (stored.created_by, stored.message) == ("tok-alice", "initial")  # the upload's
    assert admin_events(pg_url) == [
        (1, "policy.version_created", "tok-alice", "admin",
         events.PolicyVersionCreated("A", "constitution", "1.0.0", "initial", False, 3)),
        (2, "policy.version_signed", "tok-bob", "admin",
         events.PolicyVersionSigned("A", "constitution", "1.0.0", "signed after the push")),
    ]
    assert verify_admin(pg_url) == (True, 2)


def test_a_change_that_fails_records_nothing(pg_url: str) -> None:
    async def prepare(store: PgPolicyStore) -> None:
        await store_all(store, "A", "B")
        await store.activate("A", caller=ALICE)
        await store.activate("B", caller=ALICE)
        with pytest.raises(NotFound):
            await store.activate("missing", caller=ALICE)

    async def broken(store: PgPolicyStore) -> None:
        # An empty channel: PostgreSQL refuses the NOTIFY, after the history row and
        # the event were written in the same transaction.
        with pytest.raises(psycopg.Error):
            await store.activate("A", caller=BOB, message="never happens")
        with pytest.raises(psycopg.Error):
            await store.roll_back(caller=BOB)

    run(pg_url, prepare)
    before = admin_events(pg_url)
    run(pg_url, broken, channel="")
    assert admin_events(pg_url) == before and [e[1] for e in before] == [
        "policy.version_created", "policy.version_created", "policy.activated",
        "policy.activated"]
    state = run(pg_url, lambda store: store.state())
    assert state == FleetState("B", "A", 2)
    assert run(pg_url, lambda store: store.history(limit=10))[0].seq == 2
    assert verify_admin(pg_url) == (True, 4)


def test_concurrent_changes_form_one_gapless_history(pg_url: str) -> None:
    async def body(store: PgPolicyStore) -> list[int]:
        await store_all(store, "A", "B", "C")
        await asyncio.gather(*(store.activate("ABC"[n % 3], caller=ALICE) for n in range(12)))
        return [e.seq for e in await store.history(limit=100)]

    seqs = run(pg_url, body)
    assert seqs == list(range(len(seqs), 0, -1))
    ok, checked = verify_admin(pg_url)
    assert ok and checked == 3 + len(seqs)


def test_activations_notify_the_fleet(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")

        async def body(store: PgPolicyStore) -> None:
            await store_all(store, "A", "B")
            await store.activate("A", caller=ALICE)
            await store.activate("B", caller=ALICE)
            await store.roll_back(caller=ALICE)

        run(pg_url, body)
        payloads = [n.payload for n in listener.notifies(timeout=2, stop_after=3)]
    assert payloads == ["A", "B", "A"]


class Telemetry:
    rollbacks = 0

    def policy_rolled_back(self) -> None:
        self.rollbacks += 1


def test_an_automatic_rollback_is_recorded_with_the_server_and_its_reason(pg_url: str) -> None:
    telemetry = Telemetry()

    async def body(store: PgPolicyStore) -> FleetState | None:
        await store_all(store, "good", "bad", "newer")
        await store.activate("good", caller=ALICE)
        await store.activate("bad", caller=ALICE)
        action = AutoRollback(store=store, instance_id="server-1", telemetry=telemetry,
                              incidents=None)
        await action("bad", "6 of the first 8 decisions under bad failed safe")
        await action("bad", "again, from another server")  # no longer desired: nothing
        await store.activate("newer", caller=BOB)
        await action("good", "a stale judgement")  # an admin acted since: nothing
        return await store.state()

    state = run(pg_url, body)
    assert state == FleetState("newer", "good", 4) and telemetry.rollbacks == 1
    rolled = [e for e in admin_events(pg_url) if e[1] == "policy.rolled_back"]
    assert rolled == [(6, "policy.rolled_back", "server-1", "system", events.PolicyRolledBack(
        "good", "bad", 3, "6 of the first 8 decisions under bad failed safe"))]
    history = run(pg_url, lambda store: store.history(limit=10))
    assert [(e.action, e.actor_id, e.actor_role) for e in history][1] == (
        "rolled_back", "server-1", "system")


def test_a_database_migrated_before_the_history_keeps_its_state(
        make_database: Callable[[], str], tmp_path: Path) -> None:
    url = make_database()
    old = tmp_path / "migrations"
    old.mkdir()
    for f in sorted(default_directory().glob("[0-9]*.sql")):
        if f.name < "0014":
            shutil.copy(f, old / f.name)
    asyncio.run(migrate(url, constitutional_hash=CONSTITUTIONAL_HASH, directory=old))
    with psycopg.connect(url) as conn:
        for revision in ("r1", "r2"):
            conn.execute("INSERT INTO policy_versions (revision, name, version, modules, "
                         "data_json, manifest_json, created_by) VALUES "
                         "(%s, 'p', '1', '{}', '{}', '{}', 'old-admin')", (revision,))
        conn.execute("INSERT INTO policy_state (desired_revision, previous_revision, "
                     "generation, activated_by) VALUES ('r2', 'r1', 5, 'tok-old')")
        conn.commit()
    asyncio.run(migrate(url, constitutional_hash=CONSTITUTIONAL_HASH))

    async def body(store: PgPolicyStore) -> list[Any]:
        before = await store.state()
        after = await store.roll_back(caller=ALICE)
        with pytest.raises(InvalidTransition):
            await store.roll_back(caller=ALICE)
        return [before, after, await store.history(limit=10)]

    before, after, history = run(url, body)
    assert before == FleetState("r2", "r1", 5)  # the generation goes on growing
    assert after == FleetState("r1", "r2", 6)
    assert [(e.seq, e.action, e.revision, e.actor_id, e.event_id) for e in history] == [
        (6, "rolled_back", "r1", "tok-alice", history[0].event_id),
        (5, "activated", "r2", "tok-old", ""), (4, "activated", "r1", "unknown", "")]
