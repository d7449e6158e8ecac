"""The history of the fleet's desired policy revision: a stack of activations. No I/O.

An activation pushes: the revision becomes desired, on top of the activation
in force. A rollback pops the activation in force: the one beneath it is in
force again and its revision desired. So rollbacks step back through the
history one activation at a time, and never forward to what was rolled back;
an activation after a rollback pushes again (on the restored one).

Each step is one entry of an ordered, append-only history
(``policy_history``, migration 0014): this module computes the next entry
from the :class:`Head` (the last entry and what lies beneath the activation
in force); the store writes it with its audit event.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from acgs.errors import InvalidTransition

ACTIVATED = "activated"
ROLLED_BACK = "rolled_back"


@dataclass(frozen=True, slots=True)
class Head:
    """Where the history stands: the last entry's ``seq``, the activation in force (its
    seq and revision, the desired one) and the activation beneath it (0, "": none)."""

    seq: int
    in_force: int
    revision: str
    beneath: int
    beneath_revision: str


@dataclass(frozen=True, slots=True)
class Step:
    """The next entry: ``revision`` made desired, replacing ``replaced_revision``."""

    seq: int
    action: str
    revision: str
    replaced_revision: str
    in_force: int
    beneath: int  # an activation: the activation it is pushed on (0: none)
    undoes: int  # a rollback: the activation it popped


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One stored entry; ``current`` marks the activation in force."""

    seq: int
    action: str
    revision: str
    replaced_revision: str
    in_force: int
    beneath: int
    undoes: int
    actor_id: str
    actor_role: str
    actor_identity: str
    message: str
    at: dt.datetime
    event_id: str
    current: bool


def activation(head: Head | None, revision: str, *, only_if_unset: bool = False) -> Step | None:
    """The entry that makes ``revision`` desired; None when nothing changes (it is
    desired already, or ``only_if_unset`` and a revision is desired)."""
    if head is not None and (only_if_unset or head.revision == revision):
        return None
    seq = head.seq + 1 if head is not None else 1
    return Step(seq=seq, action=ACTIVATED, revision=revision,
                replaced_revision=head.revision if head is not None else "",
                in_force=seq, beneath=head.in_force if head is not None else 0, undoes=0)


def rollback(head: Head | None, *, from_revision: str = "") -> Step:
    """The entry that pops the activation in force. With ``from_revision``, only if that
    revision is the desired one (an automatic rollback must not undo a newer activation).

    Raises InvalidTransition when nothing is beneath, or ``from_revision`` is not desired."""
    if head is None:
        raise InvalidTransition("no policy version is active: nothing to roll back")
    if from_revision and head.revision != from_revision:
        raise InvalidTransition(f"{from_revision} is no longer the desired revision "
                                f"({head.revision} is): not rolling it back")
    if not head.beneath:
        raise InvalidTransition(
            f"nothing to roll back to: no activation lies beneath that of {head.revision} "
            f"(history #{head.in_force}); activate the version you want instead")
    return Step(seq=head.seq + 1, action=ROLLED_BACK, revision=head.beneath_revision,
                replaced_revision=head.revision, in_force=head.beneath, beneath=0,
                undoes=head.in_force)
