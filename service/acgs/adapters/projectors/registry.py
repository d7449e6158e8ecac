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


def projectors(*, idempotency_window_s: float, group_s: float) -> tuple[Projector, ...]:
    """The shipper's projectors; the settings are ACGS_IDEMPOTENCY_WINDOW_S and
    ACGS_ESCALATION_GROUP_S."""
    del group_s  # taken by the escalation projector
    return (
        DecisionProjector(window_s=idempotency_window_s),
        # The escalation projector (openings, grouping, retries' aliases, counts) goes
        # here: after the decision projector, whose decision_retries it reads.
        CheckpointProjector(),
    )
