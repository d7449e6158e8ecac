"""What the ``acgs`` commands that call a server say about their token: the help names the
role each command uses, and a refusal says when the token came from $ACGS_TOKEN."""

from __future__ import annotations

import argparse

import grpc
import pytest
from acgs.entrypoints import admin_cli, cli


def help_of(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere


@pytest.mark.parametrize(("argv", "role"), [
    (("policy", "list"), "admin"),
    (("policy", "push", "dir"), "admin"),
    (("policy", "test"), "admin"),  # fetches a stored revision with GetPolicyVersion
    (("escalations", "list"), "admin"),
    (("escalations", "approve", "e1"), "admin"),
    (("audit", "tail"), "auditor"),
    (("audit", "verify"), "auditor"),
])
def test_the_token_help_names_the_role_the_command_uses(
        capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], role: str) -> None:
    text = help_of(capsys, *argv)
    other = "auditor" if role == "admin" else "admin"
    assert f"the {role} token of $ACGS_DATA_DIR/dev-tokens" in text, text
    assert f"the {other} token" not in text
    assert "$ACGS_CACERT" in text


class Refused(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


DENIED = Refused(grpc.StatusCode.PERMISSION_DENIED,
                 "role 'agent' may not call /acgs.v1.PolicyAdmin/ListPolicyVersions")


def parsed(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(argv))


def test_a_refusal_says_the_token_came_from_acgs_token(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator whose shell still holds an agent's $ACGS_TOKEN used to read only "role
    'agent' may not call ...", with no hint that the command did not use the admin token."""
    monkeypatch.setenv("ACGS_TOKEN", "acgs_0123456789abcdef.secret")
    args = parsed("policy", "list")
    admin_cli.metadata(args, role="admin")
    assert admin_cli.fail(DENIED, args) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"acgs: PERMISSION_DENIED: {DENIED.details()} (the token came from "
                          "$ACGS_TOKEN;"), err
    assert "admin token" in err and "--token" in err


def test_a_refusal_of_a_token_given_with_the_option_has_no_such_note(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACGS_TOKEN", "acgs_0123456789abcdef.secret")
    args = parsed("policy", "list", "--token", "acgs_fedcba9876543210.secret")
    admin_cli.metadata(args, role="admin")
    assert admin_cli.fail(DENIED, args) == 1
    assert capsys.readouterr().err == f"acgs: PERMISSION_DENIED: {DENIED.details()}\n"
