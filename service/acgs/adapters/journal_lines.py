"""One journal line, checkable on its own: a CRC-32 of its bytes, or (older lines) its hash.

A record's line is its canonical JSON with one more member appended,
``"line_crc":"<8 hex digits>"``: the CRC-32 of the line as it would read without
that member. The line stays one JSON object that any JSON reader can parse
(the extra member is ignored by :meth:`AuditRecord.from_dict`). A CRC costs
~0.6 µs per 1 KB line; recomputing a record's SHA-256 from its body costs ~19 µs,
which the shipper would pay for every record. Lines written before the CRC
(no such member) are checked the slow way: their ``record_hash`` recomputed.

A line that fails its check is :class:`DamagedLine`; readers quarantine it and
go on with the next line (see :mod:`acgs.adapters.journal_reader`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from acgs.domain.audit import AuditRecord

_CRC_KEY = b',"line_crc":"'
_SUFFIX_LEN = len(_CRC_KEY) + 8 + 2  # the key, 8 hex digits, '"}'


class DamagedLine(ValueError):
    """A journal line that is not the record it was written as."""


@dataclass(frozen=True, slots=True)
class Damaged:
    """A damaged line met while reading for shipping: quarantined, never shipped as a record.

    ``seq`` is the chain position it holds (one more than the line before it);
    ``source`` names the segment file and the byte offset where the line starts.
    """

    seq: int
    source: str
    line: bytes
    reason: str


def checksummed(line: bytes) -> bytes:
    """``line`` (one record's JSON object, no newline) with its ``line_crc`` member."""
    return b"%s%s%08x\"}" % (line[:-1], _CRC_KEY, zlib.crc32(line))


def parse_line(line: bytes) -> AuditRecord:
    """The record a journal line holds; DamagedLine when its check or its parse fails."""
    if line[-_SUFFIX_LEN:-10] == _CRC_KEY and line.endswith(b'"}'):
        body = line[:-_SUFFIX_LEN] + b"}"
        try:
            crc = int(line[-10:-2], 16)
        except ValueError:
            crc = -1
        if zlib.crc32(body) != crc:
            raise DamagedLine("line checksum mismatch")
        return _record(body)
    record = _record(line)  # written before line checksums: its own hash is the check
    if record.computed_hash() != record.record_hash:
        raise DamagedLine("content does not match its record_hash")
    return record


def _record(body: bytes) -> AuditRecord:
    try:
        return AuditRecord.from_json(body)
    except (ValueError, KeyError, TypeError, RecursionError) as err:
        raise DamagedLine(f"not a record ({type(err).__name__}: {err})") from err
