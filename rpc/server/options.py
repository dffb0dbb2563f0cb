"""A server's settings: checked once, frozen, and read by every part of a running server (no I/O).

:class:`ServerOptions` holds what ``Server(...)``'s keyword arguments describe once they are
resolved (the URL, the accepted content types). A running server works from the options it was
started with; changing one (``server.concurrency = 4``, or ``server.options = replace(...)``)
builds new options, checked again, for the next start.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, Literal, Protocol, TypeVar, cast, overload

from ..core import protocol
from ..core.context import CallInfo
from ..core.serialization import DEFAULT_ACCEPT
from ..defaults import (
    DEFAULT_ASYNC_CONCURRENCY,
    DEFAULT_HEARTBEAT,
    DEFAULT_MAX_MESSAGE_SIZE,
    SERVER_CONNECT_RETRY,
)
from ..transport.connect import Failover, FailoverStrategy

QueueType = Literal["classic", "quorum"]

#: Requests prefetched per concurrent call unless ``prefetch`` is given: the smallest multiple
#: that kept 100 pipelined calls at the raw pika loop's pace (docs/protocol.md, benchmarks/).
PREFETCH_PER_WORKER = 4
#: Deliveries of one request before a quorum queue dead-letters it (``queue_type="quorum"``).
DEFAULT_DELIVERY_LIMIT = 20
#: The address the metrics and health endpoint listens on unless told otherwise.
DEFAULT_METRICS_HOST = "0.0.0.0"

ErrorHook = Callable[[BaseException, CallInfo], Any]


def queue_type(value: str) -> QueueType:
    """``value`` as a queue type.

    Raises:
        ValueError: it is neither ``"classic"`` nor ``"quorum"``.
    """
    if value == "classic":
        return "classic"
    if value == "quorum":
        return "quorum"
    raise ValueError(f"queue_type must be 'classic' or 'quorum', not {value!r}")


@dataclass(frozen=True, kw_only=True)
class ServerOptions:
    """Everything a server is configured with, checked when built; see :class:`rpc.Server`.

    Raises:
        ValueError: a setting is out of range, or the URL or failover strategy is not valid.
    """

    #: The broker URL, or several separated by ``;`` (resolved: never None).
    url: str
    server_id: str = "calc"
    #: Content types a request may come in.
    accept: frozenset[str] = DEFAULT_ACCEPT
    concurrency: int = 1
    async_concurrency: int = DEFAULT_ASYNC_CONCURRENCY
    #: Requests the broker may send ahead; None: see :meth:`prefetch_count`.
    prefetch: int | None = None
    heartbeat: float = DEFAULT_HEARTBEAT
    send_tracebacks: bool = False
    connect_retry: float = SERVER_CONNECT_RETRY
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    on_error: ErrorHook | None = None
    queue_arguments: Mapping[str, Any] | None = None
    queue_type: QueueType = "classic"
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT
    failover: FailoverStrategy = "round-robin"
    metrics_port: int | None = None
    metrics_host: str = DEFAULT_METRICS_HOST
    ssl: Mapping[str, Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # Copies of the caller's tables: changing them later must not change a server's options.
        for name in ("queue_arguments", "ssl"):
            table = getattr(self, name)
            if table is not None:
                object.__setattr__(self, name, MappingProxyType(dict(table)))
        protocol.check_server_id(self.server_id)
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.async_concurrency < 0:
            raise ValueError("async_concurrency cannot be negative")
        if self.prefetch is not None and self.prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        if self.delivery_limit < 1:
            raise ValueError("delivery_limit must be at least 1")
        queue_type(self.queue_type)
        Failover(self.url, self.failover)  # checks the URLs and the strategy

    @property
    def dead_letter_queue(self) -> str:
        """Where a quorum request queue sends a request delivered ``delivery_limit`` times."""
        return f"{self.server_id}.dead"

    def prefetch_count(self, has_async: bool) -> int:
        """``prefetch``, or ``PREFETCH_PER_WORKER * concurrency`` plus ``async_concurrency``
        when an ``async def`` handler is registered (``has_async``)."""
        if self.prefetch is not None:
            return self.prefetch
        return PREFETCH_PER_WORKER * self.concurrency + (self.async_concurrency if has_async else 0)

    def request_queue_arguments(self) -> dict[str, Any] | None:
        """The request queue's arguments: those ``queue_type`` implies, then ``queue_arguments``."""
        arguments: dict[str, Any] = {}
        if self.queue_type == "quorum":
            arguments = {
                "x-queue-type": "quorum",
                "x-delivery-limit": self.delivery_limit,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": self.dead_letter_queue,
            }
        arguments.update(self.queue_arguments or {})
        return arguments or None

    def ssl_options(self) -> dict[str, Any] | None:
        """py-amqp's TLS options, as a fresh dict (None: the URL's scheme decides)."""
        return None if self.ssl is None else dict(self.ssl)


T = TypeVar("T")


class Configurable(Protocol):
    """What :class:`Option` reads and replaces: an object holding ServerOptions."""

    @property
    def options(self) -> ServerOptions: ...

    @options.setter
    def options(self, value: ServerOptions) -> None: ...


class Option(Generic[T]):
    """A server attribute that reads one field of its :class:`ServerOptions`, and on assignment
    replaces the options with a copy where that field changed (checked again)."""

    name: str

    def __set_name__(self, owner: type, name: str) -> None:
        if name not in ServerOptions.__dataclass_fields__:
            raise TypeError(f"ServerOptions has no field {name!r}")
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> Option[T]: ...

    @overload
    def __get__(self, obj: Configurable, owner: type) -> T: ...

    def __get__(self, obj: Configurable | None, owner: type) -> Option[T] | T:
        if obj is None:
            return self
        return cast(T, getattr(obj.options, self.name))

    def __set__(self, obj: Configurable, value: T) -> None:
        changes: dict[str, Any] = {self.name: value}
        obj.options = dataclasses.replace(obj.options, **changes)
