"""Checkpoints without a database: the checkpointer's timer and supervision, keys, settings."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from acgs import CONSTITUTIONAL_HASH
from acgs.adapters.audit_signing import CheckpointSigner, TrustedKeys, key_id, load_public_keys
from acgs.adapters.journal_files import list_segments, segment_path
from acgs.config import Settings
from acgs.domain.audit import GENESIS_HASH, RECHAINED, AuditRecord
from acgs.domain.chain_verify import ChainVerifier, StoredCheckpoint
from acgs.domain.checkpoint import KIND, Checkpoint
from acgs.errors import AuditUnavailable, ConfigurationError
from acgs.lifecycle.audit import checkpoints, signing_key, trusted_keys
from acgs.lifecycle.supervisor import Supervisor
from acgs.service_layer.checkpointer import Checkpointer
from acgs.service_layer.ports import AuditEntry
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.audit_support import entry, open_journal

SIGNER = CheckpointSigner(private_key=Ed25519PrivateKey.generate())


def records(journal_dir: Path) -> list[AuditRecord]:
    lines: list[str] = []
    for first in list_segments(journal_dir):
        lines += segment_path(journal_dir, first).read_text().splitlines()
    return [AuditRecord.from_json(line) for line in lines]


def test_the_timer_signs_the_head_only_when_it_advanced(tmp_path: Path) -> None:
    journal = open_journal(tmp_path)
    results: list[bool] = []
    checkpointer = Checkpointer(journal=journal, signer=SIGNER, instance_id="inst-a",
                                constitutional_hash=CONSTITUTIONAL_HASH, interval_s=0.05,
                                on_result=results.append)

    async def go() -> None:
        parts = Supervisor()
        checkpoints(parts, checkpointer)
        await parts.start()
        await asyncio.sleep(0.2)  # an empty chain: nothing to sign
        assert journal.last_seq == 0
        await journal.append([entry(1), entry(2)])
        for _ in range(100):  # the next tick signs the head
            if journal.last_seq == 3:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # then nothing new for several ticks: no checkpoint
        assert journal.last_seq == 3
        await journal.append([entry(3)])
        await parts.stop()  # the final checkpoint
        assert journal.last_seq == 5

    asyncio.run(go())
    journal.close()
    chain = records(tmp_path / "inst-a")
    assert [r.kind for r in chain] == ["decision", "decision", KIND, "decision", KIND]
    for r in (chain[2], chain[4]):
        cp = Checkpoint.from_record(r)
        assert cp.signed_seq == r.seq - 1 and cp.head_hash == r.prev_hash
        assert TrustedKeys(keys=[SIGNER.public_key]).problem(cp) is None
    assert results == [True, True]


class FailingJournal:
    """Refuses the first append (a full or failed journal), then takes them."""

    def __init__(self) -> None:
        self.calls = 0
        self.last_seq = 7

    async def append_at_head(self, make: Callable[[int, str], AuditEntry]) -> int:
        self.calls += 1
        if self.calls == 1:
            raise AuditUnavailable("disk full")
        assert make(self.last_seq, GENESIS_HASH).kind == KIND
        self.last_seq += 1
        return self.last_seq


def test_a_failed_checkpoint_is_counted_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    journal = FailingJournal()
    results: list[bool] = []
    checkpointer = Checkpointer(journal=journal, signer=SIGNER, instance_id="inst-a",
                                constitutional_hash=CONSTITUTIONAL_HASH, interval_s=0.02,
                                on_result=results.append)

    async def go() -> None:
        parts = Supervisor()
        checkpoints(parts, checkpointer)
        await parts.start()
        await asyncio.sleep(0.2)
        await parts.stop()

    asyncio.run(go())
    assert checkpointer.failures == 1 and results == [False, True]
    assert journal.last_seq == 8 and "could not write an audit checkpoint" in caplog.text


def test_the_development_key_is_generated_once_private(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    first = signing_key(settings)
    path = tmp_path / "audit-signing-key.pem"
    assert path.stat().st_mode & 0o777 == 0o600
    assert signing_key(settings).key_id == first.key_id
    public = load_public_keys([tmp_path / "audit-signing-key.pub.pem"], setting="x")
    assert key_id(public[0]) == first.key_id
    configured = Settings(data_dir=tmp_path / "elsewhere", audit_signing_key=path)
    assert signing_key(configured).key_id == first.key_id
    with pytest.raises(ConfigurationError, match="ACGS_AUDIT_SIGNING_KEY"):
        signing_key(Settings(data_dir=tmp_path, environment="production"))
    with pytest.raises(ConfigurationError, match="ACGS_AUDIT_SIGNING_KEY"):
        signing_key(Settings(audit_signing_key=tmp_path / "missing.pem"))


def test_settings_and_trusted_keys(tmp_path: Path) -> None:
    settings = Settings.from_env({"ACGS_AUDIT_CHECKPOINT_S": "2.5",
                                  "ACGS_AUDIT_SIGNING_KEY": "/k.pem",
                                  "ACGS_AUDIT_TRUSTED_KEYS": "/a.pem, /b.pem"})
    assert settings.audit_checkpoint_s == 2.5 and settings.audit_signing_key == Path("/k.pem")
    assert settings.audit_trusted_keys == (Path("/a.pem"), Path("/b.pem"))
    assert Settings.from_env({}).audit_checkpoint_s == 10.0
    with pytest.raises(ConfigurationError, match="ACGS_AUDIT_TRUSTED_KEYS"):
        trusted_keys(settings, None)
    (tmp_path / "not-a-key.pem").write_text("hello")
    with pytest.raises(ConfigurationError, match="not-a-key"):
        load_public_keys([tmp_path / "not-a-key.pem"], setting="ACGS_AUDIT_TRUSTED_KEYS")
    own = trusted_keys(Settings(), SIGNER)
    assert SIGNER.key_id in own.trust and "database writer" in own.trust


def test_a_range_starting_at_a_checkpointed_seq_is_checked_against_it() -> None:
    cp = SIGNER.sign(instance_id="i", signed_seq=4, head_hash="a" * 64, signed_at_us=1)
    keys = TrustedKeys(keys=[SIGNER.public_key])
    good = ChainVerifier("i", keys=keys, expect_seq=5, prev_hash="a" * 64,
                         stored=[StoredCheckpoint(5, cp)])
    assert good.finish(to_end=False).ok
    bad = ChainVerifier("i", keys=keys, expect_seq=5, prev_hash="b" * 64,
                        stored=[StoredCheckpoint(5, cp)])
    report = bad.finish(to_end=False)
    assert report.broken is not None and report.broken.reason == RECHAINED
