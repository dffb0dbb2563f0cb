"""The link for every kombu transport but RabbitMQ's (``memory://``, ``redis://``): kombu's own
producer and consumer, serialised by one lock."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Iterator
from functools import partial
from typing import Any

from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.messaging import Consumer, Producer

from ..core import protocol
from ..core.errors import ConnectionLost
from ..core.session import Incoming as _Incoming
from ..core.session import QueueInfo
from .forks import renew_in_child
from .link import Incoming, Link, OnCancel, OnMessage, OnQueueInfo, OnReturn

logger = logging.getLogger(__name__)


def _no_inflate(message_class: type) -> type:
    """The channel's message class, minus kombu's decompression of ``compression`` headers.

    kombu inflates such bodies before any size or content check (a zip bomb); a compressed body
    reaches the server as it came and fails to decode like any other malformed one.
    """

    class NoInflateMessage(message_class):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            headers = kwargs.get("headers")
            if headers and "compression" in headers:
                kwargs["headers"] = {k: v for k, v in headers.items() if k != "compression"}
            super().__init__(*args, **kwargs)

    return NoInflateMessage


class _Changes:
    """What may give a reader on ``memory://`` a message (a publish, an ack that frees a
    consumer's prefetch, a reject or a close that requeues), counted, so that a reader waiting
    for one wakes at once.

    kombu's in-process transport has nothing to wait on: its reader sleeps between polls. All
    of its links live in one process, so each change here wakes the readers instead.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._count = 0
        # A child process gets a condition of its own: a parent thread may hold this one.
        renew_in_child(self, _Changes._renew)

    def _renew(self) -> None:
        self._cond = threading.Condition()

    @property
    def count(self) -> int:
        return self._count

    def note(self) -> None:
        with self._cond:
            self._count += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        """Return once a change came after ``seen`` (:attr:`count` before the last poll), or
        after ``timeout`` seconds (what code other than rpc publishes wakes nobody)."""
        with self._cond:
            if self._count == seen:
                self._cond.wait(timeout)


_MEMORY_CHANGES = _Changes()


class KombuLink(Link):
    """Any kombu transport, through kombu's producer and consumer under one lock."""

    _SLICE = 0.005  # longest hold of the lock while reading, so publishers get their turn

    def __init__(
        self, conn: Connection, on_message: OnMessage,
        on_return: OnReturn | None, on_cancel: OnCancel | None, max_body: int | None,
    ) -> None:
        super().__init__(on_message, on_return, on_cancel, max_body)
        self._conn = conn
        self._lock = threading.RLock()
        self._channel = conn.channel()
        self._channel.Message = _no_inflate(self._channel.Message)
        self._producer = Producer(self._channel, serializer=None)
        self._consumers: dict[str, Consumer] = {}
        self._messages: dict[int, Any] = {}
        # What the consumers call. kombu's virtual transports keep consumers reachable from
        # module state while the channel is open, so they hold this link (and through its
        # callbacks, its owner) weakly: a Proxy dropped unclosed is collected, and its finalizer
        # closes it. A reply (no_ack) is not kept for an acknowledgement that never comes.
        self._on_delivery = partial(_deliver, weakref.ref(self), True)
        self._on_reply = partial(_deliver, weakref.ref(self), False)
        #: Whether the transport tells a queue nobody declared from an empty one. Redis keeps
        #: a queue only while it holds messages, so there a request to an empty queue would
        #: look unroutable: it is published, and a call nobody serves times out.
        self._knows_queues = conn.transport.driver_type != "redis"
        self._changes = _MEMORY_CHANGES if conn.transport.driver_type == "memory" else None
        self._released = False

    @contextlib.contextmanager
    def _talking(self) -> Iterator[None]:
        """Hold the lock for one exchange with the broker. A connection that fails meanwhile is
        lost, as on RabbitMQ's link: the transport's own error (redis-py's ConnectionError is
        no OSError) would otherwise end the thread that made the exchange, a server's I/O
        thread among them."""
        with self._lock:
            try:
                yield
            except self._conn.connection_errors as exc:
                self.closed = True
                raise ConnectionLost(f"connection to the broker failed: {exc}") from exc

    def declare_queue(self, name: str, *, durable: bool, arguments: dict[str, Any] | None = None) -> str:
        with self._talking():
            queue = Queue(name, durable=durable, auto_delete=False, queue_arguments=arguments,
                          channel=self._channel)
            queue.declare()
            return name

    def reply_queue(self) -> str:
        with self._talking():
            queue = Queue("", exclusive=True, auto_delete=True, channel=self._channel)
            queue.declare()
            consumer = Consumer(self._channel, [queue], no_ack=True, on_message=self._on_reply,
                                accept=None)
            consumer.consume()
            self._consumers[str(queue.name)] = consumer
            return str(queue.name)

    def consume(self, queue: str, *, prefetch: int) -> str:
        with self._talking():
            consumer = Consumer(self._channel, [Queue(queue, no_declare=True)], no_ack=False,
                                on_message=self._on_delivery, prefetch_count=prefetch, accept=None)
            consumer.consume()
            tag = str(consumer.queues[0].name)
            self._consumers[tag] = consumer
            return tag

    def broadcast_queue(self, exchange: str) -> str:
        with self._talking():
            fanout = Exchange(exchange, "fanout", durable=True, auto_delete=False)
            queue = Queue(protocol.broadcast_queue(exchange), fanout, exclusive=True,
                          auto_delete=True, channel=self._channel)
            queue.declare()
            return str(queue.name)

    def declare_fanout(self, exchange: str) -> None:
        with self._talking():
            Exchange(exchange, "fanout", durable=True, auto_delete=False)(self._channel).declare()

    def cancel(self, consumer_tag: str) -> None:
        with self._talking():
            consumer = self._consumers.pop(consumer_tag, None)
            if consumer is not None:
                consumer.cancel()

    def inspect_queue(self, queue: str, on_info: OnQueueInfo) -> None:
        with self._talking():
            if self.closed:
                raise ConnectionLost("the connection is closed")
            try:
                ok = self._channel.queue_declare(queue=queue, passive=True)
            except self._conn.channel_errors:
                info = None
            else:  # a real AMQP channel counts consumers; kombu's virtual channels report 0
                counts = tuple(ok)
                virtual = self._conn.transport.driver_type != "amqp"
                info = QueueInfo(int(counts[1]), None if virtual else int(counts[2]))
        on_info(info)

    def _queue_exists(self, name: str) -> bool:
        try:
            self._channel.queue_declare(queue=name, passive=True)
        except self._conn.channel_errors:
            return False
        return True

    def publish(
        self, routing_key: str, body: bytes, props: dict[str, Any], *,
        mandatory: bool = False, ack: int | None = None, exchange: str = "",
        track: Any = None,
    ) -> None:
        with self._talking():
            if self.closed:
                raise ConnectionLost("the connection is closed")
            if mandatory and not exchange and self._knows_queues \
                    and not self._queue_exists(routing_key):
                returned: Incoming = _Incoming(body, props, None, False, routing_key, self)
                self.on_return(returned, 312, "NO_ROUTE")
            else:
                extra = {k: v for k, v in props.items()
                         if k not in ("content_type", "headers", "expiration") and v is not None}
                expiration = props.get("expiration")
                self._producer.publish(
                    body, routing_key=routing_key, exchange=exchange,
                    content_type=props.get("content_type"), content_encoding="binary",
                    headers=props.get("headers") or {},
                    expiration=int(expiration) / 1000 if expiration else None,
                    retry=False, **extra,
                )
                if self._changes is not None:
                    self._changes.note()
            if ack is not None:
                self.ack(ack)

    def ack(self, delivery_tag: int) -> None:
        with self._talking():
            message = self._messages.pop(delivery_tag, None)
            if message is not None and not self.closed:
                message.ack()
                if self._changes is not None:  # a consumer at its prefetch may take more
                    self._changes.note()

    def reject(self, delivery_tag: int, *, requeue: bool) -> None:
        with self._talking():
            message = self._messages.pop(delivery_tag, None)
            if message is not None and not self.closed:
                message.reject(requeue=requeue)
                if self._changes is not None:
                    self._changes.note()

    def read(self, timeout: float | None) -> bool:
        if self.closed:
            raise ConnectionLost("the connection is closed")
        deadline = None if timeout is None else time.monotonic() + timeout
        changes = self._changes
        while True:
            remaining = self._SLICE if deadline is None else min(self._SLICE, deadline - time.monotonic())
            with self._lock:
                if self.closed:
                    raise ConnectionLost("the connection is closed")
                try:
                    if changes is None:
                        self._conn.drain_events(timeout=max(remaining, 0))
                    else:  # poll once, then wait for a change (below, without the lock)
                        seen = changes.count
                        self._conn.drain_events(timeout=0)
                    return True
                except TimeoutError:
                    pass
                except _Raised as raised:  # by the link's owner, which hears of it as it was
                    error = raised.error
                    raise error from error.__cause__  # not from the wrapper
                except self._conn.connection_errors as exc:
                    self.closed = True
                    raise ConnectionLost(f"connection to the broker failed: {exc}") from exc
                except Exception:
                    # A message the transport cannot decode: on Redis, anything pushed to a
                    # queue by hand. It is already off the queue, and its sender is unknown:
                    # drop it, and read on.
                    logger.warning("dropped a message the transport could not read",
                                   exc_info=True)
                    return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            if changes is None:
                time.sleep(0)  # let a publisher take the lock
            else:
                changes.wait(seen, max(remaining, 0))

    def abandon(self) -> None:
        self._released = self.closed = True  # the parent's to release

    def close(self) -> None:
        """Release the connection, also after it failed: kombu then puts the messages not
        acknowledged back in their queues, or gives up on them, rather than try at exit."""
        with self._lock:
            if self._released:
                return
            self._released = self.closed = True
            try:
                self._conn.release()
            except Exception:
                logger.debug("error releasing a kombu connection", exc_info=True)
            if self._changes is not None:  # its unacknowledged messages went back to their queues
                self._changes.note()


def _deliver(ref: weakref.ref[KombuLink], acked: bool, message: Any) -> None:
    """A consumer's delivery, to the link ``ref`` names while it lives (see ``_on_delivery``);
    ``acked``: kept until the link acknowledges or rejects it."""
    link = ref()
    if link is None:
        return
    info = message.delivery_info or {}
    props = dict(message.properties)
    props["content_type"] = message.content_type
    props["headers"] = message.headers
    tag = message.delivery_tag
    if acked and tag is not None:
        link._messages[tag] = message
    body = message.body if isinstance(message.body, bytes) else bytes(message.body, "utf-8")
    msg: Incoming = _Incoming(body, props, tag, bool(info.get("redelivered")),
                              str(info.get("routing_key", "")), link)
    if link.max_body is not None and len(body) > link.max_body:
        msg.body, msg.oversize = b"", len(body)
    try:
        link.on_message(msg)
    except Exception as exc:  # through kombu, told apart from what kombu itself raises
        raise _Raised(exc) from exc


class _Raised(Exception):
    """What a link's ``on_message`` raised, on its way out of kombu's ``drain_events``."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error
