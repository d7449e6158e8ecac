"""Grouping escalations: which decisions share one escalation, and this server's open groups.

A caller looping a request the constitution escalates (a cross-tenant read, a
policy that keeps timing out) must not fill the approvers' queue: decisions
with the same :func:`group_key` within ``ACGS_ESCALATION_GROUP_S`` of the
group's opening carry the same escalation id, and approvers see one item with
its count. The key is (reason, requesting caller, principal, violated
principles, action type, resource). The requesting caller is in it so that
separation of powers still knows every requester of a group (it is one), and
the action type so that approving one high-impact action never approves
another on the same resource.

Grouping cannot stop a caller that varies the resource (``resource.id`` x0, x1, ...):
each request is its own group, and must stay so (approving one escalation must
never approve an action on a resource the approver did not see). So each caller
may open at most ``ACGS_ESCALATION_CALLER_LIMIT`` escalations per sliding
``ACGS_ESCALATION_CALLER_WINDOW_S`` on one server (:class:`OpeningLimit`); past it,
the escalator raises :class:`EscalationLimited` and the decision is a DENY
(see :mod:`acgs.service_layer.escalator`). No I/O here.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from acgs.domain import canonical
from acgs.domain.model import Caller, Violation


class EscalationLimited(Exception):
    """The caller opened its cap of escalations on this server within the window: the
    decision that would have opened one more is answered DENY with ``violation``
    (principle ``escalation_limit``) and opens nothing."""

    def __init__(self, violation: Violation) -> None:
        super().__init__(violation.message)
        self.violation = violation


def group_key(*, reason: str, caller: Caller, policy_input: Mapping[str, Any] | None,
              violations: Sequence[Violation]) -> str:
    """The group of an escalation: a hex digest of what makes two escalations one."""
    doc = policy_input or {}
    principal = doc.get("principal")
    action = doc.get("action")
    resource = doc.get("resource")
    parts = [
        reason, caller.id,
        principal.get("id") if isinstance(principal, Mapping) else None,
        sorted({v.principle for v in violations}),
        action.get("type") if isinstance(action, Mapping) else None,
        {k: resource.get(k) for k in ("type", "id", "tenant_id")}
        if isinstance(resource, Mapping) else None,
        doc.get("tenant_id"),
    ]
    return hashlib.sha256(canonical.dumps(parts).encode("utf-8")).hexdigest()[:32]


class OpenGroups:
    """The escalation each group key opened on this server, for ``window_s`` after its
    opening; at most ``max_entries`` (the oldest is forgotten first: its group then opens
    a new escalation, which PostgreSQL merges into the pending one, see the migration)."""

    def __init__(self, *, window_s: float, max_entries: int = 10_000,
                 clock: Callable[[], float]) -> None:
        self._window_s = window_s
        self._max = max(1, max_entries)
        self._clock = clock
        self._groups: OrderedDict[str, tuple[str, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._window_s > 0

    def get(self, key: str) -> str | None:
        """The escalation id of ``key``'s open group, if it is still within its window."""
        held = self._groups.get(key)
        if held is None:
            return None
        if held[1] <= self._clock():
            del self._groups[key]
            return None
        return held[0]

    def put(self, key: str, escalation_id: str) -> None:
        self._groups[key] = (escalation_id, self._clock() + self._window_s)
        self._groups.move_to_end(key)
        while len(self._groups) > self._max:
            self._groups.popitem(last=False)

    def forget(self, escalation_ids: set[str]) -> None:
        """Close the groups of these escalations (not opened after all, or resolved)."""
        for key in [k for k, (eid, _) in self._groups.items() if eid in escalation_ids]:
            del self._groups[key]

    def __len__(self) -> int:
        return len(self._groups)


class OpeningLimit:
    """At most ``limit`` escalations opened per caller within a sliding ``window_s``
    (``limit`` 0 or ``window_s`` 0: no limit).

    :meth:`admit` records an opening when the caller is under its limit. State is
    bounded: at most ``max_callers`` callers are tracked, each with at most ``limit``
    opening times; past it, the caller seen least recently is forgotten. Forgetting
    only loosens the cap, and only for that caller: it starts afresh, as if it had
    opened nothing in the window (never stricter for anyone). Reaching that takes
    ``max_callers`` distinct authenticated callers, each opening escalations.
    """

    def __init__(self, *, limit: int, window_s: float, max_callers: int = 10_000,
                 clock: Callable[[], float]) -> None:
        self.limit = max(0, limit)
        self.window_s = window_s
        self._max = max(1, max_callers)
        self._clock = clock
        self._opened: OrderedDict[str, deque[float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.limit > 0 and self.window_s > 0

    def admit(self, caller_id: str) -> bool:
        """Whether ``caller_id`` may open one more escalation now; if so, count it."""
        if not self.enabled:
            return True
        now = self._clock()
        times = self._opened.get(caller_id)
        if times is None:
            times = self._opened[caller_id] = deque()
        else:
            self._opened.move_to_end(caller_id)
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if len(times) >= self.limit:
            return False
        times.append(now)
        while len(self._opened) > self._max:
            self._opened.popitem(last=False)
        return True

    def give_back(self, caller_id: str) -> None:
        """An admitted opening did not happen after all (the journal refused it)."""
        times = self._opened.get(caller_id)
        if times:
            times.pop()

    def __len__(self) -> int:
        return len(self._opened)
