"""The audit record, its hash chain, masking and the chain checker."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
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
    assert records[2].seal_line() == (records[2].record_hash, records[2].to_json().encode())


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


def test_a_gap_of_quarantined_seqs_is_present_not_missing() -> None:
    records = chain(6)
    kept = [r for r in records if r.seq not in (3, 4)]
    checker = ChainChecker(quarantined=frozenset({3, 4}))
    assert all(checker.feed(r) is None for r in kept)
    assert checker.passed_quarantined == [3, 4] and checker.checked == 4
    partly = ChainChecker(quarantined=frozenset({3}))  # seq 4 is gone, not quarantined
    broken = next(b for r in kept if (b := partly.feed(r)) is not None)
    assert (broken.seq, broken.reason, broken.missing_seq) == (5, MISSING, 4)
    assert broken.detail == "seq 4 missing before seq 5" and partly.passed_quarantined == [3]


def test_the_record_after_a_quarantined_seq_must_still_hash_right() -> None:
    records = chain(4)
    altered = replace(records[3], latency_us=999)  # its hash no longer matches
    checker = ChainChecker(quarantined=frozenset({3}))
    assert checker.feed(records[0]) is None and checker.feed(records[1]) is None
    broken = checker.feed(altered)
    assert broken is not None and (broken.seq, broken.reason) == (4, ALTERED)


def test_acgs_audit_verify_prints_quarantined_seqs(capsys: pytest.CaptureFixture[str]) -> None:
    from acgs.entrypoints.admin_cli import _print_report
    from acgs.v1 import audit_pb2

    report = audit_pb2.VerifyChainResponse(ok=True, records_checked=5, last_seq=6, quarantined=[
        audit_pb2.QuarantinedRecord(seq=3, source="00000000000000000001.jsonl@880",
                                    reason="line checksum mismatch")])
    assert _print_report("inst-a", report) == 0
    assert capsys.readouterr().out.splitlines() == [
        "inst-a: seq 3 QUARANTINED (00000000000000000001.jsonl@880): line checksum mismatch",
        "inst-a: ok (5 records, last seq 6)"]
