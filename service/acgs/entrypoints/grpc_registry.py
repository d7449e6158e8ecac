"""Registers servicers so that no request, however malformed, reaches INTERNAL.

The stock ``add_XServicer_to_server`` functions deserialize with
``Message.FromString``; a message that fails to parse (random bytes, nesting past
protobuf's recursion limit, invalid UTF-8 in a string field) then surfaces as
INTERNAL. Here each method gets a deserializer that turns a parse failure into a
:class:`Malformed` value, answered with INVALID_ARGUMENT, and every domain
error is mapped to its status code in one place (:mod:`acgs.entrypoints.status`).
A string holding a NUL character, or longer than its bound, is malformed too
(see :func:`bad_string`).
A malformed body first passes the ``guard`` (the CallerResolver) that the
servicer would have called, so that an unauthenticated caller learns nothing
from a body that does not parse: UNAUTHENTICATED comes before INVALID_ARGUMENT.

Every method passes a :class:`Gate` first: once the server stops, a new call is
refused with UNAVAILABLE before any work (nothing decided, nothing journaled),
and the stop waits for the admitted calls (see ``GrpcServer.stop``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from acgs.entrypoints.convert import DEFAULT_LIMITS, NUL_MESSAGE, StringLimits
from acgs.entrypoints.status import Context, abort_with
from acgs.errors import InvalidRequest

logger = logging.getLogger("acgs.grpc")


@dataclass(frozen=True, slots=True)
class Malformed:
    """A request body that did not parse as the method's message."""

    reason: str


# Methods whose servicer converts every string itself and checks it there, on the way
# (acgs.entrypoints.convert): the walk below would cost ~15 µs per Decide.
CHECKS_ITS_OWN_STRINGS = frozenset({"acgs.v1.Governance/Decide", "acgs.v1.Governance/DecideBatch"})


def _safe_deserializer(cls: Any, *, check_strings: bool,
                       limits: StringLimits = DEFAULT_LIMITS) -> Callable[[bytes], Any]:
    def deserialize(raw: bytes) -> Any:
        try:
            msg = cls.FromString(raw)
        except Exception as err:
            return Malformed(f"request is not a valid {cls.DESCRIPTOR.full_name}: {err}")
        problem = bad_string(msg, limits) if check_strings else None
        if problem is not None:
            return Malformed(problem)
        return msg

    return deserialize


# Free text: bounded by StringLimits.text_chars. Documents and policy sources: bounded only
# by the message size (their own contents are checked where they are parsed). Every other
# string is an identifier of some kind: StringLimits.id_chars.
FREE_TEXT = frozenset({"comment", "page_token", "signature"})
DOCUMENTS = frozenset({"input_json", "data_json", "manifest_json", "modules"})


def bad_string(msg: Message, limits: StringLimits, prefix: str = "") -> str | None:
    """What is wrong with the first bad string field (or map key) of ``msg``, naming it.

    No request string may hold a NUL character: PostgreSQL cannot store one in text, so an
    audit or escalation record carrying it could never be shipped, and regopy would cut
    the string short. Nor may one be longer than its bound (see ``StringLimits``).
    """
    for field, value in msg.ListFields():
        path = prefix + field.name
        if field.type == FieldDescriptor.TYPE_STRING:
            limit = _limit(field.name, limits)
            for v in value if field.is_repeated else (value,):
                found = _problem(v, path, limit)
                if found is not None:
                    return found
        elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
            found = (_map_problem(value, path, limits) if field.message_type.GetOptions().map_entry
                     else _message_problem(value, field.is_repeated, path, limits))
            if found is not None:
                return found
    return None


def _limit(name: str, limits: StringLimits) -> int | None:
    if name in DOCUMENTS:
        return None
    return limits.text_chars if name in FREE_TEXT else limits.id_chars


def _problem(value: str, path: str, limit: int | None) -> str | None:
    if "\0" in value:
        return f"{path}: {NUL_MESSAGE}"
    if limit is not None and len(value) > limit:
        return f"{path} is {len(value)} characters long, over the limit of {limit}"
    return None


def _map_problem(value: Any, path: str, limits: StringLimits) -> str | None:
    item_limit = _limit(path.rsplit(".", 1)[-1], limits)
    for key, item in value.items():
        if isinstance(key, str):
            found = _problem(key, f"{path} key", limits.id_chars)
            if found is not None:
                return found
        found = (bad_string(item, limits, f"{path}.{key}.") if isinstance(item, Message)
                 else _problem(item, f"{path}[{key!r}]", item_limit) if isinstance(item, str)
                 else None)
        if found is not None:
            return found
    return None


def _message_problem(value: Any, repeated: bool, path: str, limits: StringLimits
                     ) -> str | None:
    for i, item in enumerate(value if repeated else (value,)):
        found = bad_string(item, limits, f"{path}[{i}]." if repeated else f"{path}.")
        if found is not None:
            return found
    return None


STOPPING = "server stopping; retry (another server answers, or this one once restarted)"
"""UNAVAILABLE's message for a call that arrives once the server stops."""


class Gate:
    """Admits calls until :meth:`close`; then refuses each new one (the caller answers
    UNAVAILABLE, :data:`STOPPING`) and lets the admitted unary calls finish.

    Why refuse rather than leave new calls to grpc's ``Server.stop``: grpc cancels a call
    that reached the server but that the application had not picked up yet when the stop
    began (the caller sees CANCELLED, not a retryable status). Under load the event loop
    picks calls up one at a time, so such calls are most of those in flight. Refused here,
    they get UNAVAILABLE, which every client retries.
    """

    def __init__(self) -> None:
        self.closed = False
        self.in_flight = 0
        self.refused = 0
        self.last_seen = 0.0
        """time.monotonic() of the latest call to arrive or end, or of the close."""
        self._idle = asyncio.Event()
        self._idle.set()

    def admit(self, *, counted: bool = True) -> bool:
        """True: go on (then :meth:`release` once done, if ``counted``); False: refuse."""
        self.last_seen = time.monotonic()
        if self.closed:
            self.refused += 1
            return False
        if counted:
            self.in_flight += 1
            self._idle.clear()
        return True

    def release(self) -> None:
        self.last_seen = time.monotonic()
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    def close(self) -> None:
        self.closed = True
        self.last_seen = time.monotonic()

    async def drained(self, timeout_s: float) -> bool:
        """Wait until no admitted unary call is running; False if ``timeout_s`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), max(0.0, timeout_s))
        except TimeoutError:
            return False
        return True

    async def quiet(self, quiet_s: float, timeout_s: float) -> bool:
        """Wait until no call arrived or ended for ``quiet_s`` (the callers that were answered
        sent their next call, were refused, and backed off); False if ``timeout_s`` passed
        first."""
        end = time.monotonic() + max(0.0, timeout_s)
        while True:
            now = time.monotonic()
            wait = self.last_seen + quiet_s - now
            if wait <= 0:
                return True
            if now + wait > end:
                return False
            await asyncio.sleep(wait)


Guard = Callable[[Context, str], Awaitable[object]]
"""Checks the caller of a method ("package.Service/Method"); raises to refuse."""


async def _refuse(request: Malformed, context: Context, method: str, guard: Guard | None) -> None:
    if guard is not None:
        await guard(context, method)
    raise InvalidRequest(request.reason)


def _unary(fn: Callable[[Any, Context], Awaitable[Any]], method: str, guard: Guard | None,
           gate: Gate | None) -> Any:
    async def handler(request: Any, context: Context) -> Any:
        if gate is not None and not gate.admit():
            await context.abort(grpc.StatusCode.UNAVAILABLE, STOPPING)
        try:
            if isinstance(request, Malformed):
                await _refuse(request, context, method, guard)
            return await fn(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as err:
            await abort_with(context, err)
        finally:
            if gate is not None:
                gate.release()

    return handler


def _stream(fn: Callable[[Any, Context], AsyncIterator[Any]], method: str,
            guard: Guard | None, gate: Gate | None) -> Any:
    async def handler(request: Any, context: Context) -> AsyncIterator[Any]:
        # A stream is not waited for (a watch may last hours): grpc's grace bounds it.
        if gate is not None and not gate.admit(counted=False):
            await context.abort(grpc.StatusCode.UNAVAILABLE, STOPPING)
        try:
            if isinstance(request, Malformed):
                await _refuse(request, context, method, guard)
            async for item in fn(request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as err:
            await abort_with(context, err)

    return handler


def register(server: grpc.aio.Server, service: ServiceDescriptor, servicer: object, *,
             guard: Guard | None = None, limits: StringLimits = DEFAULT_LIMITS,
             gate: Gate | None = None) -> None:
    """Add ``servicer``'s methods (named as in the .proto) for ``service`` to ``server``;
    ``guard`` checks the caller of a body that does not parse, ``gate`` admits each call
    (see the module docstring)."""
    handlers: dict[str, Any] = {}
    for method in service.methods:
        fn = getattr(servicer, method.name)
        name = f"{service.full_name}/{method.name}"
        req_cls = message_factory.GetMessageClass(method.input_type)
        resp_cls = message_factory.GetMessageClass(method.output_type)
        deserializer = _safe_deserializer(
            req_cls, check_strings=name not in CHECKS_ITS_OWN_STRINGS, limits=limits)
        serializer = resp_cls.SerializeToString
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _stream(fn, name, guard, gate),
                request_deserializer=deserializer,
                response_serializer=serializer,
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary(fn, name, guard, gate),
                request_deserializer=deserializer,
                response_serializer=serializer,
            )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
