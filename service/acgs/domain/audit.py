"""Audit records, their hash chain, request masking and chain verification.

One chain per server instance: record ``n`` carries ``prev_hash`` = the
``record_hash`` of record ``n - 1`` (64 zeros for the first). ``record_hash``
is the hex SHA-256 of the canonical JSON (:func:`acgs.domain.canonical.dumps`)
of every field of the record except ``seq`` and ``record_hash`` itself.

``seq`` is left out of the hash on purpose: a record's position is proven by
the link to its predecessor, so a record moved to another position still
hashes correctly and is reported as *reordered* rather than *altered*. A gap
in ``seq`` is reported as *missing*. Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import orjson

from acgs.domain import canonical
from acgs.domain.model import Effect, Severity, Violation

GENESIS_HASH = "0" * 64
MASK = "***"

# Why a chain check failed, in the order they are tested for one record.
MISSING = "missing"
ALTERED = "altered"
REORDERED = "reordered"
# Found with signed checkpoints (acgs.domain.chain_verify).
TRUNCATED = "truncated"  # the chain ends before a checkpoint's signed seq
DELETED = "deleted"  # checkpoints of the instance, but none of its records
RECHAINED = "rechained"  # a signed head hash differs from the chain's hash at that seq
BAD_SIGNATURE = "bad_signature"  # a checkpoint not signed by a trusted key


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One event of the audit trail (a decision, an evaluation, an escalation's opening...:
    see :mod:`acgs.domain.events`); the envelope's columns keep their decision names."""

    decision_id: str
    instance_id: str
    seq: int
    decided_at_us: int  # microseconds since the epoch: what PostgreSQL's timestamptz keeps
    kind: str
    caller_id: str
    caller_role: str
    request_id: str
    tenant_id: str
    principal_id: str
    request_json: str
    effect: Effect
    violations: tuple[Violation, ...]
    policy_revision: str
    constitutional_hash: str
    cached: bool
    latency_us: int
    escalation_id: str
    prev_hash: str
    record_hash: str = ""
    # Typed events (acgs.domain.events): the payload's schema version (0: a record written
    # before typed events, hashed without these two fields) and its canonical JSON.
    schema: int = 0
    data: str = ""

    # Read side only (see StoredRecord); plain properties here, not fields, because
    # every extra field costs the journal's hot path one more setattr per record.
    @property
    def malformed(self) -> str:
        """Why a stored column did not parse ("" for a record that did)."""
        return ""

    @property
    def source(self) -> str:
        """Where a stored record was read from ("" for its chain)."""
        return ""

    def body(self) -> dict[str, Any]:
        """Every field the hash covers, as canonical-JSON-ready values."""
        body: dict[str, Any] = {
            "decision_id": self.decision_id,
            "instance_id": self.instance_id,
            "decided_at_us": self.decided_at_us,
            "kind": self.kind,
            "caller_id": self.caller_id,
            "caller_role": self.caller_role,
            "request_id": self.request_id,
            "tenant_id": self.tenant_id,
            "principal_id": self.principal_id,
            "request_json": self.request_json,
            "effect": self.effect.value,
            "violations": [v.as_dict() for v in self.violations],
            "policy_revision": self.policy_revision,
            "constitutional_hash": self.constitutional_hash,
            "cached": self.cached,
            "latency_us": self.latency_us,
            "escalation_id": self.escalation_id,
            "prev_hash": self.prev_hash,
        }
        if self.schema or self.data:  # data is never left out: schema 0 carries none
            body["schema"] = self.schema
            body["data"] = self.data
        return body

    def computed_hash(self) -> str:
        """The hash this record's content calls for (compare with ``record_hash``)."""
        return hashlib.sha256(canonical.dumps_bytes(self.body(), floats=False)).hexdigest()

    def sealed(self, *, seq: int, prev_hash: str) -> AuditRecord:
        """This record placed at ``seq`` after a record hashing to ``prev_hash``."""
        placed = replace(self, seq=seq, prev_hash=prev_hash, record_hash="")
        return replace(placed, record_hash=placed.computed_hash())

    def seal_line(self) -> tuple[str, bytes]:
        """This record's ``record_hash`` (computed) and its journal line (UTF-8, the bytes of
        ``to_json()`` once sealed); one pass, for speed."""
        body = self.body()
        record_hash = hashlib.sha256(canonical.dumps_bytes(body, floats=False)).hexdigest()
        body["seq"] = self.seq
        body["record_hash"] = record_hash
        return record_hash, canonical.dumps_bytes(body, floats=False)

    def to_json(self) -> str:
        """Canonical JSON of the whole record: one journal line, without its newline."""
        doc = self.body()
        doc["seq"] = self.seq
        doc["record_hash"] = self.record_hash
        return canonical.dumps(doc)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> AuditRecord:
        """Rebuild a record; raises KeyError, ValueError or TypeError when ``doc`` is not one."""
        if not doc.get("schema") and doc.get("data"):
            raise ValueError("a record of schema 0 carries no data")
        return cls(
            decision_id=_str(doc["decision_id"]),
            instance_id=_str(doc["instance_id"]),
            seq=_int(doc["seq"]),
            decided_at_us=_int(doc["decided_at_us"]),
            kind=_str(doc["kind"]),
            caller_id=_str(doc["caller_id"]),
            caller_role=_str(doc["caller_role"]),
            request_id=_str(doc["request_id"]),
            tenant_id=_str(doc["tenant_id"]),
            principal_id=_str(doc["principal_id"]),
            request_json=_str(doc["request_json"]),
            effect=Effect(doc["effect"]),
            violations=tuple(
                Violation(_str(v["principle"]), Severity(v["severity"]), _str(v["message"]))
                for v in doc["violations"]
            ),
            policy_revision=_str(doc["policy_revision"]),
            constitutional_hash=_str(doc["constitutional_hash"]),
            cached=bool(doc["cached"]),
            latency_us=_int(doc["latency_us"]),
            escalation_id=_str(doc["escalation_id"]),
            prev_hash=_str(doc["prev_hash"]),
            record_hash=_str(doc["record_hash"]),
            schema=_int(doc.get("schema", 0)),
            data=_str(doc.get("data", "")),
        )

    @classmethod
    def from_json(cls, line: str | bytes) -> AuditRecord:
        """Parse one journal line; raises ValueError (or KeyError/TypeError) when it is not one.

        orjson parses it (1.4 µs against json's 6 µs for a 1 KB line; the shipper parses
        every record). It is stricter than json (no NaN or 1e400, no lone surrogate escape,
        no byte-order mark) and reads an integer past 64 bits as a float (which ``_int``
        refuses); a journal line never holds any of these: a line that does was not
        written by us, and is damaged."""
        return cls.from_dict(orjson.loads(line))


@dataclass(frozen=True, slots=True)
class StoredRecord(AuditRecord):
    """A record as read back from storage or an export, never hashed or journaled as such.

    ``malformed`` names a column that did not parse (the record carries a
    placeholder there; the verifier names it as altered); ``source`` is
    "audit_checkpoints" for a checkpoint's copy kept apart from its chain.
    """

    malformed: str = ""  # type: ignore[misc]
    source: str = ""  # type: ignore[misc]

    @classmethod
    def of(cls, record: AuditRecord, *, malformed: str = "", source: str = "") -> StoredRecord:
        values = {f.name: getattr(record, f.name) for f in fields(AuditRecord)}
        return cls(**values, malformed=malformed, source=source)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


# -- masking ---------------------------------------------------------------------------------


def mask_fields(doc: Any, paths: Sequence[str]) -> Any:
    """A copy of ``doc`` with the value at each dotted path replaced by ``"***"``.

    ``"principal.attributes.ssn"`` masks ``doc["principal"]["attributes"]["ssn"]``;
    a list met on the way is walked element by element. Absent paths are ignored.
    """
    if not paths:
        return doc
    copy = json.loads(json.dumps(doc))  # a deep copy of plain JSON data
    _mask_in_place(copy, paths)
    return copy


def _mask_in_place(doc: Any, paths: Sequence[str]) -> None:
    for path in paths:
        _mask(doc, path.split("."))


def _mask(node: Any, parts: list[str]) -> None:
    if isinstance(node, list):
        for item in node:
            _mask(item, parts)
    elif isinstance(node, dict) and parts[0] in node:
        if len(parts) == 1:
            node[parts[0]] = MASK
        else:
            _mask(node[parts[0]], parts[1:])


def describe_request(request_json: str, mask: Sequence[str],
                     doc: Mapping[str, Any] | None = None) -> tuple[str, str, str]:
    """Masked canonical request JSON, its tenant id and principal id.

    Masking applies to the request's ``input`` document (the policy input) when
    it has one, else to the whole request. ``doc``, the document ``request_json``
    encodes, saves parsing it when nothing is masked (it is never changed).
    Raises ValueError for invalid JSON.
    """
    if doc is None or mask:
        doc = json.loads(request_json)
    policy_input = doc.get("input") if isinstance(doc, Mapping) else None
    root = policy_input if isinstance(policy_input, Mapping) else doc
    if mask:  # ``doc`` is our own fresh parse, so it can be masked in place
        _mask_in_place(root, mask)
        request_json = canonical.dumps(doc)
    principal = root.get("principal") if isinstance(root, Mapping) else None
    principal = principal if isinstance(principal, Mapping) else {}
    tenant = root.get("tenant_id") if isinstance(root, Mapping) else None
    tenant = tenant if isinstance(tenant, str) else principal.get("tenant_id")
    principal_id = principal.get("id")
    return (
        request_json,
        tenant if isinstance(tenant, str) else "",
        principal_id if isinstance(principal_id, str) else "",
    )


# -- verification ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """The first record at which a chain fails, and why (missing, altered or reordered)."""

    seq: int
    reason: str
    detail: str
    missing_seq: int = 0  # for "missing": the first absent seq (``seq`` is the one after the gap)


class ChainChecker:
    """Checks records of one chain fed in ``seq`` order; stops at the first break.

    ``expect_seq``/``prev_hash`` describe the record expected next: start at seq 1
    with :data:`GENESIS_HASH`, or after a known-good record. ``quarantined`` are
    the seqs the shipper quarantined (a damaged journal line, or a record the
    database refused): present in the chain, though not as records, so a gap made
    only of them is no break; they are collected in ``passed_quarantined``. The
    record after one cannot be linked to it (its content is not a record), so
    its ``prev_hash`` is taken as given.
    """

    def __init__(self, *, expect_seq: int = 1, prev_hash: str = GENESIS_HASH,
                 quarantined: frozenset[int] = frozenset()) -> None:
        self.expect_seq = expect_seq
        self.prev_hash = prev_hash
        self.checked = 0
        self.quarantined = quarantined
        self.passed_quarantined: list[int] = []

    def feed(self, record: AuditRecord) -> ChainBreak | None:
        """Check the next record; the break it shows, if any."""
        if record.seq != self.expect_seq and self._quarantined_gap(record.seq):
            self.passed_quarantined.extend(range(self.expect_seq, record.seq))
            self.expect_seq, self.prev_hash = record.seq, record.prev_hash
        while self.expect_seq < record.seq and self.expect_seq in self.quarantined:
            self.passed_quarantined.append(self.expect_seq)  # name the first seq truly absent
            self.expect_seq += 1
        if record.seq != self.expect_seq:
            last = record.seq - 1
            span = f"{self.expect_seq}" if last == self.expect_seq else f"{self.expect_seq}..{last}"
            return ChainBreak(record.seq, MISSING,
                              f"seq {span} missing before seq {record.seq}", self.expect_seq)
        if record.malformed:
            return ChainBreak(record.seq, ALTERED,
                              f"seq {record.seq}: {record.malformed}")
        if record.computed_hash() != record.record_hash:
            return ChainBreak(record.seq, ALTERED,
                              f"seq {record.seq}: content does not match its record_hash")
        if record.prev_hash != self.prev_hash:
            return ChainBreak(
                record.seq, REORDERED,
                f"seq {record.seq} does not follow seq {record.seq - 1}: its prev_hash "
                f"names another record (seq {record.seq - 1} was edited and re-hashed, "
                "or records were reordered or replaced)",
            )
        self.expect_seq = record.seq + 1
        self.prev_hash = record.record_hash
        self.checked += 1
        return None

    def _quarantined_gap(self, seq: int) -> bool:
        gap = range(self.expect_seq, seq)
        return 0 < len(gap) <= len(self.quarantined) and all(s in self.quarantined for s in gap)
