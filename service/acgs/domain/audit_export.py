"""Export files of the audit trail, and verifying them offline (no database, no server).

An export file holds one JSON object per line: a record exactly as journaled
(:meth:`AuditRecord.to_json`, so every hash can be recomputed), plus
``"source": "audit_checkpoints"`` on the copies of signed checkpoints kept apart
from the chain, ``"source": "audit_quarantine"`` on records of the chain quarantined
intact (checked in their place, like any record) and ``"malformed"`` on a row whose
columns did not parse. The offline check feeds the same
:class:`~acgs.domain.chain_verify.ChainVerifier` as ``VerifyChain``, so both give
the same verdict on the same rows, as AWS CloudTrail's ``validate-logs`` does for its log files.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from acgs.domain import canonical
from acgs.domain.audit import AuditRecord, StoredRecord
from acgs.domain.audit_query import ChainReport
from acgs.domain.chain_verify import ChainVerifier, StoredCheckpoint, stored_of
from acgs.domain.checkpoint import CheckpointKeys

STORED = "audit_checkpoints"


def export_line(record: AuditRecord) -> str:
    """One line of an export file (without its newline)."""
    doc = json.loads(record.to_json())
    if record.source:
        doc["source"] = record.source
    if record.malformed:
        doc["malformed"] = record.malformed
    return canonical.dumps(doc)


@dataclass
class ExportedChain:
    """One instance's rows in an export: its records, and its checkpoints kept apart."""

    records: list[AuditRecord] = field(default_factory=list)
    stored: list[StoredCheckpoint] = field(default_factory=list)


def read_export(lines: Iterable[str]) -> dict[str, ExportedChain]:
    """An export file's chains by instance; ValueError naming the first line that is not one."""
    chains: dict[str, ExportedChain] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            record = StoredRecord.of(AuditRecord.from_dict(doc),
                                     malformed=str(doc.get("malformed", "")),
                                     source=str(doc.get("source", "")))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"line {number} is not an exported audit record: {err!r}") from err
        chain = chains.setdefault(record.instance_id, ExportedChain())
        if record.source == STORED:
            chain.stored.append(stored_of(record))
        else:
            chain.records.append(record)
    return chains


def verify_export(chains: dict[str, ExportedChain], keys: CheckpointKeys) -> list[ChainReport]:
    """Verify every chain of an export from seq 1 to its end, as VerifyChain would."""
    reports = []
    for instance_id in sorted(chains):
        chain = chains[instance_id]
        verifier = ChainVerifier(instance_id, keys=keys, stored=chain.stored)
        for record in sorted(chain.records, key=lambda r: r.seq):
            if not verifier.feed(record):
                break
        reports.append(verifier.finish(to_end=True))
    return reports
