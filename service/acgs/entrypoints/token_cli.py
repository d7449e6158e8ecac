"""``acgs token create|list|revoke``: the token table, straight in the database.

These commands talk to PostgreSQL (``ACGS_DATABASE_URL``, else the embedded one
under ``ACGS_DATA_DIR``), not to a server: the first token must be creatable
before any token exists, and whoever can reach the database can read the
audit trail and rewrite the table anyway. Servers pick changes up within about
``ACGS_TOKEN_REFRESH_S`` (1 s).

They never make a database: without ACGS_DATABASE_URL they use the embedded PostgreSQL
that ``acgs serve`` made under ACGS_DATA_DIR, and refuse (exit 2) when there is none. A
token written to a new database no server reads, or a revocation "not found" there, would
mislead. Every command names the database it used.

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


def _database(settings: Settings) -> str:
    from acgs.lifecycle.database import database_name

    return database_name(settings)


async def _create(settings: Settings, role: str, name: str, expires_at: dt.datetime | None,
                  identity: str | None) -> tokens.IssuedToken:
    from acgs.lifecycle.callers import token_store

    who = actor()
    issued = tokens.issue(role=role, name=name, created_by=f"{who.id} (acgs token create)",
                          expires_at=expires_at, identity=identity)
    async with token_store(settings, migrate_first=True) as store:
        if not await store.insert(issued.record, actor=who):
            raise ValueError(f"token id {issued.record.id} is taken; run the command again")
    return issued


def cmd_create(args: argparse.Namespace) -> int:
    """Print the new token on stdout (once: only its hash is kept), what it is on stderr."""
    _quiet()
    settings = Settings.from_env()
    try:
        expires_at = (dt.datetime.now(dt.UTC) + tokens.parse_duration(args.expires_in)
                      if args.expires_in else None)
        issued = asyncio.run(_create(settings, args.role, args.name, expires_at,
                                     args.identity))
    except ValueError as err:
        print(f"acgs: error: {err}", file=sys.stderr)
        return 2
    r = issued.record
    until = f", expires {_when(r.expires_at)}" if r.expires_at else ""
    who = f", identity {r.identity}" if r.identity else ""
    print(f"acgs: token {r.id} for {r.name!r}, role {r.role}{who}{until}, "
          f"in {_database(settings)}; it is shown only this once",
          file=sys.stderr)
    print(issued.token)
    return 0


async def _list(settings: Settings) -> list[tokens.TokenRecord]:
    from acgs.lifecycle.callers import token_store

    async with token_store(settings, migrate_first=False) as store:
        return list(await store.load())


def cmd_list(args: argparse.Namespace) -> int:
    """One line per token (never the token itself): id, role, state, created, expires,
    identity ("-": none), name, by; revoked and expired tokens only with ``--all``."""
    _quiet()
    settings = Settings.from_env()
    records = asyncio.run(_list(settings))
    print(f"acgs: tokens in {_database(settings)}", file=sys.stderr)  # stdout: the table only
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


async def _revoke(settings: Settings, token_id: str) -> tokens.TokenRecord | None:
    """Revoke ``token_id``; None when it was revoked now, else what the table holds under
    that id (revoked before), or a ``KeyError`` when nothing."""
    from acgs.lifecycle.callers import token_store

    async with token_store(settings, migrate_first=False) as store:
        if await store.revoke(token_id, actor=actor()):
            return None
        for record in await store.load():
            if record.id == token_id:
                return record
        raise KeyError(token_id)


def cmd_revoke(args: argparse.Namespace) -> int:
    """Revoke a token by id; exit 1 (and nothing recorded) when no unrevoked token has it,
    saying whether the id is not in this database at all or was revoked before."""
    _quiet()
    settings = Settings.from_env()
    where = _database(settings)
    try:
        before = asyncio.run(_revoke(settings, args.id))
    except KeyError:
        print(f"acgs: error: token {args.id!r} not found in {where}; nothing revoked, nothing "
              "recorded. If the servers use another database, set ACGS_DATABASE_URL (or "
              "ACGS_DATA_DIR) to theirs and run this again", file=sys.stderr)
        return 1
    if before is not None:
        print(f"acgs: token {args.id!r} was already revoked in {where} (at "
              f"{_when(before.revoked_at)} UTC); nothing revoked, nothing recorded",
              file=sys.stderr)
        return 1
    print(f"acgs: revoked {args.id} in {where}; servers refuse it within "
          f"~{settings.token_refresh_s:g} s (their ACGS_TOKEN_REFRESH_S)")
    return 0


def register(sub: Any) -> None:
    """Add the ``token`` command group to the CLI's sub-parsers."""
    group = sub.add_parser(
        "token", help="bearer tokens of callers (in the database: ACGS_DATABASE_URL, else the "
             "embedded one under ACGS_DATA_DIR)"
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
