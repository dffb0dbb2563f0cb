"""Wire protocol v1: the request and reply envelopes and their AMQP properties (no I/O).

docs/protocol.md is the normative description; this module is its executable form.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Any

from .errors import BadRequest, RPCError

#: Header carrying the absolute deadline of a call, in seconds since the epoch (float).
DEADLINE_HEADER = "rpc-deadline"
#: AMQP ``type`` property of every reply; a server refuses messages of this type as requests.
REPLY_TYPE = "rpc.reply"
#: RabbitMQ's direct reply-to pseudo-queue, consumed by proxies on RabbitMQ.
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"

#: Reply addresses a server publishes to: direct reply-to names and server-named queues.
_REPLY_ADDRESS = re.compile(r"\A(amq\.rabbitmq\.reply-to\.[\w.+/=-]+|amq\.gen-[\w-]+)\Z")


@dataclass(frozen=True, slots=True)
class Request:
    """A decoded, shape-checked request body."""

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
    args = body.get("args", [])
    if not isinstance(args, (list, tuple)):
        raise BadRequest(f"request args must be a list, not {type(args).__name__}")
    kwargs = body.get("kwargs", {})
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise BadRequest("request kwargs must be a map with string keys")
    return Request(method, tuple(args), kwargs)


def result_body(value: Any) -> dict[str, Any]:
    """The body of a successful reply."""
    return {"result": value}


def error_body(error: dict[str, Any]) -> dict[str, Any]:
    """The body of an error reply, from :func:`rpc.errors.error_payload`."""
    return {"error": error}


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


def deadline_headers(timeout: float | None, now: float) -> tuple[dict[str, Any] | None, str | None]:
    """Headers and ``expiration`` property for a call with ``timeout`` seconds, made at ``now``."""
    if timeout is None:
        return None, None
    return {DEADLINE_HEADER: now + timeout}, expiration(timeout)


@functools.lru_cache(maxsize=64)
def expiration(timeout: float) -> str:
    """The ``expiration`` property for a timeout: milliseconds, rounded up, at least 1."""
    return str(max(1, math.ceil(round(timeout * 1000, 6))))


def deadline_of(headers: dict[str, Any] | None) -> float | None:
    """The deadline a request carries, or None; an unreadable one counts as none."""
    if not headers:
        return None
    value = headers.get(DEADLINE_HEADER)
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


def broadcast_exchange(server_id: str) -> str:
    """The fanout exchange through which a broadcast reaches every server of ``server_id``."""
    return f"rpc.broadcast.{server_id}"


def is_reply_address(reply_to: str) -> bool:
    """Whether ``reply_to`` has the form of a reply address this protocol uses."""
    return bool(_REPLY_ADDRESS.match(reply_to))
