"""The policy history is a stack: activations push, rollbacks pop, never forward again."""

from __future__ import annotations

import pytest
from acgs.domain import policy_history as ph
from acgs.errors import InvalidTransition


class History:
    """The domain's steps kept in a dict, as policy_history keeps its rows."""

    def __init__(self) -> None:
        self.steps: dict[int, ph.Step] = {}

    def head(self) -> ph.Head | None:
        if not self.steps:
            return None
        last = self.steps[max(self.steps)]
        top = self.steps[last.in_force]
        below = self.steps.get(top.beneath)
        return ph.Head(last.seq, top.seq, top.revision, top.beneath,
                       below.revision if below else "")

    def activate(self, revision: str) -> ph.Step | None:
        step = ph.activation(self.head(), revision)
        if step is not None:
            self.steps[step.seq] = step
        return step

    def rollback(self, from_revision: str = "") -> ph.Step:
        step = ph.rollback(self.head(), from_revision=from_revision)
        self.steps[step.seq] = step
        return step


def test_two_rollbacks_step_back_twice_and_never_forward() -> None:
    h = History()
    for revision in ("A", "B", "C"):
        h.activate(revision)
    first = h.rollback()
    assert (first.action, first.revision, first.replaced_revision, first.undoes) == (
        ph.ROLLED_BACK, "B", "C", 3)
    second = h.rollback()
    assert (second.revision, second.replaced_revision, second.undoes) == ("A", "B", 2)
    with pytest.raises(InvalidTransition, match="nothing to roll back to"):
        h.rollback()
    assert max(h.steps) == 5  # the refused rollback left no step


def test_an_activation_after_a_rollback_pushes_onto_the_restored_one() -> None:
    h = History()
    h.activate("A")
    h.activate("B")
    h.rollback()  # A
    pushed = h.activate("C")
    assert pushed is not None and (pushed.replaced_revision, pushed.beneath) == ("A", 1)
    assert h.rollback().revision == "A"  # back to A, not to B (rolled back before)
    assert h.activate("B") is not None  # B may be activated again: a new push
    assert h.rollback().revision == "A"


def test_activating_the_desired_revision_changes_nothing() -> None:
    h = History()
    h.activate("A")
    assert h.activate("A") is None
    assert ph.activation(h.head(), "B", only_if_unset=True) is None
    first = ph.activation(None, "A", only_if_unset=True)
    assert first is not None and (first.seq, first.beneath, first.replaced_revision) == (
        1, 0, "")


def test_an_automatic_rollback_undoes_only_the_revision_it_judged() -> None:
    h = History()
    h.activate("A")
    h.activate("bad")
    h.activate("C")  # an admin acted first
    with pytest.raises(InvalidTransition, match="no longer the desired revision"):
        h.rollback(from_revision="bad")
    assert h.rollback(from_revision="C").revision == "bad"
    with pytest.raises(InvalidTransition, match="no policy version is active"):
        ph.rollback(None)
