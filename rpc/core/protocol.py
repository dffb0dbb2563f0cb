"""Wire protocol v1.1: the request and reply envelopes, their AMQP properties, and the headers
and messages of streams, keep-alives and cancels (no I/O).

docs/protocol.md is the normative description; this module is its executable form.
"""

from __future__ import annotations

import base64
import functools
import math
import pickle
import re
import struct
import uuid
from dataclasses import dataclass
from typing import Any, NamedTuple

from . import serialization
from .errors import (
    BadRequest,
    RPCError,
    SerializationError,
    error_payload,
    rebuild_exception,
    safe_args,
)

#: Header carrying the absolute deadline of a call, in seconds since the epoch (float).
DEADLINE_HEADER = "rpc-deadline"
#: AMQP ``type`` property of every reply; a server refuses messages of this type as requests.
REPLY_TYPE = "rpc.reply"
#: RabbitMQ's direct reply-to pseudo-queue, consumed by proxies on RabbitMQ.
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"

# Streams (v1.1): see docs/protocol.md, "Streams".
#: Request header asking for a stream; its value is the client's initial credit.
STREAM_HEADER = "rpc-stream"
#: Header of a stream's first item: the server instance's control address.
CONTROL_HEADER = "rpc-control"
#: ``type`` of a stream item, of a grant of credit, and of a cancel.
ITEM_TYPE = "rpc.item"
CREDIT_TYPE = "rpc.credit"
CANCEL_TYPE = "rpc.cancel"
#: The largest credit a request or a grant may carry.
MAX_CREDIT = 10_000
#: Content type of control messages, whatever the call's serializer.
CONTROL_CONTENT_TYPE = "application/json"
# Keep-alives and progress (v1.1): see docs/protocol.md, "Keep-alives, progress and cancels".
#: Request header asking for keep-alives; its value is the interval in seconds.
KEEPALIVE_HEADER = "rpc-keepalive"
KEEPALIVE_TYPE = "rpc.keepalive"
PROGRESS_TYPE = "rpc.progress"
#: The shortest and longest keep-alive interval a request may ask for, in seconds.
KEEPALIVE_RANGE = (0.5, 3600.0)
#: Keep-alives a client may miss before it counts the call's server as gone.
KEEPALIVES_MISSED = 3

#: Reply addresses a server publishes to: direct reply-to names and server-named queues.
_REPLY_ADDRESS = re.compile(r"\A(amq\.rabbitmq\.reply-to\.[\w.+/=-]+|amq\.gen-[\w-]+)\Z")


class Request(NamedTuple):
    """A decoded, shape-checked request body (a tuple: built for every call, it costs a third of
    a frozen dataclass)."""

    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def request_body(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The body of a request, ready for a serializer."""
    return {"method": method, "args": list(args), "kwargs": kwargs}


def parse_request(body: Any) -> Request:
    """Check a decoded request body's shape.

    Raises:
        BadRequest: the body is not ``{"method": str, "args": list, "kwargs": {str: ...}}``
            (``args`` and ``kwargs`` may be left out).
    """
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a map, not {type(body).__name__}")
    method = body.get("method")
    if not isinstance(method, str) or not method:
        raise BadRequest("request has no method name (a non-empty string)")
    args = body.get("args", ())
    if not isinstance(args, (list, tuple)):
        raise BadRequest(f"request args must be a list, not {type(args).__name__}")
    kwargs = body.get("kwargs", {})
    if not isinstance(kwargs, dict) or (kwargs and not all(isinstance(k, str) for k in kwargs)):
        raise BadRequest("request kwargs must be a map with string keys")
    return Request(method, tuple(args), kwargs)


def result_body(value: Any) -> dict[str, Any]:
    """The body of a successful reply."""
    return {"result": value}


def error_body(error: dict[str, Any]) -> dict[str, Any]:
    """The body of an error reply, from :func:`rpc.errors.error_payload`."""
    return {"error": error}


def request_properties(
    correlation_id: str, content_type: str, timeout: float | None, now: float,
    headers: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """AMQP properties of a request made at ``now`` (epoch seconds); ``reply_to`` is added when
    it is published, since a reconnect changes it.

    The message id is the correlation id, so a retry publishes the same id and a server answers
    it from its table of completed calls instead of running it twice.
    """
    props: dict[str, Any] = {
        "content_type": content_type, "correlation_id": correlation_id,
        "message_id": correlation_id,
    }
    if timeout is not None:
        props["headers"] = {DEADLINE_HEADER: now + timeout, **(headers or {})}
        props["expiration"] = expiration(timeout)
    elif headers:
        props["headers"] = headers
    return props


def reply_properties(correlation_id: Any, content_type: str, server: str) -> dict[str, Any]:
    """AMQP properties of a reply from ``server`` (its ``host:pid`` identity)."""
    return {"content_type": content_type, "correlation_id": correlation_id, "type": REPLY_TYPE,
            "app_id": server}


def reply_content_type(request_type: Any, accept: frozenset[str]) -> str:
    """A reply goes in its request's content type, or JSON when that type is not accepted."""
    return request_type if request_type in accept else serialization.JSON


def error_reply(exc: BaseException, content_type: str, *, include_traceback: bool) -> dict[str, Any]:
    """The body of an error reply; in pickle, the exception itself travels too, when it pickles."""
    error = error_payload(exc, include_traceback=include_traceback)
    if content_type == serialization.PICKLE and isinstance(exc, Exception):
        try:
            pickle.dumps(exc)
            error["instance"] = exc
        except Exception:
            pass  # unpicklable: the plain fields still carry type, message and args
    return error_body(error)


def encode_reply(body: dict[str, Any], content_type: str, *, ok: bool,
                 include_traceback: bool = False) -> tuple[bytes, str]:
    """The encoded reply and its content type; a reply that cannot be encoded becomes an error
    reply, with its arguments made safe, and at worst one in JSON carrying only the message."""
    try:
        return serialization.encode(body, content_type), content_type
    except SerializationError as exc:
        if ok:
            failure = SerializationError(f"cannot encode the result: {exc}")
            return encode_reply(error_reply(failure, content_type,
                                            include_traceback=include_traceback),
                                content_type, ok=False)
    error = dict(body["error"])
    error.pop("instance", None)
    error["args"] = safe_args(error["args"])
    try:
        return serialization.encode(error_body(error), content_type), content_type
    except SerializationError:
        error["args"] = [error["message"]]
        return serialization.encode(error_body(error), serialization.JSON), serialization.JSON


def decode_reply(
    body: bytes, content_type: Any, expected: str, accept: frozenset[str], *,
    oversize: int = 0, limit: int | None = None,
) -> tuple[bool, Any]:
    """A reply's outcome: ``(True, result)``, or ``(False, exception)`` for a remote error
    rebuilt here and for a reply this side refuses (too large, or in the wrong content type).

    Only errors may come back in JSON when the call was made in another content type: a server
    answers in JSON when it cannot speak the request's serializer.
    """
    try:
        if oversize:
            raise RPCError(f"reply of {oversize} bytes exceeds this proxy's limit of "
                           f"{limit} bytes")
        if content_type != expected and content_type != serialization.JSON:
            raise RPCError(f"reply in content type {content_type!r}, expected {expected!r}")
        ok, value = parse_reply(serialization.decode(body, content_type, accept))
        if ok and content_type != expected:
            raise RPCError(f"a result in {content_type!r}; only errors may come back as JSON")
    except RPCError as exc:
        return False, exc
    if ok:
        return True, value
    return False, rebuild_exception(value)


def stream_credit(headers: dict[str, Any] | None) -> int | None:
    """The initial credit of a stream request, or None for a plain request.

    Raises:
        BadRequest: the header is there but is not a whole number from 1 to MAX_CREDIT.
    """
    if not headers or STREAM_HEADER not in headers:
        return None
    credit = headers[STREAM_HEADER]
    if type(credit) is not int or not 1 <= credit <= MAX_CREDIT:
        raise BadRequest(f"{STREAM_HEADER} must be a whole number from 1 to {MAX_CREDIT}, "
                         f"not {credit!r}")
    return credit


def keepalive_interval(headers: dict[str, Any] | None) -> float | None:
    """The keep-alive interval a request asks for, or None (also for a value out of range:
    keep-alives are a courtesy, and a bad value must not fail the call)."""
    if not headers:
        return None
    value = headers.get(KEEPALIVE_HEADER)
    if type(value) is not int and type(value) is not float:
        return None
    interval = float(value)
    return interval if KEEPALIVE_RANGE[0] <= interval <= KEEPALIVE_RANGE[1] else None


def keepalive_properties(correlation_id: Any, server: str, control: str) -> dict[str, Any]:
    """AMQP properties of a keep-alive (its body is empty)."""
    return {"correlation_id": correlation_id, "type": KEEPALIVE_TYPE, "app_id": server,
            "headers": {CONTROL_HEADER: control}}


def progress_body(done: float, total: float | None, message: str) -> dict[str, Any]:
    """The body of a progress message, ready for a serializer."""
    return {"done": done, "total": total, "message": message}


def progress_properties(correlation_id: Any, content_type: str, server: str,
                        control: str) -> dict[str, Any]:
    """AMQP properties of a progress message."""
    return {"content_type": content_type, "correlation_id": correlation_id,
            "type": PROGRESS_TYPE, "app_id": server, "headers": {CONTROL_HEADER: control}}


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a long call has got, as its handler reported."""

    done: float
    total: float | None = None
    message: str = ""


def parse_progress(body: Any) -> Progress:
    """A decoded progress body.

    Raises:
        RPCError: it is not ``{"done": number, "total": number or null, "message": str}``.
    """
    if isinstance(body, dict):
        done, total, message = body.get("done"), body.get("total"), body.get("message", "")
        if (isinstance(done, (int, float)) and not isinstance(done, bool)
                and (total is None or isinstance(total, (int, float)))
                and isinstance(message, str)):
            return Progress(done, total, message)
    raise RPCError(f"malformed progress message: {body!r:.100}")


def item_body(value: Any) -> dict[str, Any]:
    """The body of one stream item, ready for a serializer."""
    return {"item": value}


def item_properties(correlation_id: Any, content_type: str, server: str,
                    control: str | None) -> dict[str, Any]:
    """AMQP properties of a stream item; the first carries the control address."""
    props = {"content_type": content_type, "correlation_id": correlation_id, "type": ITEM_TYPE,
             "app_id": server}
    if control is not None:
        props["headers"] = {CONTROL_HEADER: control}
    return props


def control_of(props: dict[str, Any]) -> str | None:
    """The control address a stream item, keep-alive or progress message names (None when it
    names none, or something that is no address)."""
    headers = props.get("headers")
    control = headers.get(CONTROL_HEADER) if headers else None
    return control if isinstance(control, str) and control else None


def parse_item(body: Any) -> Any:
    """The value of a decoded stream item.

    Raises:
        RPCError: the body is not ``{"item": ...}``.
    """
    if isinstance(body, dict) and "item" in body:
        return body["item"]
    raise RPCError(f"malformed stream item: {type(body).__name__} without 'item'")


def control_message(kind: str, correlation_id: str, credit: int = 0) -> tuple[bytes, dict[str, Any]]:
    """Body and properties of a grant of ``credit`` (``kind`` CREDIT_TYPE) or of a cancel."""
    body = b'{"credit": %d}' % credit if kind == CREDIT_TYPE else b"{}"
    return body, {"content_type": CONTROL_CONTENT_TYPE, "correlation_id": correlation_id,
                  "type": kind}


def parse_control(kind: Any, body: bytes) -> int:
    """The credit a control message grants (0 for a cancel).

    Raises:
        BadRequest: an unknown kind, or a grant that is not ``{"credit": 1..MAX_CREDIT}``.
    """
    if kind == CANCEL_TYPE:
        return 0
    if kind != CREDIT_TYPE:
        raise BadRequest(f"unknown control message type {kind!r}")
    try:
        credit = serialization.decode(body, CONTROL_CONTENT_TYPE,
                                      frozenset({CONTROL_CONTENT_TYPE}))["credit"]
    except (BadRequest, KeyError, TypeError) as exc:
        raise BadRequest(f"malformed grant of credit: {exc}") from None
    if type(credit) is not int or not 1 <= credit <= MAX_CREDIT:
        raise BadRequest(f"credit must be a whole number from 1 to {MAX_CREDIT}, not {credit!r}")
    return credit


def parse_reply(body: Any) -> tuple[bool, Any]:
    """Split a decoded reply body into ``(ok, result-or-error-member)``.

    Raises:
        RPCError: the body is neither ``{"result": ...}`` nor ``{"error": ...}``.
    """
    if isinstance(body, dict):
        if "error" in body:
            return False, body["error"]
        if "result" in body:
            return True, body["result"]
    raise RPCError(f"malformed reply: {type(body).__name__} without 'result' or 'error'")


@functools.lru_cache(maxsize=64)
def expiration(timeout: float) -> str:
    """The ``expiration`` property for a timeout: milliseconds, rounded up, at least 1."""
    return str(max(1, math.ceil(round(timeout * 1000, 6))))


def deadline_of(headers: dict[str, Any] | None) -> float | None:
    """The deadline a request carries, or None; an unreadable one counts as none."""
    if not headers:
        return None
    value = headers.get(DEADLINE_HEADER)
    if type(value) is float:  # what every proxy sends
        return value if math.isfinite(value) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value) if math.isfinite(value) else None
        except OverflowError:
            return None
    if isinstance(value, (str, bytes)):
        try:
            parsed = float(value)
        except ValueError:
            return None
        return parsed if math.isfinite(parsed) else None
    return None


#: The start of every broadcast exchange's name.
BROADCAST_PREFIX = "rpc.broadcast."
#: The longest server id, in bytes of UTF-8: AMQP names hold 255 bytes, and the longest name
#: made of it is each server's broadcast queue, ``rpc.broadcast.<server id>.<32 hex digits>``.
MAX_SERVER_ID = 255 - len(BROADCAST_PREFIX) - 33


def check_server_id(server_id: object) -> str:
    """``server_id``, once it is known to fit the queue, exchange and queue names made of it.

    Raises:
        TypeError: it is not a string.
        ValueError: it is empty, or longer than :data:`MAX_SERVER_ID` bytes.
    """
    if not isinstance(server_id, str):
        raise TypeError(f"server_id must be a string, not {type(server_id).__name__}")
    if not server_id or len(server_id.encode()) > MAX_SERVER_ID:
        raise ValueError(f"server_id must be a non-empty name of at most {MAX_SERVER_ID} bytes "
                         f"(UTF-8), not {server_id[:40]!r}{'...' if len(server_id) > 40 else ''}")
    return server_id


def broadcast_exchange(server_id: str) -> str:
    """The fanout exchange through which a broadcast reaches every server of ``server_id``."""
    return BROADCAST_PREFIX + server_id


def broadcast_queue(exchange: str) -> str:
    """A name for one server's queue bound to its broadcast ``exchange``, new each time."""
    return f"{exchange}.{uuid.uuid4().hex}"


@functools.lru_cache(maxsize=1024)
def is_reply_address(reply_to: str) -> bool:
    """Whether ``reply_to`` has the form of a reply address this protocol uses (remembered: a
    server answers the same few callers again and again)."""
    return bool(_REPLY_ADDRESS.match(reply_to))


#: Erlang's external term format, as RabbitMQ writes a channel's pid into a direct reply-to
#: address: the version byte, then a pid (whose node atom and creation are what we read).
_ETF_VERSION, _NEW_PID, _PID = 131, 88, 103
#: Atom tags: their length field's size.
_ATOM_LENGTH = {118: 2, 100: 2, 119: 1, 115: 1}


@functools.lru_cache(maxsize=1024)
def reply_origin(reply_to: str) -> str | None:
    """The broker node, in one lifetime, whose channel a direct reply-to address leads to
    (``node/creation``); None for any other address, or one of a form this does not know.

    RabbitMQ closes a server's connection on a reply to any caller of a node that has gone: once
    one address is found gone, every address of the same origin is, and needs no close to tell.
    A restarted node has a new creation, so its new callers have another origin.
    """
    prefix = DIRECT_REPLY_TO + "."
    if not reply_to.startswith(prefix):
        return None
    encoded = reply_to[len(prefix):].partition(".")[0]
    try:
        term = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        if len(term) < 3 or term[0] != _ETF_VERSION or term[1] not in (_NEW_PID, _PID):
            return None
        size = _ATOM_LENGTH.get(term[2])
        if size is None:
            return None
        (length,) = struct.unpack_from(">H" if size == 2 else ">B", term, 3)
        start = 3 + size
        node = term[start:start + length]
        creation = term[start + length + 8:]  # past the pid's id and serial
        if len(node) != length or len(creation) != (4 if term[1] == _NEW_PID else 1):
            return None
        name = node.decode("utf-8")
    except (struct.error, ValueError):  # bad base64 or UTF-8 are ValueErrors too
        return None
    return f"{name}/{creation.hex()}"
