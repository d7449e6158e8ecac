"""The audit record, its hash chain, masking and the chain checker."""

from __future__ import annotations

import json
from dataclasses import replace

from acgs.domain.audit import (
    ALTERED,
    GENESIS_HASH,
    MISSING,
    REORDERED,
    AuditRecord,
    ChainChecker,
    describe_request,
    mask_fields,
)
from acgs.domain.model import Effect, Severity, Violation


def record(n: int, prev: str) -> AuditRecord:
    return AuditRecord(
        decision_id=f"00000000-0000-7000-8000-{n:012d}", instance_id="i", seq=n,
        decided_at_us=1_700_000_000_000_000 + n, kind="decide", caller_id="c", caller_role="r",
        request_id=f"r{n}", tenant_id="t", principal_id="p", request_json='{"a":1}',
        effect=Effect.DENY, violations=(Violation("x", Severity.HIGH, "m"),),
        policy_revision="rev", constitutional_hash="h", cached=False, latency_us=n,
        escalation_id="", prev_hash="",
    ).sealed(seq=n, prev_hash=prev)


def chain(n: int) -> list[AuditRecord]:
    out, prev = [], GENESIS_HASH
    for i in range(1, n + 1):
        out.append(record(i, prev))
        prev = out[-1].record_hash
    return out


def check(records: list[AuditRecord]) -> tuple[int, str, int] | None:
    checker = ChainChecker()
    for r in records:
        broken = checker.feed(r)
        if broken:
            return broken.seq, broken.reason, broken.missing_seq
    return None


def test_hash_covers_content_and_link_and_round_trips_through_json() -> None:
    records = chain(3)
    assert records[0].prev_hash == GENESIS_HASH
    assert records[1].prev_hash == records[0].record_hash
    again = AuditRecord.from_json(records[2].to_json())
    assert again == records[2] and again.computed_hash() == again.record_hash
    assert replace(records[2], latency_us=0).computed_hash() != records[2].record_hash
    assert records[2].seal_line() == (records[2].record_hash, records[2].to_json())


def test_good_chain_passes() -> None:
    assert check(chain(5)) is None


def test_altered_record_is_named() -> None:
    records = chain(5)
    records[2] = replace(records[2], effect=Effect.ALLOW)
    assert check(records) == (3, ALTERED, 0)


def test_missing_record_names_the_gap() -> None:
    records = chain(5)
    del records[2]
    assert check(records) == (4, MISSING, 3)


def test_swapped_records_are_reordered_at_the_first() -> None:
    records = chain(5)
    records[1], records[3] = replace(records[3], seq=2), replace(records[1], seq=4)
    assert check(records) == (2, REORDERED, 0)


def test_masking_replaces_named_paths_only() -> None:
    doc = {"principal": {"attributes": {"ssn": "1", "name": "x"}}, "items": [{"k": 1}, {"k": 2}]}
    masked = mask_fields(doc, ["principal.attributes.ssn", "items.k", "absent.path"])
    assert masked == {"principal": {"attributes": {"ssn": "***", "name": "x"}},
                      "items": [{"k": "***"}, {"k": "***"}]}
    assert doc["principal"]["attributes"]["ssn"] == "1"  # the original is untouched


def test_describe_request_masks_the_input_and_finds_tenant_and_principal() -> None:
    text = json.dumps({"request_id": "r", "input": {
        "tenant_id": "t1", "principal": {"id": "p1", "attributes": {"ssn": "123"}}}})
    masked, tenant, principal = describe_request(text, ["principal.attributes.ssn"])
    assert "123" not in masked and json.loads(masked)["input"]["principal"]["attributes"] == {
        "ssn": "***"}
    assert (tenant, principal) == ("t1", "p1")
    assert describe_request('{"path":"x","input":5}', ["a"])[1:] == ("", "")
