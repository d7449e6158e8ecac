"""A small HTTP/2 client for gRPC unary calls, made for load generation.

Why not grpc.aio: on this machine a grpc.aio client spends ~250 µs of CPU per
call, about as much as the server spends on an empty handler, so it cannot
outrun the baseline. Why not h2load: its ``--rps`` timer fires every
``max(10 ms, 1/rps)`` and sends the due requests in one burst, and a request
that waits for a free stream starts its clock only when sent (coordinated
omission). This client frames requests itself (one pre-encoded HPACK block,
the gRPC length prefix, DATA), decodes every response's headers and trailers
with ``hpack`` and reports each call's ``grpc-status`` to a callback. It costs
a few tens of µs per call and honours flow control, SETTINGS, PING and GOAWAY.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Callable

try:
    from hpack import Decoder
except ImportError as err:  # pragma: no cover
    raise ImportError("bench needs the hpack package: pip install hpack") from err

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0, 1, 3, 4, 6, 7, 8, 9)
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY = 0x4, 0x8, 0x20
MAX_WINDOW = 2**31 - 1
TRANSPORT_ERROR = -1
"""Status reported for a stream reset, refused by GOAWAY, or lost with the connection."""
NO_STATUS = -2
"""Status reported when a stream ended without a ``grpc-status`` trailer."""

Done = Callable[[int, int, bytes | None], None]
"""Called once per call with (token, grpc status or TRANSPORT_ERROR/NO_STATUS, body if kept)."""


def frame(ftype: int, flags: int, stream: int, payload: bytes) -> bytes:
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, ftype, flags, stream) + payload


def _string(value: str) -> bytes:
    raw = value.encode()
    if len(raw) >= 127:
        raise ValueError(f"header value too long for this encoder: {value!r}")
    return bytes([len(raw)]) + raw


def header_block(path: str, authority: str, extra: dict[str, str] | None = None) -> bytes:
    """HPACK block for a gRPC POST: static-table names, literal values, never indexed."""
    block = (b"\x83\x86"  # :method POST, :scheme http
             + b"\x04" + _string(path) + b"\x01" + _string(authority)
             + b"\x0f\x10" + _string("application/grpc")  # content-type (static index 31)
             + b"\x00" + _string("te") + _string("trailers"))
    for name, value in (extra or {}).items():
        block += b"\x00" + _string(name.lower()) + _string(value)
    return block


class GrpcConnection(asyncio.Protocol):
    """One HTTP/2 connection. ``submit`` never blocks: calls beyond the server's
    stream limit or send window wait in a queue (their time counts, since the
    caller measures from its own schedule)."""

    def __init__(self, on_done: Done) -> None:
        self._on_done = on_done
        self._decoder = Decoder()
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._flushing = False
        self._next_id = 1
        self._streams: dict[int, list[object]] = {}  # id -> [token, status, body|None, keep]
        self._queue: deque[tuple[bytes, bytes, int, bool]] = deque()
        self._send_window = 65535
        self._max_streams = MAX_WINDOW
        self._max_frame = 16384
        self._unacked_recv = 0
        self._continuation: tuple[int, int, bytearray] | None = None
        self.closed: str | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def in_flight(self) -> int:
        return len(self._streams) + len(self._queue)

    # -- sending -----------------------------------------------------------------------------

    def submit(self, block: bytes, message: bytes, token: int, *, keep: bool = False) -> None:
        """Start one unary call: ``block`` from :func:`header_block`, ``message`` serialized."""
        if self.closed is not None:
            self._on_done(token, TRANSPORT_ERROR, None)
            return
        payload = b"\x00" + struct.pack(">I", len(message)) + message
        if self._queue or not self._can_send(len(payload)):
            self._queue.append((block, payload, token, keep))
            return
        self._send(block, payload, token, keep)

    def _can_send(self, size: int) -> bool:
        return len(self._streams) < self._max_streams and self._send_window >= size

    def _send(self, block: bytes, payload: bytes, token: int, keep: bool) -> None:
        sid = self._next_id
        self._next_id += 2
        self._streams[sid] = [token, NO_STATUS, None, keep]
        self._out.append(frame(HEADERS, END_HEADERS, sid, block))
        step = self._max_frame
        for start in range(0, len(payload), step):
            last = start + step >= len(payload)
            self._out.append(frame(DATA, END_STREAM if last else 0, sid,
                                   payload[start:start + step]))
        self._send_window -= len(payload)
        self._schedule_flush()

    def _drain_queue(self) -> None:
        while self._queue and self.closed is None:
            block, payload, token, keep = self._queue[0]
            if not self._can_send(len(payload)):
                return
            self._queue.popleft()
            self._send(block, payload, token, keep)

    def _schedule_flush(self) -> None:
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flushing = False
        if self._out and self._transport is not None and self.closed is None:
            self._transport.write(b"".join(self._out))
        self._out.clear()

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        settings = struct.pack(">HIHI", 0x2, 0, 0x4, MAX_WINDOW)  # no push, large windows
        transport.write(PREFACE + frame(SETTINGS, 0, 0, settings)
                        + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW - 65535)))

    def connection_lost(self, exc: Exception | None) -> None:
        self._close(f"connection lost: {exc}")

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos, size = 0, len(buf)
        while size - pos >= 9:
            length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
            if size - pos - 9 < length:
                break
            ftype, flags = buf[pos + 3], buf[pos + 4]
            sid = int.from_bytes(buf[pos + 5:pos + 9], "big") & MAX_WINDOW
            self._frame(ftype, flags, sid, bytes(buf[pos + 9:pos + 9 + length]))
            pos += 9 + length
        del buf[:pos]

    # -- receiving ---------------------------------------------------------------------------

    def _frame(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if ftype == DATA:
            self._data(flags, sid, payload)
        elif ftype == HEADERS:
            if flags & PADDED:
                payload = payload[1:len(payload) - payload[0]]
            if flags & PRIORITY:
                payload = payload[5:]
            if flags & END_HEADERS:
                self._headers(sid, flags, payload)
            else:
                self._continuation = (sid, flags, bytearray(payload))
        elif ftype == CONTINUATION and self._continuation is not None:
            self._continuation[2].extend(payload)
            if flags & END_HEADERS:
                csid, cflags, block = self._continuation
                self._continuation = None
                self._headers(csid, cflags, bytes(block))
        elif ftype == SETTINGS:
            self._settings(flags, payload)
        elif ftype == WINDOW_UPDATE:
            if sid == 0:
                self._send_window += int.from_bytes(payload[:4], "big") & MAX_WINDOW
                self._drain_queue()
        elif ftype == PING and not flags & ACK:
            self._out.append(frame(PING, ACK, 0, payload))
            self._schedule_flush()
        elif ftype == RST_STREAM:
            self._finish(sid, TRANSPORT_ERROR)
        elif ftype == GOAWAY:
            last = int.from_bytes(payload[:4], "big") & MAX_WINDOW
            for s in [s for s in self._streams if s > last]:
                self._finish(s, TRANSPORT_ERROR)
            self._close(f"GOAWAY error {int.from_bytes(payload[4:8], 'big')}", keep_streams=True)

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        self._unacked_recv += len(payload)
        if self._unacked_recv > 1 << 30:  # keep the connection receive window open
            self._out.append(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self._unacked_recv)))
            self._unacked_recv = 0
            self._schedule_flush()
        if flags & PADDED:
            payload = payload[1:len(payload) - payload[0]]
        stream = self._streams.get(sid)
        if stream is not None and stream[3]:
            stream[2] = (stream[2] or b"") + payload  # type: ignore[operator]
        if flags & END_STREAM:
            self._finish(sid, None)

    def _headers(self, sid: int, flags: int, block: bytes) -> None:
        headers = self._decoder.decode(block, raw=True)  # every block, to keep the table in sync
        stream = self._streams.get(sid)
        if stream is not None:
            for name, value in headers:
                if name == b"grpc-status":
                    stream[1] = int(value)
        if flags & END_STREAM:
            self._finish(sid, None)

    def _settings(self, flags: int, payload: bytes) -> None:
        if flags & ACK:
            return
        for off in range(0, len(payload) - 5, 6):
            key, value = struct.unpack_from(">HI", payload, off)
            if key == 0x3:
                self._max_streams = value
            elif key == 0x5:
                self._max_frame = value
        self._out.append(frame(SETTINGS, ACK, 0, b""))
        self._schedule_flush()
        if not self.ready.done():
            self.ready.set_result(None)
        self._drain_queue()

    def _finish(self, sid: int, status: int | None) -> None:
        stream = self._streams.pop(sid, None)
        if stream is None:
            return
        token, got, raw = stream[0], stream[1], stream[2]
        body = None
        if isinstance(raw, bytes) and len(raw) >= 5:  # strip the gRPC message prefix
            body = raw[5:5 + int.from_bytes(raw[1:5], "big")]
        self._on_done(token, got if status is None else status, body)  # type: ignore[arg-type]
        if self._queue:
            self._drain_queue()

    def close(self) -> None:
        """Close the connection; calls still in flight end with TRANSPORT_ERROR."""
        if self._transport is not None:
            self._transport.close()

    def _close(self, why: str, *, keep_streams: bool = False) -> None:
        if self.closed is None:
            self.closed = why
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))
        pending = [] if keep_streams else list(self._streams)
        for sid in pending:
            self._finish(sid, TRANSPORT_ERROR)
        while self._queue:
            self._on_done(self._queue.popleft()[2], TRANSPORT_ERROR, None)


async def connect(host: str, port: int, on_done: Done) -> GrpcConnection:
    """Open a connection and wait for the server's SETTINGS."""
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: GrpcConnection(on_done), host, port)
    await asyncio.wait_for(conn.ready, 10)
    return conn
