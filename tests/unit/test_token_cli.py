"""``acgs token``: who the audit trail names as the actor of a token command."""

from __future__ import annotations

import os
import pwd
import socket

import pytest
from acgs.entrypoints import token_cli


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
