"""Every projector, in the order the shipper runs them over a batch.

Order matters where one projection reads what another wrote in the same
transaction: the escalation projector merges a retried request's escalations
using the ``decision_retries`` and ``idempotency_keys`` the decision projector
wrote, so the decision projector runs first. The table each one writes, and
the route each table's rows take, are listed in docs/events.md.
"""

from __future__ import annotations

from acgs.adapters.projectors import Projector
from acgs.adapters.projectors.checkpoints import CheckpointProjector
from acgs.adapters.projectors.decisions import DecisionProjector
from acgs.adapters.projectors.escalations import EscalationProjector


def projectors(*, idempotency_window_s: float, group_s: float) -> tuple[Projector, ...]:
    """The shipper's projectors; the settings are ACGS_IDEMPOTENCY_WINDOW_S and
    ACGS_ESCALATION_GROUP_S."""
    return (
        DecisionProjector(window_s=idempotency_window_s),
        CheckpointProjector(),
        # After the decision projector: it reads the decision_retries and
        # idempotency_keys that one wrote in this transaction.
        EscalationProjector(group_s=group_s),
    )
