"""Links: the thin I/O layer between the server or proxy and one broker connection.

A link publishes (from any thread), acknowledges, and reads and dispatches incoming messages
(from one reader thread at a time). Two kinds:

* :class:`AMQPLink` for RabbitMQ through py-amqp: after py-amqp has connected and declared, the
  link writes and parses the per-call frames itself (:mod:`rpc.frames`), so that a publish is one
  ``send`` and a burst of deliveries one ``recv``, and it sends heartbeats from :meth:`tick`.
* :class:`KombuLink` for every other kombu transport (``memory://``, ``redis://``): kombu's own
  producer and consumer, serialised by one lock.
"""

from __future__ import annotations

import itertools
import logging
import select
import socket
import ssl
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.messaging import Consumer, Producer

from ..core import frames
from ..core.errors import BrokerBlocked, ConnectionLost
from ..core.protocol import DIRECT_REPLY_TO

logger = logging.getLogger(__name__)

#: Seconds a write may wait for the broker to read before the connection counts as dead.
SEND_TIMEOUT = 10.0


class Incoming:
    """One message read from the broker: body, AMQP properties and delivery facts."""

    __slots__ = ("body", "props", "delivery_tag", "redelivered", "routing_key", "link", "oversize")

    def __init__(
        self,
        body: bytes,
        props: dict[str, Any],
        delivery_tag: int | None,
        redelivered: bool,
        routing_key: str,
        link: Link,
    ) -> None:
        self.body = body
        self.props = props
        self.delivery_tag = delivery_tag
        self.redelivered = redelivered
        self.routing_key = routing_key
        #: The link that read it: acknowledgements must go back through the same channel.
        self.link = link
        #: The size of a body over the link's limit, which was dropped unread (0 otherwise).
        self.oversize = 0

    def __repr__(self) -> str:
        return (
            f"<Incoming tag={self.delivery_tag} key={self.routing_key!r} "
            f"type={self.props.get('content_type')!r} {len(self.body)} bytes>"
        )


class QueueInfo(NamedTuple):
    """A queue's counts from a passive declare; ``consumers`` is None where the transport cannot
    tell (kombu's virtual transports report none)."""

    messages: int
    consumers: int | None


OnMessage = Callable[[Incoming], None]
#: Hears of a queue inspection: its counts, or None when there is no such queue.
OnQueueInfo = Callable[[QueueInfo | None], None]
OnReturn = Callable[[Incoming, int, str], None]
OnCancel = Callable[[str], None]


def _ignore_return(msg: Incoming, code: int, text: str) -> None:
    logger.debug("message to %r returned: %s %s", msg.routing_key, code, text)


def _ignore_cancel(tag: str) -> None:
    logger.warning("broker cancelled consumer %s", tag)


class Link:
    """What the server and the proxy need from a connection; see the module docstring."""

    #: Whether the broker offers RabbitMQ's direct reply-to.
    direct_reply_to = False

    def __init__(
        self, on_message: OnMessage, on_return: OnReturn | None, on_cancel: OnCancel | None,
        max_body: int | None,
    ) -> None:
        self.on_message = on_message
        #: Bodies larger than this are dropped as they arrive and delivered with ``oversize`` set.
        self.max_body = max_body
        self.on_return = on_return or _ignore_return
        self.on_cancel = on_cancel or _ignore_cancel
        self.closed = False
        #: Set while the broker has blocked publishing (a resource alarm).
        self.blocked: str | None = None

    def declare_queue(self, name: str, *, durable: bool, arguments: dict[str, Any] | None = None) -> str:
        raise NotImplementedError

    def reply_queue(self) -> str:
        """Start consuming replies; returns the ``reply_to`` address to publish with."""
        raise NotImplementedError

    def consume(self, queue: str, *, prefetch: int) -> str:
        """Start consuming ``queue`` with manual acks; returns the consumer tag."""
        raise NotImplementedError

    def broadcast_queue(self, exchange: str) -> str:
        """Declare the fanout ``exchange`` and an exclusive queue bound to it; returns its name.

        The queue is named ``<exchange>.<uuid>`` so that a server user's permissions on ``rpc.*``
        names cover it.
        """
        raise NotImplementedError

    def declare_fanout(self, exchange: str) -> None:
        """Declare the fanout ``exchange`` (safe while another thread reads)."""
        raise NotImplementedError

    def cancel(self, consumer_tag: str) -> None:
        """Stop deliveries to ``consumer_tag`` (those already sent still arrive)."""
        raise NotImplementedError

    def inspect_queue(self, queue: str, on_info: OnQueueInfo) -> None:
        """Ask the broker for ``queue``'s message and consumer counts, from any thread.

        ``on_info`` runs on the thread that reads the answer (or at once on transports that
        answer synchronously); a missing queue gives None.
        """
        raise NotImplementedError

    def publish(
        self, routing_key: str, body: bytes, props: dict[str, Any], *,
        mandatory: bool = False, ack: int | None = None, exchange: str = "",
        track: Any = None,
    ) -> None:
        """Publish a message; ``ack`` acknowledges that delivery in the same write.

        ``track`` names the publish to the ``on_nack`` callback when confirms are on.

        Raises:
            BrokerBlocked: the broker has blocked publishing (a resource alarm).
            ConnectionLost: the connection failed.
        """
        raise NotImplementedError

    def enable_confirms(
        self, on_nack: Callable[[Any], None],
        on_blocked: Callable[[list[Any], str], None] | None = None,
    ) -> None:
        """Track publishes with publisher confirms where the transport has them.

        Nothing waits for a confirm: acks retire the tracking entries, ``on_nack(key)`` hears
        of each refused publish, and ``on_blocked(keys, reason)`` of those still unconfirmed
        when the broker blocks publishing (it sends ``connection.blocked`` only after a publish).
        """
        return None

    def ack(self, delivery_tag: int) -> None:
        raise NotImplementedError

    def reject(self, delivery_tag: int, *, requeue: bool) -> None:
        raise NotImplementedError

    def read(self, timeout: float | None) -> bool:
        """Read and dispatch what arrives within ``timeout`` (None blocks); False if nothing did.

        Raises:
            ConnectionLost: the connection or channel failed or was closed.
        """
        raise NotImplementedError

    def tick(self) -> None:
        """Send a heartbeat if due; raise ConnectionLost if the broker fell silent."""

    def close(self) -> None:
        raise NotImplementedError


def open_link(
    conn: Connection,
    on_message: OnMessage,
    on_return: OnReturn | None = None,
    on_cancel: OnCancel | None = None,
    *,
    max_body: int | None = None,
) -> Link:
    """The fastest link for ``conn``'s transport."""
    if conn.transport.driver_type == "amqp" and hasattr(conn.connection, "frame_writer"):
        return AMQPLink(conn, on_message, on_return, on_cancel, max_body)
    return KombuLink(conn, on_message, on_return, on_cancel, max_body)


class AMQPLink(Link):
    """RabbitMQ through py-amqp, with the per-call frames written and parsed here."""

    direct_reply_to = True
    _CHUNK = 65536

    def __init__(
        self, conn: Connection, on_message: OnMessage,
        on_return: OnReturn | None, on_cancel: OnCancel | None, max_body: int | None,
    ) -> None:
        super().__init__(on_message, on_return, on_cancel, max_body)
        self._kombu = conn
        self._amqp = conn.connection
        self._channel = self._amqp.channel()
        self._ch = self._channel.channel_id
        self._sock: socket.socket = self._amqp.transport.sock
        # OpenSSL forbids reading and writing one TLS connection from two threads at once: once
        # our reader takes over from py-amqp, a TLS socket is non-blocking and every read and
        # write holds _wlock (a plain socket is safe to read and write at once).
        self._ssl = isinstance(self._sock, ssl.SSLSocket)
        if not self._ssl:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                                  struct.pack("ll", int(SEND_TIMEOUT), 0))
        self._frame_max = int(self._amqp.frame_max)
        self.heartbeat = float(self._amqp.heartbeat or 0)
        self._wlock = threading.Lock()
        # Publisher confirms: sequence number of each tracked publish -> its key.
        self.on_nack: Callable[[Any], None] | None = None
        self.on_blocked: Callable[[list[Any], str], None] | None = None
        self._confirming = False
        self._seq = 0
        self._unconfirmed: dict[int, Any] = {}
        # Queue inspections go on a channel of their own, opened when first needed, since the
        # broker closes the channel of a passive declare of a missing queue.
        self._aux = max(self._amqp.channels or {0: None}) + 1
        self._aux_open = False
        self._inspections: deque[OnQueueInfo] = deque()
        self._inspect_lock = threading.Lock()
        self._poller = select.poll()
        self._poller.register(self._sock, select.POLLIN | select.POLLERR | select.POLLHUP)
        self._chunk = bytearray(self._CHUNK)
        self._chunk_view = memoryview(self._chunk)
        self._buf = bytearray()
        # The content being assembled: (kind, method facts), properties, size, parts.
        self._method: tuple[Any, ...] | None = None
        self._props: dict[str, Any] = {}
        self._size = 0
        self._parts: list[bytes] = []
        self._got = 0
        self._skip = False
        now = time.monotonic()
        self.last_sent = self.last_recv = now

    # -- setup, before anyone reads ------------------------------------------------------------

    def declare_queue(self, name: str, *, durable: bool, arguments: dict[str, Any] | None = None) -> str:
        result = self._channel.queue_declare(
            name, durable=durable, auto_delete=False, arguments=arguments or None,
        )
        return str(result.queue)

    def reply_queue(self) -> str:
        self._channel.basic_consume(
            DIRECT_REPLY_TO, no_ack=True, callback=self._from_amqp,
        )
        return DIRECT_REPLY_TO

    def enable_confirms(
        self, on_nack: Callable[[Any], None],
        on_blocked: Callable[[list[Any], str], None] | None = None,
    ) -> None:
        self._channel.confirm_select()
        self._confirming = True
        self.on_nack = on_nack
        self.on_blocked = on_blocked

    def consume(self, queue: str, *, prefetch: int) -> str:
        self._channel.basic_qos(0, prefetch, False)
        return str(self._channel.basic_consume(queue, no_ack=False, callback=self._from_amqp))

    def broadcast_queue(self, exchange: str) -> str:
        name = f"{exchange}.{uuid.uuid4().hex}"
        self._channel.exchange_declare(exchange, "fanout", durable=True, auto_delete=False)
        self._channel.queue_declare(name, exclusive=True, auto_delete=True)
        self._channel.queue_bind(name, exchange)
        return name

    def declare_fanout(self, exchange: str) -> None:
        self._send(frames.declare_fanout_frame(self._ch, exchange))

    def _from_amqp(self, message: Any) -> None:
        """A delivery py-amqp read during setup (our own reader parses every later one)."""
        props = dict(message.properties)
        if "application_headers" in props:
            props["headers"] = props.pop("application_headers")
        info = message.delivery_info
        self.on_message(Incoming(bytes(message.body), props, info.get("delivery_tag"),
                                 bool(info.get("redelivered")), str(info.get("routing_key", "")), self))

    # -- writing, from any thread ----------------------------------------------------------------

    def cancel(self, consumer_tag: str) -> None:
        args = frames.shortstr(consumer_tag) + b"\x00"
        self._send(frames.method_frame(self._ch, frames.BASIC, frames.BASIC_CANCEL, args))

    def inspect_queue(self, queue: str, on_info: OnQueueInfo) -> None:
        with self._inspect_lock:
            data = b"" if self._aux_open else frames.channel_open_frame(self._aux)
            self._aux_open = True
            self._inspections.append(on_info)
            try:
                self._send(data + frames.passive_declare_frame(self._aux, queue))
            except ConnectionLost:
                self._inspections.pop()
                raise

    def _on_aux(self, class_id: int, method_id: int, payload: bytes) -> None:
        """A method on the inspection channel: a declare's answer, or the close of a missing queue."""
        if class_id == frames.QUEUE and method_id == frames.QUEUE_DECLARE_OK:
            _, messages, consumers = frames.parse_declare_ok(payload)
            with self._inspect_lock:
                on_info = self._inspections.popleft() if self._inspections else None
            if on_info is not None:
                on_info(QueueInfo(messages, consumers))
        elif class_id == frames.CHANNEL and method_id == frames.CHANNEL_CLOSE:
            code, text = frames.parse_close(payload)
            with self._inspect_lock:
                waiting = list(self._inspections)
                self._inspections.clear()
                self._aux_open = False
                self._send(frames.method_frame(self._aux, frames.CHANNEL, frames.CHANNEL_CLOSE_OK))
            if code != 404:
                logger.warning("queue inspection failed: %s %s", code, text)
            for i, on_info in enumerate(waiting):
                # The first asked for the missing queue; the broker dropped the ones after it.
                on_info(None if i == 0 and code == 404 else QueueInfo(0, None))

    def publish(
        self, routing_key: str, body: bytes, props: dict[str, Any], *,
        mandatory: bool = False, ack: int | None = None, exchange: str = "",
        track: Any = None,
    ) -> None:
        if self.blocked is not None:
            raise BrokerBlocked(f"the broker blocks publishing: {self.blocked}")
        data = frames.publish_frames(
            self._ch, routing_key, body, props, mandatory=mandatory, frame_max=self._frame_max,
            exchange=exchange,
        )
        if ack is not None:
            data += frames.ack_frame(self._ch, ack)
        self._send(data, track, publishes=1)

    def ack(self, delivery_tag: int) -> None:
        self._send(frames.ack_frame(self._ch, delivery_tag))

    def reject(self, delivery_tag: int, *, requeue: bool) -> None:
        self._send(frames.reject_frame(self._ch, delivery_tag, requeue))

    def _send(self, data: bytes, track: Any = None, publishes: int = 0) -> None:
        with self._wlock:
            if self.closed:
                raise ConnectionLost("the connection is closed")
            try:
                if self._ssl:
                    self._send_tls(data)
                else:
                    self._sock.sendall(data)
            except OSError as exc:
                self._fail()
                if isinstance(exc, (BlockingIOError, TimeoutError)):
                    raise ConnectionLost(f"the broker read nothing for {SEND_TIMEOUT:g} s "
                                         f"(blocked or stalled)") from exc
                raise ConnectionLost(f"cannot write to the broker: {exc}") from exc
            self.last_sent = time.monotonic()
            if publishes and self._confirming:
                self._seq += publishes
                if track is not None:
                    self._unconfirmed[self._seq] = track

    def _send_tls(self, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + SEND_TIMEOUT
        while view:
            try:
                view = view[self._sock.send(view):]
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                if time.monotonic() > deadline:
                    raise TimeoutError("TLS write timed out") from None
                select.select([], [self._sock], [], 0.05)

    def _confirmed(self, payload: bytes, ok: bool) -> None:
        delivery_tag, multiple = frames.parse_confirm(payload)
        with self._wlock:
            if multiple:  # sequence numbers were inserted in increasing order: stop at the first
                done = list(itertools.takewhile(delivery_tag.__ge__, self._unconfirmed))
            else:
                done = [delivery_tag] if delivery_tag in self._unconfirmed else []
            keys = [self._unconfirmed.pop(seq) for seq in done]
        if not ok and self.on_nack is not None:
            for key in keys:
                self.on_nack(key)

    def tick(self) -> None:
        if not self.heartbeat or self.closed:
            return
        now = time.monotonic()
        if now - self.last_recv > 2 * self.heartbeat:
            self._fail()
            raise ConnectionLost(
                f"no data from the broker for {now - self.last_recv:.1f} s (heartbeat "
                f"{self.heartbeat:g} s): connection presumed dead"
            )
        if now - self.last_sent >= self.heartbeat / 2:
            self._send(frames.heartbeat_frame())

    # -- reading, one thread at a time -----------------------------------------------------------

    def read(self, timeout: float | None) -> bool:
        if self.closed:
            raise ConnectionLost("the connection is closed")
        if self._ssl:
            return self._read_tls(timeout)
        if timeout is not None and not self._poller.poll(max(0, int(timeout * 1000 + 0.999))):
            return False
        try:
            count = self._sock.recv_into(self._chunk)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            self._fail()
            raise ConnectionLost(f"connection to the broker failed: {exc}") from exc
        return self._received(count)

    def _read_tls(self, timeout: float | None) -> bool:
        if self._sock.getblocking():
            with self._wlock:
                self._sock.setblocking(False)
        if not self._sock.pending():  # type: ignore[attr-defined]
            wait = -1 if timeout is None else max(0, int(timeout * 1000 + 0.999))
            if not self._poller.poll(wait):
                return False
        with self._wlock:
            try:
                count = self._sock.recv_into(self._chunk)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                return False  # a partial TLS record: poll again
            except OSError as exc:
                self._fail()
                raise ConnectionLost(f"connection to the broker failed: {exc}") from exc
        return self._received(count)

    def _received(self, count: int) -> bool:
        if not count:
            self._fail()
            raise ConnectionLost("the broker closed the connection")
        self.last_recv = time.monotonic()
        self._buf += self._chunk_view[:count]
        self._parse()
        return True

    def _parse(self) -> None:
        buf = self._buf
        pos, end = 0, len(buf)
        unpack = frames.FRAME_HEADER_STRUCT.unpack_from
        try:
            while end - pos >= 8:
                kind, channel, size = unpack(buf, pos)
                stop = pos + 7 + size
                if stop >= end:
                    break
                if buf[stop] != frames.FRAME_END:
                    self._fail()
                    raise ConnectionLost("malformed AMQP frame from the broker")
                payload = bytes(buf[pos + 7:stop])
                pos = stop + 1
                if kind == frames.FRAME_BODY:
                    self._on_body(payload)
                elif kind == frames.FRAME_METHOD:
                    if channel == self._aux:
                        self._on_aux(*frames.method_id(payload), payload)
                    else:
                        self._on_method(payload)
                elif kind == frames.FRAME_HEADER:
                    self._size, self._props = frames.parse_content_header(payload)
                    self._skip = self.max_body is not None and self._size > self.max_body
                    if self._size == 0:
                        self._complete(b"")
        finally:
            if pos:
                del buf[:pos]

    def _on_body(self, payload: bytes) -> None:
        if self._got == 0 and len(payload) >= self._size:
            self._complete(payload)
            return
        if not self._skip:
            self._parts.append(payload)
        self._got += len(payload)
        if self._got >= self._size:
            body = b"".join(self._parts)
            self._parts, self._got = [], 0
            self._complete(body)

    def _complete(self, body: bytes) -> None:
        method, self._method = self._method, None
        if method is None:
            return
        if method[0] == frames.BASIC_DELIVER:
            _, tag, redelivered, routing_key = method
            msg = Incoming(body, self._props, tag, redelivered, routing_key, self)
        else:
            _, code, text, routing_key = method
            msg = Incoming(body, self._props, None, False, routing_key, self)
        if self._skip:
            msg.body, msg.oversize, self._skip = b"", self._size, False
        if method[0] == frames.BASIC_DELIVER:
            self.on_message(msg)
        else:
            self.on_return(msg, code, text)

    def _on_method(self, payload: bytes) -> None:
        class_id, method_id = frames.method_id(payload)
        if class_id == frames.BASIC:
            if method_id == frames.BASIC_DELIVER:
                _, tag, redelivered, _, routing_key = frames.parse_deliver(payload)
                self._method = (frames.BASIC_DELIVER, tag, redelivered, routing_key)
            elif method_id == frames.BASIC_RETURN:
                code, text, _, routing_key = frames.parse_return(payload)
                self._method = (frames.BASIC_RETURN, code, text, routing_key)
            elif method_id == frames.BASIC_ACK:
                self._confirmed(payload, True)
            elif method_id == frames.BASIC_NACK:
                self._confirmed(payload, False)
            elif method_id == frames.BASIC_CANCEL:
                consumer, offset = frames.read_shortstr(payload, 4)
                if not payload[offset] & 1:  # the broker waits for cancel-ok
                    self._send(frames.method_frame(
                        self._ch, frames.BASIC, frames.BASIC_CANCEL_OK, frames.shortstr(consumer)))
                self.on_cancel(consumer)
        elif class_id == frames.CHANNEL and method_id == frames.CHANNEL_CLOSE:
            code, text = frames.parse_close(payload)
            self._send(frames.method_frame(self._ch, frames.CHANNEL, frames.CHANNEL_CLOSE_OK))
            self._fail()
            raise ConnectionLost(f"the broker closed the channel: {code} {text}", code=code)
        elif class_id == frames.CONNECTION:
            if method_id == frames.CONNECTION_CLOSE:
                code, text = frames.parse_close(payload)
                self._send(frames.method_frame(0, frames.CONNECTION, frames.CONNECTION_CLOSE_OK))
                self._fail()
                raise ConnectionLost(f"the broker closed the connection: {code} {text}", code=code)
            if method_id == frames.CONNECTION_BLOCKED:
                self.blocked, _ = frames.read_shortstr(payload, 4)
                logger.warning("broker blocked publishing: %s", self.blocked)
                with self._wlock:
                    keys = list(self._unconfirmed.values())
                    self._unconfirmed.clear()
                if keys and self.on_blocked is not None:
                    self.on_blocked(keys, self.blocked)
            elif method_id == frames.CONNECTION_UNBLOCKED:
                self.blocked = None
                logger.warning("broker unblocked publishing")

    # -- closing ---------------------------------------------------------------------------------

    def _fail(self) -> None:
        """Mark the link dead and wake any reader blocked on the socket."""
        if self.closed:
            return
        self.closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        if not self.closed:
            close_args = b"\x00\xc8" + frames.shortstr("bye") + b"\x00\x00\x00\x00"
            try:
                self._send(frames.method_frame(0, frames.CONNECTION, frames.CONNECTION_CLOSE, close_args))
            except ConnectionLost:
                pass
            self._fail()
        try:
            self._kombu.collect()
        except Exception:  # the socket is already gone; nothing left to release
            logger.debug("error collecting a closed connection", exc_info=True)


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

    def declare_queue(self, name: str, *, durable: bool, arguments: dict[str, Any] | None = None) -> str:
        with self._lock:
            queue = Queue(name, durable=durable, auto_delete=False, queue_arguments=arguments,
                          channel=self._channel)
            queue.declare()
            return name

    def reply_queue(self) -> str:
        with self._lock:
            queue = Queue("", exclusive=True, auto_delete=True, channel=self._channel)
            queue.declare()
            consumer = Consumer(self._channel, [queue], no_ack=True, on_message=self._deliver,
                                accept=None)
            consumer.consume()
            self._consumers[str(queue.name)] = consumer
            return str(queue.name)

    def consume(self, queue: str, *, prefetch: int) -> str:
        with self._lock:
            consumer = Consumer(self._channel, [Queue(queue, no_declare=True)], no_ack=False,
                                on_message=self._deliver, prefetch_count=prefetch, accept=None)
            consumer.consume()
            tag = str(consumer.queues[0].name)
            self._consumers[tag] = consumer
            return tag

    def broadcast_queue(self, exchange: str) -> str:
        with self._lock:
            fanout = Exchange(exchange, "fanout", durable=True, auto_delete=False)
            queue = Queue(f"{exchange}.{uuid.uuid4().hex}", fanout, exclusive=True,
                          auto_delete=True, channel=self._channel)
            queue.declare()
            return str(queue.name)

    def declare_fanout(self, exchange: str) -> None:
        with self._lock:
            Exchange(exchange, "fanout", durable=True, auto_delete=False)(self._channel).declare()

    def cancel(self, consumer_tag: str) -> None:
        with self._lock:
            consumer = self._consumers.pop(consumer_tag, None)
            if consumer is not None:
                consumer.cancel()

    def _deliver(self, message: Any) -> None:
        info = message.delivery_info or {}
        props = dict(message.properties)
        props["content_type"] = message.content_type
        props["headers"] = message.headers
        tag = message.delivery_tag
        if tag is not None:
            self._messages[tag] = message
        body = message.body if isinstance(message.body, bytes) else bytes(message.body, "utf-8")
        msg = Incoming(body, props, tag, bool(info.get("redelivered")),
                       str(info.get("routing_key", "")), self)
        if self.max_body is not None and len(body) > self.max_body:
            msg.body, msg.oversize = b"", len(body)
        self.on_message(msg)

    def inspect_queue(self, queue: str, on_info: OnQueueInfo) -> None:
        with self._lock:
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
        with self._lock:
            if self.closed:
                raise ConnectionLost("the connection is closed")
            if mandatory and not exchange and not self._queue_exists(routing_key):
                self.on_return(Incoming(body, props, None, False, routing_key, self), 312, "NO_ROUTE")
            else:
                extra = {k: v for k, v in props.items()
                         if k not in ("content_type", "headers", "expiration") and v is not None}
                expiration = props.get("expiration")
                try:
                    self._producer.publish(
                        body, routing_key=routing_key, exchange=exchange,
                        content_type=props.get("content_type"), content_encoding="binary",
                        headers=props.get("headers") or {},
                        expiration=int(expiration) / 1000 if expiration else None,
                        retry=False, **extra,
                    )
                except self._conn.connection_errors as exc:
                    self.closed = True
                    raise ConnectionLost(f"cannot publish: {exc}") from exc
            if ack is not None:
                self.ack(ack)

    def ack(self, delivery_tag: int) -> None:
        with self._lock:
            message = self._messages.pop(delivery_tag, None)
            if message is not None and not self.closed:
                message.ack()

    def reject(self, delivery_tag: int, *, requeue: bool) -> None:
        with self._lock:
            message = self._messages.pop(delivery_tag, None)
            if message is not None and not self.closed:
                message.reject(requeue=requeue)

    def read(self, timeout: float | None) -> bool:
        if self.closed:
            raise ConnectionLost("the connection is closed")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = self._SLICE if deadline is None else min(self._SLICE, deadline - time.monotonic())
            with self._lock:
                if self.closed:
                    raise ConnectionLost("the connection is closed")
                try:
                    self._conn.drain_events(timeout=max(remaining, 0))
                    return True
                except TimeoutError:
                    pass
                except self._conn.connection_errors as exc:
                    self.closed = True
                    raise ConnectionLost(f"connection to the broker failed: {exc}") from exc
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0)  # let a publisher take the lock

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            try:
                self._conn.release()
            except Exception:
                logger.debug("error releasing a kombu connection", exc_info=True)
