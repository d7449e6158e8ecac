"""Request timestamps (``since``, ``until``) checked before anything converts them.

A google.protobuf.Timestamp may carry any int64 of seconds and any int32 of nanos,
but only years 1 to 9999 (and nanos 0 to 999,999,999) name a moment: past them
``ToDatetime`` overflows and PostgreSQL refuses the value, which surfaced as
INTERNAL or UNAVAILABLE. Here such a value is the client's mistake: InvalidRequest
naming the field.
"""

from __future__ import annotations

import datetime as dt

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from acgs.errors import InvalidRequest

MIN_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z
MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
_MAX_NANOS = 999_999_999


def checked(ts: timestamp_pb2.Timestamp, name: str) -> timestamp_pb2.Timestamp:
    """``ts``, or InvalidRequest naming ``name`` when it is outside years 1-9999 or its
    nanos are outside 0-999,999,999."""
    if not MIN_SECONDS <= ts.seconds <= MAX_SECONDS:
        raise InvalidRequest(f"{name}: seconds {ts.seconds} is outside years 1-9999 "
                             f"({MIN_SECONDS} to {MAX_SECONDS})")
    if not 0 <= ts.nanos <= _MAX_NANOS:
        raise InvalidRequest(f"{name}: nanos {ts.nanos} is outside 0-{_MAX_NANOS}")
    return ts


def micros(msg: Message, field: str, name: str) -> int | None:
    """Microseconds since the epoch of ``msg.<field>``; None when unset."""
    if not msg.HasField(field):
        return None
    ts: timestamp_pb2.Timestamp = getattr(msg, field)
    return checked(ts, name).ToMicroseconds()


def moment(msg: Message, field: str, name: str) -> dt.datetime | None:
    """``msg.<field>`` as an aware UTC datetime; None when unset."""
    if not msg.HasField(field):
        return None
    ts: timestamp_pb2.Timestamp = getattr(msg, field)
    return checked(ts, name).ToDatetime(tzinfo=dt.UTC)
