"""Verifying one instance's chain against its signed checkpoints; online and offline alike.

:class:`ChainVerifier` is fed the chain's records in ``seq`` order (checkpoint
records among them) and is given the checkpoints kept apart from the chain
(the ``audit_checkpoints`` table, or their copies in an export). Both the
``VerifyChain`` call and ``acgs audit verify --export`` use it, so they agree.
Beyond the hash chain's own checks (missing, altered, reordered) it names:

- ``rechained``: a checkpoint's signed head hash differs from the chain's hash
  at the seq it signed: a record was edited and every hash after it recomputed;
- ``bad_signature``: a checkpoint not signed by a trusted key;
- ``truncated``: the chain ends before the latest checkpoint's own record;
- ``deleted``: checkpoints are left but no record of the chain is.

What no verifier can see, it says in ``notes``: without any checkpoint a cut
tail is undetectable, and records after the latest checkpoint are protected by
the hash chain alone until the next one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from acgs.domain.audit import (
    ALTERED,
    BAD_SIGNATURE,
    DELETED,
    GENESIS_HASH,
    RECHAINED,
    TRUNCATED,
    AuditRecord,
    ChainBreak,
    ChainChecker,
)
from acgs.domain.audit_query import ChainReport
from acgs.domain.checkpoint import KIND, Checkpoint, CheckpointKeys

NO_CHECKPOINT = "no checkpoint: tail truncation cannot be detected"


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A checkpoint record kept apart from the chain; ``problem`` when it did not parse."""

    record_seq: int
    checkpoint: Checkpoint | None
    problem: str = ""


def stored_of(record: AuditRecord) -> StoredCheckpoint:
    """A checkpoint record kept apart from the chain, parsed (or why it does not parse)."""
    if record.malformed or record.kind != KIND:
        why = record.malformed or f"it is a record of kind {record.kind!r}"
        return StoredCheckpoint(record.seq, None, why)
    try:
        return StoredCheckpoint(record.seq, Checkpoint.from_record(record))
    except ValueError as err:
        return StoredCheckpoint(record.seq, None, str(err))


class ChainVerifier:
    """Checks one chain fed in ``seq`` order against its checkpoints; see the module docstring.

    ``expect_seq``/``prev_hash`` describe the first record expected (a range may
    start after seq 1). ``stored`` are the checkpoints kept apart from the chain;
    more can be given with :meth:`add_stored` as the walk goes (a copy must be
    given before the record it signed is fed). Memory stays bounded by what is
    pending, whatever the chain's length.
    """

    def __init__(self, instance_id: str, *, keys: CheckpointKeys, expect_seq: int = 1,
                 prev_hash: str = GENESIS_HASH, stored: Sequence[StoredCheckpoint] = (),
                 quarantined: frozenset[int] = frozenset()) -> None:
        self.instance_id = instance_id
        self._keys = keys
        # Quarantined seqs (damaged lines, records the database refused) are present in
        # the chain, not as records: passing over only them is no gap.
        self._checker = ChainChecker(expect_seq=expect_seq, prev_hash=prev_hash,
                                     quarantined=quarantined)
        self._from = expect_seq
        self._last = expect_seq - 1  # last seq found good
        self._anchor = expect_seq - 1  # last seq a valid checkpoint vouched for
        self.broken: ChainBreak | None = None
        self._prev0 = prev_hash
        self._latest: tuple[int, Checkpoint] | None = None  # newest validly signed
        self._vouched_latest: tuple[int, Checkpoint] | None = None  # newest the chain matched
        self._pending: dict[int, list[tuple[int, Checkpoint]]] = {}
        self._verified = 0
        self._keys_used: set[str] = set()
        self._stored_break: ChainBreak | None = None
        self.add_stored(stored)

    @property
    def passed_quarantined(self) -> list[int]:
        """The quarantined seqs the walk passed over."""
        return self._checker.passed_quarantined

    # -- feeding -----------------------------------------------------------------------------

    def feed(self, record: AuditRecord) -> bool:
        """Check the next record; False once the chain is broken (feed no more)."""
        if self.broken is None:
            self.broken = self._checker.feed(record) or self._against_stored(record)
            if self.broken is None and record.kind == KIND:
                self.broken = self._embedded(record)
            if self.broken is None:
                self._last = record.seq
        return self.broken is None

    def _against_stored(self, record: AuditRecord) -> ChainBreak | None:
        for record_seq, cp in self._pending.pop(record.seq, []):
            if cp.head_hash != record.record_hash:
                return self._rechained(cp, record.record_hash)
            self._vouched(record_seq, cp)
        return None

    def _embedded(self, record: AuditRecord) -> ChainBreak | None:
        try:
            cp = Checkpoint.from_record(record)
        except ValueError as err:
            return ChainBreak(record.seq, ALTERED, f"seq {record.seq}: {err}")
        wrong = self._misplaced(cp, record.seq)
        if wrong:
            return ChainBreak(record.seq, ALTERED, wrong)
        problem = self._keys.problem(cp)
        if problem is not None:
            return ChainBreak(record.seq, BAD_SIGNATURE, f"checkpoint at seq {record.seq}: "
                              f"{problem}")
        if cp.head_hash != record.prev_hash:
            return self._rechained(cp, record.prev_hash)
        self._vouched(record.seq, cp)
        return None

    # -- checkpoints kept apart ----------------------------------------------------------------

    def add_stored(self, items: Iterable[StoredCheckpoint]) -> None:
        """Checkpoints kept apart from the chain, each before the record it signed is fed."""
        for item in items:
            self._add_stored(item)

    def _stored_broken(self, found: ChainBreak) -> None:
        if self._stored_break is None or found.seq < self._stored_break.seq:
            self._stored_break = found

    def _add_stored(self, item: StoredCheckpoint) -> None:
        cp, seq = item.checkpoint, item.record_seq
        if cp is None or self._misplaced(cp, seq):
            why = item.problem if cp is None else self._misplaced(cp, seq)
            self._stored_broken(ChainBreak(seq, ALTERED, f"stored checkpoint of seq {seq}: "
                                           f"{why}"))
            return
        if cp.signed_seq < self._from - 1:
            return  # before the range checked
        problem = self._keys.problem(cp)
        if problem is not None:
            self._stored_broken(ChainBreak(seq, BAD_SIGNATURE, f"stored checkpoint of seq "
                                           f"{seq}: {problem}"))
        elif cp.signed_seq == self._from - 1:
            if cp.head_hash != self._prev0:
                self._stored_broken(self._rechained(cp, self._prev0))
            else:
                self._vouched(seq, cp)
        else:
            self._pending.setdefault(cp.signed_seq, []).append((seq, cp))
            if self._latest is None or seq > self._latest[0]:
                self._latest = (seq, cp)

    def _misplaced(self, cp: Checkpoint, record_seq: int) -> str:
        if cp.instance_id != self.instance_id:
            return f"checkpoint at seq {record_seq} names instance {cp.instance_id!r}"
        if cp.signed_seq != record_seq - 1:
            return f"checkpoint at seq {record_seq} claims to sign seq {cp.signed_seq}"
        return ""

    def _vouched(self, record_seq: int, cp: Checkpoint) -> None:
        """The chain matched ``cp`` (vouched in non-decreasing ``record_seq`` order)."""
        if self._vouched_latest is None or record_seq > self._vouched_latest[0]:
            self._verified += 1  # the copy and the chain's own record count once
            self._vouched_latest = (record_seq, cp)
        self._keys_used.add(cp.key_id)
        self._anchor = max(self._anchor, cp.signed_seq)
        if self._latest is None or record_seq >= self._latest[0]:
            self._latest = (record_seq, cp)

    def _rechained(self, cp: Checkpoint, actual: str) -> ChainBreak:
        m = cp.signed_seq
        first = min(self._anchor + 1, m)
        return ChainBreak(m, RECHAINED, (
            f"the checkpoint signed at seq {m} has head hash {cp.head_hash[:16]}…, but the "
            f"chain's hash at seq {m} is {actual[:16]}…: a record in seq {first}..{m} was "
            "edited and the hashes after it recomputed"))

    # -- the verdict ---------------------------------------------------------------------------

    def finish(self, *, to_end: bool = True) -> ChainReport:
        """The report; ``to_end`` when the check reached the chain's end (tail checks apply)."""
        broken = self.broken
        if broken is None and to_end:
            broken = self._tail_break()
        candidates = [b for b in (broken, self._stored_break) if b is not None]
        broken = min(candidates, key=lambda b: b.seq) if candidates else None
        last = self._last if broken is None else min(self._last, broken.seq - 1)
        if broken is not None and broken.reason == RECHAINED:
            last = min(last, self._anchor)
        latest = self._vouched_latest
        return ChainReport(
            self.instance_id, self._from, last, self._checker.checked, broken,
            checkpoint_seq=latest[1].signed_seq if latest else 0,
            checkpoint_record_seq=latest[0] if latest else 0,
            checkpoint_at_us=latest[1].signed_at_us if latest else 0,
            checkpoints_checked=self._verified, keys_used=tuple(sorted(self._keys_used)),
            trust=self._keys.trust, notes=self._notes(broken, latest),
        )

    def _tail_break(self) -> ChainBreak | None:
        if self._latest is None or self._last >= self._latest[0]:
            return None
        seq, cp = self._latest
        if self._checker.checked == 0 and self._from == 1:
            return ChainBreak(1, DELETED, (
                f"no record of instance {self.instance_id!r} is left, but its checkpoints are "
                f"(the latest signed seq {cp.signed_seq}): the chain was deleted"), 1)
        n = self._last
        return ChainBreak(n + 1, TRUNCATED, (
            f"chain ends at seq {n}, checkpoint signed at seq {cp.signed_seq} (its record is "
            f"seq {seq}): seq {n + 1}..{seq} were cut off the end"), n + 1)

    def _notes(self, broken: ChainBreak | None, latest: tuple[int, Checkpoint] | None
               ) -> tuple[str, ...]:
        if broken is not None:
            return ()
        if self._latest is None:
            return (NO_CHECKPOINT,)
        if latest is None or self._last <= latest[0]:
            return ()
        return (f"{self._last - latest[0]} record(s) after the latest checkpoint (seq "
                f"{latest[0]}) are covered by the hash chain only, until the next checkpoint",)
