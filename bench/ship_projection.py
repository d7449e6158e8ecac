"""What shipping costs the server per decision, projection included:
``python3 -m bench.ship_projection [--records 20000] [--batch 1000] [--rounds 3]``.

The shipper's thread is part of the server's CPU (``make bench`` counts the whole
process), so moving the idempotency projection from PL/pgSQL (migration 0008's
``acgs_project_batch``, run by PostgreSQL) into a Python projector
(:mod:`acgs.adapters.projectors.decisions`) must not make it dearer. This journals
``--records`` decisions (every one with a request_id, one in ten a retry of an
earlier one: the projection's worst case), then ships them through a real
:class:`~acgs.adapters.pg_audit.Shipper` into a fresh migrated database in batches of
``--batch``, and reports the shipping thread's CPU µs per record (reading the
journal, COPY, INSERT, every projector, commit). Journaling is not measured.
PostgreSQL: ``--database-url`` (an admin conninfo; default ``ACGS_TEST_DATABASE_URL``).

Results (issue 15, ``idem`` branch) on the 2-core development VM, shared with other
work, so paired: one round (20,000 records) of the base, one of this branch, in
alternating order, 18 pairs per batch size; µs of shipper CPU per record:

    batch  base 2a97bd7 (PL/pgSQL          this branch (Python        paired difference
           acgs_project_batch)             DecisionProjector)         (this - base)
    1000   median 39.3, min 28.0           median 38.0, min 28.8      median -1.2, mean -0.6
     100   median 61.4, min 44.1           median 65.2, min 49.0      median +2.2, mean +2.3
     100*  median 83.1, min 73.1           median 79.5, min 63.2      median -4.1, mean -2.7

(*: 10 more pairs, after the projector stopped regrouping records and looking at
every record for escalations when no retry was linked; the machine was busier.)
The noise is large (standard deviation of the paired differences 5-7 µs, so a
standard error of ~1.5 µs): no higher at 1,000-record batches; at 100-record
batches +2.2 µs before that last change, -4.1 after it: no higher, within what
this machine can tell.
Where it goes, at 100-record batches: the projection statement costs ~5.3 µs per
record (the base's function call ~3.3: PostgreSQL did the digests); ``row_of``
without the JSON encoder for a record with no violations saves ~2 µs. The base
numbers come from this module run on commit 2a97bd7 with two lines changed: the
records' kind "decide" (what its SQL projects) and ``Shipper(projections=(
pg_escalations.projection(idempotency_window_s=600.0, group_s=0.0),))``.

Not a test: numbers depend on the machine. Run it from the repository root.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "service"))

import psycopg
from acgs import CONSTITUTIONAL_HASH
from acgs.adapters.journal import Journal
from acgs.adapters.pg_audit import Shipper
from acgs.adapters.pg_migrations import migrate
from acgs.adapters.projectors.registry import projectors
from acgs.domain.model import Caller, Decision, Effect, new_decision_id
from acgs.service_layer.ports import AuditEntry
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

CALLER = Caller(id="acgs_00000000000000a1", role="agent")
RETRY_EVERY = 10  # one decision in ten retries the one before it


def _entry(n: int, key: int) -> AuditEntry:
    doc = {"request_id": f"req-{key}", "input": {
        "tenant_id": "t1",
        "principal": {"id": f"p{key % 50}", "tenant_id": "t1", "roles": ["agent"],
                      "attributes": {"clearance": "standard"}},
        "action": {"type": "read", "attributes": {"n": key, "resource": "ledger/2026"}},
    }}
    decision = Decision(
        decision_id=new_decision_id(), request_id=f"req-{key}", effect=Effect.ALLOW,
        violations=(), policy_revision="rev-1", constitutional_hash=CONSTITUTIONAL_HASH,
        cached=False, latency_us=120 + n % 50, decided_at_ns=time.time_ns())
    return AuditEntry("decision", decision, CALLER, json.dumps(doc, sort_keys=True))


def _fill(journal: Journal, records: int, offset: int) -> None:
    async def go() -> None:
        for start in range(0, records, 500):
            await journal.append([
                _entry(n, offset + (n - 1 if n % RETRY_EVERY == RETRY_EVERY - 1 else n))
                for n in range(start, min(records, start + 500))])

    asyncio.run(go())


def ship_cpu_us(url: str, records: int, batch: int, offset: int) -> float:
    """CPU µs of this thread per record to ship ``records`` fresh decisions."""
    with tempfile.TemporaryDirectory(prefix="acgs-bench-ship-") as tmp:
        instance = f"bench-ship-{offset}"  # a chain of its own per round
        journal = Journal(directory=Path(tmp) / instance, instance_id=instance)
        journal.open()
        shipper = Shipper(journal=journal, conninfo=url, batch=batch,
                          projectors=projectors(idempotency_window_s=600.0, group_s=0.0))
        try:
            _fill(journal, 1, offset - 1)  # its own key
            shipper.ship_once()  # connects: not measured with the rest
            _fill(journal, records, offset)
            start = time.thread_time()
            shipped = shipper.ship_once()
            spent = time.thread_time() - start
        finally:
            shipper.close()
            journal.close()
    if shipped != records:
        raise SystemExit(f"shipped {shipped} of {records} records")
    return spent / records * 1e6


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python3 -m bench.ship_projection", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=1000, help="the shipper's batch size")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--database-url", default=os.environ.get(
        "ACGS_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    args = p.parse_args(argv)
    name = f"acgs_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(args.database_url, dbname=name)
    try:
        asyncio.run(migrate(url, constitutional_hash=CONSTITUTIONAL_HASH))
        runs = []
        for r in range(args.rounds):
            runs.append(ship_cpu_us(url, args.records, args.batch, 1 + r * (args.records + 1)))
            print(f"round {r + 1}: {runs[-1]:.1f} µs CPU per record", flush=True)
        with psycopg.connect(url) as conn:
            keys, retries = conn.execute(
                "SELECT (SELECT count(*) FROM idempotency_keys), "
                "(SELECT count(*) FROM decision_retries)").fetchone() or (0, 0)
        print(f"batch {args.batch}: median {statistics.median(runs):.1f} (min {min(runs):.1f}) "
              f"µs shipper CPU per record over {args.rounds} rounds of {args.records} "
              f"({keys} idempotency keys, {retries} retries linked)")
    finally:
        with psycopg.connect(args.database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(str(conninfo_to_dict(url)["dbname"]))))


if __name__ == "__main__":
    main()
