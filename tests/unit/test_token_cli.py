"""``acgs token``: who the audit trail names as the actor, and which database is used."""

from __future__ import annotations

import os
import pwd
import socket
from pathlib import Path

import pytest
from acgs.adapters.embedded_pg import EmbeddedPostgres
from acgs.domain import tokens
from acgs.entrypoints import cli, token_cli
from acgs.lifecycle import database
from psycopg.conninfo import conninfo_to_dict


def test_the_actor_is_the_account_that_runs_the_command_whatever_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The token events name the operating-system account that ran the command: the
    process's user, not what LOGNAME or USER say (getpass.getuser() reads those first, so
    any name could be written into the trail by setting one)."""
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.setenv(name, "mallory")
    account = pwd.getpwuid(os.geteuid()).pw_name
    who = token_cli.actor()
    assert who.id == f"{account}@{socket.gethostname()}" and who.role == "admin"


# --- Which database: never a new embedded one, always named -------------------------------

def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["--log-level", "WARNING", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, no ACGS_DATABASE_URL, and an embedded PostgreSQL that
    fails the test if anything tries to start (and so initdb) one."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ACGS_DATABASE_URL", raising=False)
    monkeypatch.delenv("ACGS_DATA_DIR", raising=False)

    def start(self: EmbeddedPostgres) -> str:
        raise AssertionError(f"a new embedded PostgreSQL under {self.directory} was started")

    monkeypatch.setattr(EmbeddedPostgres, "start", start)
    return tmp_path


@pytest.mark.parametrize("argv", [
    ("token", "create", "--role", "agent", "--name", "x"),
    ("token", "list"),
    ("token", "revoke", "acgs_0123456789abcdef"),
    ("migrate",),
])
def test_without_a_database_url_or_an_embedded_cluster_nothing_is_created(
        nowhere: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]) -> None:
    """Run from the wrong directory, a token command used to initdb a new embedded
    PostgreSQL, migrate it and print a token no server knows (exit 0), or report a live
    token as "unknown or already revoked": it must refuse instead, naming where it looked."""
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, (out, err)
    assert out == ""
    looked = nowhere / ".acgs" / "pg"
    assert str(looked) in err and "ACGS_DATABASE_URL" in err and "ACGS_DATA_DIR" in err, err
    assert not looked.exists()


def test_an_explicit_data_dir_without_a_cluster_is_named(
        nowhere: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACGS_DATA_DIR", str(nowhere / "elsewhere"))
    code, _, err = run_cli(capsys, "token", "list")
    assert code == 2 and str(nowhere / "elsewhere" / "pg") in err, err


def test_the_database_is_named_without_its_password() -> None:
    named = database.describe("postgresql://ops:s3cret@db.corp:6543/acgs?sslmode=require")
    assert named == "postgresql://ops@db.corp:6543/acgs" and "s3cret" not in named
    assert "s3cret" not in database.describe("host=db.corp dbname=acgs user=ops password=s3cret")
    assert database.describe("not a url at all") == "ACGS_DATABASE_URL (unparsable)"


@pytest.mark.postgres
def test_every_token_command_names_its_database(
        pg_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACGS_DATABASE_URL", pg_url)
    named = database.describe(pg_url)
    assert conninfo_to_dict(pg_url)["dbname"] in named
    code, out, err = run_cli(capsys, "token", "create", "--role", "agent", "--name", "named")
    assert code == 0 and named in err, err
    token_id = tokens.parse(out.strip())
    assert token_id
    code, out, err = run_cli(capsys, "token", "list")
    assert code == 0 and token_id in out and named in err, err
    code, out, err = run_cli(capsys, "token", "revoke", token_id)
    assert code == 0 and named in out + err, (out, err)
    assert "~1 s" in out + err  # as README says (ACGS_TOKEN_REFRESH_S, 1 s by default)
    code, out, err = run_cli(capsys, "token", "revoke", token_id)
    assert code == 1 and f"already revoked in {named}" in err, err
    code, out, err = run_cli(capsys, "token", "revoke", "acgs_0123456789abcdef")
    assert code == 1 and f"not found in {named}" in err, err
    assert "already revoked" not in err
