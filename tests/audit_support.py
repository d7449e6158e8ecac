"""Helpers shared by the audit trail's tests: entries to append, journals to open."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from acgs import CONSTITUTIONAL_HASH
from acgs.adapters.journal import Journal
from acgs.adapters.pg_audit import Shipper
from acgs.domain.model import Caller, Decision, Effect, Severity, Violation, new_decision_id
from acgs.service_layer.ports import AuditEntry

CALLER = Caller(id="svc-a", role="agent")
BASE_NS = 1_700_000_000_000_000_000


def entry(n: int = 0, *, tenant: str = "t1", principal: str = "p1", effect: Effect = Effect.ALLOW,
          revision: str = "rev-1", at_ns: int | None = None, ssn: str = "123-45-6789"
          ) -> AuditEntry:
    """One decide entry; ``n`` shows up in the request id and the action."""
    violations = () if effect is Effect.ALLOW else (
        Violation("tenant_isolation", Severity.CRITICAL, "other tenant"),)
    decision = Decision(
        decision_id=new_decision_id(), request_id=f"req-{n}", effect=effect,
        violations=violations, policy_revision=revision, constitutional_hash=CONSTITUTIONAL_HASH,
        cached=False, latency_us=120 + n, decided_at_ns=at_ns or time.time_ns(),
    )
    doc: dict[str, Any] = {"request_id": f"req-{n}", "input": {
        "tenant_id": tenant,
        "principal": {"id": principal, "tenant_id": tenant, "roles": ["agent"],
                      "attributes": {"ssn": ssn}},
        "action": {"type": "read", "attributes": {"n": n}},
    }}
    return AuditEntry("decision", decision, CALLER, json.dumps(doc))


def open_journal(directory: Path, **kw: Any) -> Journal:
    kw.setdefault("instance_id", "inst-a")
    journal = Journal(directory=directory / kw["instance_id"], **kw)
    journal.open()
    return journal


def append_all(journal: Journal, batches: Sequence[Sequence[AuditEntry]]) -> None:
    """Append each batch concurrently from one event loop, as a server would."""
    async def go() -> None:
        await asyncio.gather(*(journal.append(b) for b in batches))

    asyncio.run(go())


def fill(tmp_path: Path, url: str, n: int = 20) -> None:
    """Two instances, ``n`` records each; pairs share a timestamp to exercise tie-breaks."""
    for name in ("inst-a", "inst-b"):
        j = open_journal(tmp_path, instance_id=name)
        append_all(j, [[entry(
            i, tenant=f"t{i % 2}", principal=f"p{i % 3}", revision=f"rev-{i // 10}",
            effect=Effect.DENY if i % 4 == 0 else Effect.ALLOW, at_ns=BASE_NS + (i // 2) * 1000,
        )] for i in range(n)])
        shipper = Shipper(journal=j, conninfo=url)
        shipper.ship_once()
        shipper.close()
        j.close()
