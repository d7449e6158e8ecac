"""The ``checkpoint`` projector: keeps each signed checkpoint apart, in ``audit_checkpoints``.

The copy is the checkpoint record verbatim (the columns of ``audit_decisions``):
it is what lets VerifyChain name a chain whose tail, or whole self, was
deleted from ``audit_decisions`` (migration 0007). Nothing is parsed on the
way in, so no content can make the copy fail.
"""

from __future__ import annotations

from collections.abc import Sequence

from acgs.adapters.pg_audit import COLUMNS, row_of
from acgs.adapters.projectors import Plan, Statement
from acgs.domain import events
from acgs.domain.audit import AuditRecord

_INSERT = (f"INSERT INTO audit_checkpoints ({', '.join(COLUMNS)}) "
           f"VALUES ({', '.join(['%s'] * len(COLUMNS))}) ON CONFLICT (instance_id, seq) DO NOTHING")


class CheckpointProjector:
    kinds = frozenset({events.CHECKPOINT})

    def project(self, records: Sequence[AuditRecord]) -> Plan:
        yield Statement(_INSERT, [row_of(r) for r in records], many=True)
