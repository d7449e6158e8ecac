"""``request_id`` as an idempotency key, on the server that decided the request.

The same caller (its authenticated id, never a request field) sending the same
``request_id`` within ``ACGS_IDEMPOTENCY_WINDOW_S`` gets the original decision
back (``replayed``), with no new audit record and no new escalation; the same
``request_id`` with another request body is
:class:`~acgs.errors.IdempotencyConflict` (FAILED_PRECONDITION). A request
without ``request_id`` is never looked up: it costs nothing here.

Kept in a bounded in-process map (``ACGS_IDEMPOTENCY_MAX_ENTRIES``, least
recently used forgotten first). A request arriving while its first copy is
still being decided waits for that decision rather than making a second.
Across the fleet (a retry on another server, e.g. after this one died),
PostgreSQL links the second decision to the first when the records are
shipped: see :mod:`acgs.adapters.projectors.decisions`.

Only decisions the constitution made are kept for replay: a fail-safe DENY
(timeout, engine error, audit trail refusing) is not, so a retry gets a new
evaluation (PostgreSQL still links its record to the first as a retry).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from acgs.domain.model import Decision, DecisionRequest
from acgs.errors import IdempotencyConflict

Key = tuple[str, str]  # (caller id, request_id)


def digest_of(request_json: str) -> bytes:
    """What identifies a request body: a digest of its canonical encoding."""
    return hashlib.blake2b(request_json.encode("utf-8"), digest_size=16).digest()


@dataclass(slots=True)
class _Entry:
    digest: bytes
    expires_at: float
    decided: asyncio.Future[Decision | None]
    replay: Decision | None = None


class Claim:
    """The right (and duty) to decide a request first: ``keep`` or ``drop`` it, exactly once."""

    def __init__(self, owner: IdempotencyMap, key: Key, entry: _Entry) -> None:
        self._owner = owner
        self._key = key
        self._entry = entry

    def keep(self, decision: Decision) -> None:
        """Replay ``decision`` to later copies (unless it was fail-safe: then ``drop``)."""
        if decision.fail_safe:
            self.drop()
            return
        if not self._entry.decided.done():
            self._entry.decided.set_result(decision)

    def drop(self) -> None:
        """Not decided (an error, a fail-safe): later copies decide anew."""
        self._owner.discard(self._key, self._entry)
        if not self._entry.decided.done():
            self._entry.decided.set_result(None)


class IdempotencyMap:
    """Decisions by (caller, request_id) for ``window_s``; at most ``max_entries``."""

    def __init__(self, *, window_s: float, max_entries: int,
                 clock: Callable[[], float]) -> None:
        self._window_s = window_s
        self._max = max(1, max_entries)
        self._clock = clock
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def claim(self, key: Key, digest: bytes, *, field: str = "request_id",
                    wait: bool = True) -> Decision | Claim | None:
        """The original decision (``replayed``) of ``key``, else a Claim to decide it; None
        when ``wait`` is false and another call is deciding it now (then decide without
        a claim: PostgreSQL links the two records as a retry).

        Raises IdempotencyConflict when ``key`` was used with another body (``field``
        names the request field in the message)."""
        while True:
            entry = self._entries.get(key)
            if entry is None or entry.expires_at <= self._clock():
                return self._reserve(key, digest)
            if entry.digest != digest:
                raise IdempotencyConflict(
                    f"{field} {key[1]!r} was used within the last {self._window_s:g} s "
                    "with another request body; send a new request_id for a new request")
            if not wait and not entry.decided.done():
                return None
            decision = await asyncio.shield(entry.decided)
            if decision is not None:
                self._entries.move_to_end(key)
                if entry.replay is None:  # copied once, on the first replay: most never are
                    entry.replay = replace(decision, replayed=True)
                return entry.replay

    def discard(self, key: Key, entry: _Entry) -> None:
        if self._entries.get(key) is entry:
            del self._entries[key]

    def _reserve(self, key: Key, digest: bytes) -> Claim:
        loop = asyncio.get_running_loop()
        entry = _Entry(digest, self._clock() + self._window_s, loop.create_future())
        self._entries[key] = entry
        self._entries.move_to_end(key)
        excess = len(self._entries) - self._max
        if excess > 0:  # forget the least recently used; one still being decided stays
            for old in list(itertools.islice(self._entries, excess + 16)):
                if excess > 0 and self._entries[old].decided.done():
                    del self._entries[old]
                    excess -= 1
        return Claim(self, key, entry)


class BatchPlan:
    """The idempotency side of one DecideBatch: which items replay an earlier decision, which
    repeat another item of the batch, which are decided now (``fresh``, in order)."""

    def __init__(self, size: int) -> None:
        self.answers: list[Decision | None] = [None] * size
        self.claims: dict[int, Claim] = {}
        self.copies: dict[int, int] = {}

    @classmethod
    async def make(cls, idem: IdempotencyMap, requests: Sequence[DecisionRequest],
                   input_jsons: Sequence[str], caller_id: str) -> BatchPlan:
        """Claim every item's request_id. A batch never waits for a claim held elsewhere
        (two batches waiting on each other's items would deadlock): such an item is
        decided again, and linked as a retry by PostgreSQL. IdempotencyConflict names the
        item whose request_id was used with another body."""
        plan = cls(len(requests))
        firsts: dict[str, tuple[int, bytes]] = {}
        try:
            for i, (request, input_json) in enumerate(zip(requests, input_jsons, strict=True)):
                if request.request_id:
                    await plan._claim(idem, i, request.request_id, digest_of(input_json),
                                      caller_id, firsts)
        except BaseException:
            plan.drop()
            raise
        return plan

    async def _claim(self, idem: IdempotencyMap, i: int, request_id: str, digest: bytes,
                     caller_id: str, firsts: dict[str, tuple[int, bytes]]) -> None:
        field = f"requests[{i}].request_id"
        if request_id in firsts:
            j, first_digest = firsts[request_id]
            if first_digest != digest:
                raise IdempotencyConflict(
                    f"{field} {request_id!r} repeats requests[{j}].request_id with another "
                    "request body")
            self.copies[i] = j
            return
        firsts[request_id] = (i, digest)
        got = await idem.claim((caller_id, request_id), digest, field=field, wait=False)
        if isinstance(got, Claim):
            self.claims[i] = got
        elif got is not None:
            self.answers[i] = got

    @property
    def fresh(self) -> list[int]:
        return [i for i, a in enumerate(self.answers) if a is None and i not in self.copies]

    def drop(self) -> None:
        for claim in self.claims.values():
            claim.drop()

    def complete(self, decided: Sequence[Decision]) -> list[Decision]:
        """Every item's decision, given those of ``fresh`` (in its order)."""
        for i, decision in zip(self.fresh, decided, strict=True):
            self.answers[i] = decision
            if i in self.claims:
                self.claims[i].keep(decision)
        for i, j in self.copies.items():
            first = self.answers[j]
            assert first is not None
            self.answers[i] = replace(first, replayed=True)
        return [a for a in self.answers if a is not None]
