"""Page tokens: the last key of a page, as base64 of a JSON array, and back.

A page token comes from the client, so decoding it trusts nothing: any string
that is not exactly one of ours (wrong base64, not JSON, nested a thousand deep,
the wrong number or types of fields, values PostgreSQL cannot hold) is
InvalidRequest naming ``page_token``, never an error from the database.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import uuid
from typing import Any

from acgs.errors import InvalidRequest

INVALID = "page_token is not a valid cursor (pass next_page_token back unchanged)"
_MAX_TOKEN = 1024  # ours are about 100 characters
_INT64 = 2**63 - 1


def encode(fields: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(fields).encode()).decode("ascii")


def decode(cursor: str, kinds: tuple[type, ...]) -> list[Any]:
    """The fields of ``cursor``, one per entry of ``kinds`` and of that type (int: an int64,
    never a bool; str: without NUL); InvalidRequest for anything else."""
    if len(cursor) > _MAX_TOKEN:
        raise InvalidRequest(INVALID)
    try:
        fields = json.loads(base64.urlsafe_b64decode(cursor.encode("ascii")))
    except (ValueError, binascii.Error, RecursionError) as err:  # UnicodeError is a ValueError
        raise InvalidRequest(INVALID) from err
    if not isinstance(fields, list) or len(fields) != len(kinds):
        raise InvalidRequest(INVALID)
    for value, kind in zip(fields, kinds, strict=True):
        if type(value) is not kind or not _fits(value):
            raise InvalidRequest(INVALID)
    return fields


def _fits(value: object) -> bool:
    """An int PostgreSQL's bigint holds, a str its text holds."""
    if isinstance(value, int):
        return -_INT64 <= value <= _INT64
    if not isinstance(value, str):
        return True
    try:  # a lone surrogate ("\ud800") is valid JSON but no text PostgreSQL can hold
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\0" not in value


def moment(text: str) -> dt.datetime:
    """An ISO 8601 time with its offset, from a cursor; InvalidRequest otherwise."""
    try:
        at = dt.datetime.fromisoformat(text)
    except ValueError as err:
        raise InvalidRequest(INVALID) from err
    if at.tzinfo is None:
        raise InvalidRequest(INVALID)
    return at


def key(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError as err:
        raise InvalidRequest(INVALID) from err
