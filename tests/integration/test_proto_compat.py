"""The compatibility guard on protos/: `make proto-check` (part of `make test`) fails,
with buf's own message, on a breaking change or a lint violation. Each case edits a copy
of buf.yaml and protos/, never the repository's files."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.plugins.servers import REPO

GOVERNANCE = Path("protos/acgs/v1/governance.proto")


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copy(REPO / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(REPO / "protos" / "acgs", tmp_path / "protos" / "acgs")
    return tmp_path


def proto_check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "-s", "-C", str(REPO), "proto-check", f"PROTO_ROOT={root}"],
                          capture_output=True, text=True, timeout=120)


def edit(root: Path, path: Path, old: str, new: str) -> None:
    text = (root / path).read_text()
    assert re.search(old, text), old
    (root / path).write_text(re.sub(old, new, text, count=1))


def test_the_repository_protos_pass() -> None:
    result = proto_check(REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_unchanged_copy_passes(copy: Path) -> None:
    result = proto_check(copy)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("old", "new", "message"), [
    # renumbering a field
    (r"string decision_id = 1;", "string decision_id = 31;",
     r'field "1" with name "decision_id" on message "Decision" was deleted'),
    # removing a field
    (r"  bool cached = 6;\n", "",
     r'field "6" with name "cached" on message "Decision" was deleted'),
    # changing a field's type
    (r"int64 server_latency_us = 8;", "string server_latency_us = 8;",
     r'Field "8" with name "server_latency_us" on message "Decision" changed type'),
    # removing an RPC
    (r"  rpc Evaluate\(EvaluateRequest\) returns \(EvaluateResponse\);\n", "",
     r'Previously present RPC "Evaluate" on service "Governance" was deleted'),
])
def test_a_breaking_change_fails_with_bufs_message(copy: Path, old: str, new: str,
                                                   message: str) -> None:
    edit(copy, GOVERNANCE, old, new)
    result = proto_check(copy)
    assert result.returncode != 0
    assert re.search(message, result.stdout + result.stderr), result.stdout + result.stderr


def test_a_new_field_is_compatible(copy: Path) -> None:
    edit(copy, GOVERNANCE, r"google.protobuf.Timestamp decided_at = 10;",
         "google.protobuf.Timestamp decided_at = 10;\n  string note = 40;")
    result = proto_check(copy)
    assert result.returncode == 0, result.stdout + result.stderr


def test_new_names_follow_the_lint_rules(copy: Path) -> None:
    edit(copy, GOVERNANCE, r"message DecideBatchRequest \{",
         "message DecideBatchRequest {\n  string batchLabel = 40;")
    result = proto_check(copy)
    assert result.returncode != 0
    assert 'Field name "batchLabel" should be lower_snake_case' in result.stdout + result.stderr
