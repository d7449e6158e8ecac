"""Every projector, in the order the shipper runs them over a batch.

Order matters where one projection reads what another wrote in the same
transaction: the escalation projector reads the ``decision_retries`` the
decision projector records. The table each one writes, and the route each
table's rows take, are listed in docs/events.md.
"""

from __future__ import annotations

from acgs.adapters.projectors import Projector
from acgs.adapters.projectors.checkpoints import CheckpointProjector
from acgs.adapters.projectors.escalations import EscalationProjector


def projectors(*, idempotency_window_s: float, group_s: float) -> tuple[Projector, ...]:
    """The shipper's projectors; the settings are ACGS_IDEMPOTENCY_WINDOW_S and
    ACGS_ESCALATION_GROUP_S."""
    del idempotency_window_s  # taken by the decision projector
    return (
        CheckpointProjector(),
        # The decision projector (projectors/decisions.py: idempotency_keys, decision_retries)
        # goes here, before the escalation projector, which reads decision_retries.
        EscalationProjector(group_s=group_s),
    )
