"""``acgs token create|list|revoke``: the token table, straight in the database.

These commands talk to PostgreSQL (``ACGS_DATABASE_URL``, else the embedded one
under ``ACGS_DATA_DIR``), not to a server: the first token must be creatable
before any token exists, and whoever can reach the database can read the
audit trail and rewrite the table anyway. Servers pick changes up within about
``ACGS_TOKEN_REFRESH_S`` (1 s).

Every creation and revocation is recorded in the audit trail (``token.created``,
``token.revoked`` on the ``admin`` chain, in the transaction that makes it). No
token authenticates these commands, so the actor recorded is the operating-system
account that ran them, ``user@host``, with role ``admin`` (who reaches the
database holds the admin's power): :func:`actor`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import pwd
import socket
import sys
from typing import Any

from acgs.config import Settings
from acgs.domain import tokens
from acgs.domain.model import Caller


def actor() -> Caller:
    """Who runs this command, as the audit trail names them: ``user@host``, role admin.

    ``user`` is the process's account (not LOGNAME or USER, which whoever runs the
    command can set to any name)."""
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except (KeyError, OSError):
        user = f"uid-{os.geteuid()}"
    return Caller(id=f"{user}@{socket.gethostname()}", role=tokens.ADMIN)


def _quiet() -> None:
    """The embedded PostgreSQL narrates every start and stop at INFO; a token command need not."""
    logging.getLogger("pgserver").setLevel(logging.WARNING)


async def _create(settings: Settings, role: str, name: str, expires_at: dt.datetime | None,
                  identity: str | None) -> tokens.IssuedToken:
    from acgs.lifecycle.callers import token_store

    who = actor()
    issued = tokens.issue(role=role, name=name, created_by=f"{who.id} (acgs token create)",
                          expires_at=expires_at, identity=identity)
    async with token_store(settings) as store:
        if not await store.insert(issued.record, actor=who):
            raise ValueError(f"token id {issued.record.id} is taken; run the command again")
    return issued


def cmd_create(args: argparse.Namespace) -> int:
    """Print the new token on stdout (once: only its hash is kept), what it is on stderr."""
    _quiet()
    try:
        expires_at = (dt.datetime.now(dt.UTC) + tokens.parse_duration(args.expires_in)
                      if args.expires_in else None)
        issued = asyncio.run(_create(Settings.from_env(), args.role, args.name, expires_at,
                                     args.identity))
    except ValueError as err:
        print(f"acgs: error: {err}", file=sys.stderr)
        return 2
    r = issued.record
    until = f", expires {_when(r.expires_at)}" if r.expires_at else ""
    who = f", identity {r.identity}" if r.identity else ""
    print(f"acgs: token {r.id} for {r.name!r}, role {r.role}{who}{until}; "
          "it is shown only this once",
          file=sys.stderr)
    print(issued.token)
    return 0


async def _list(settings: Settings) -> list[tokens.TokenRecord]:
    from acgs.lifecycle.callers import token_store

    async with token_store(settings) as store:
        return list(await store.load())


def cmd_list(args: argparse.Namespace) -> int:
    """One line per token (never the token itself): id, role, state, created, expires,
    identity ("-": none), name, by; revoked and expired tokens only with ``--all``."""
    _quiet()
    records = asyncio.run(_list(Settings.from_env()))
    now = dt.datetime.now(dt.UTC)
    if not args.all:
        records = [r for r in records if not r.revoked and not r.expired(now)]
    print(f"{'ID':22} {'ROLE':8} {'STATE':8} {'CREATED':20} {'EXPIRES':20} {'IDENTITY':24} "
          "NAME")
    for r in records:
        state = "revoked" if r.revoked else "expired" if r.expired(now) else "active"
        print(f"{r.id:22} {r.role:8} {state:8} {_when(r.created_at):20} "
              f"{_when(r.expires_at) if r.expires_at else 'never':20} {r.identity or '-':24} "
              f"{r.name} (by {r.created_by})")
    return 0


def _when(t: dt.datetime | None) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


async def _revoke(settings: Settings, token_id: str) -> bool:
    from acgs.lifecycle.callers import token_store

    async with token_store(settings) as store:
        return await store.revoke(token_id, actor=actor())


def cmd_revoke(args: argparse.Namespace) -> int:
    """Revoke a token by id; exit 1 (and nothing recorded) when no unrevoked token has it."""
    _quiet()
    if not asyncio.run(_revoke(Settings.from_env(), args.id)):
        print(f"acgs: no active token {args.id!r} (unknown or already revoked); "
              "nothing revoked, nothing recorded", file=sys.stderr)
        return 1
    print(f"acgs: revoked {args.id}; servers refuse it within a few seconds")
    return 0


def register(sub: Any) -> None:
    """Add the ``token`` command group to the CLI's sub-parsers."""
    group = sub.add_parser(
        "token", help="bearer tokens of callers (in the database: ACGS_DATABASE_URL)"
    ).add_subparsers(dest="token_command", required=True)
    create = group.add_parser("create", help="create a token; print it once")
    create.add_argument("--role", required=True, choices=tokens.ROLES)
    create.add_argument("--name", required=True, help="who or what the token is for")
    create.add_argument("--expires-in", metavar="DURATION",
                        help="refuse the token after this long: 90d, 12h, 30m, 45s "
                             "(default: valid until revoked)")
    create.add_argument("--identity", metavar="WHO",
                        help="the person or service the token stands for (alice@corp): "
                             "nobody resolves an escalation of their own identity's requests")
    create.set_defaults(func=cmd_create)
    listing = group.add_parser("list", help="list tokens (ids, roles, names; never secrets)")
    listing.add_argument("--all", action="store_true", help="include revoked and expired tokens")
    listing.set_defaults(func=cmd_list)
    revoke = group.add_parser("revoke", help="revoke a token by id (acgs_...)")
    revoke.add_argument("id")
    revoke.set_defaults(func=cmd_revoke)
