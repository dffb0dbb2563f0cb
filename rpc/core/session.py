"""One AMQP connection's consuming channel as a state machine, with no I/O.

Bytes in, callbacks out: :meth:`Session.receive` takes whatever the socket gave, parses every
complete frame (:mod:`rpc.core.frames`) and calls back with deliveries, returned messages,
refused publishes, cancelled consumers and queue inspections. It raises
:class:`~rpc.core.errors.ConnectionLost` when the broker closes the channel or the connection;
what the broker expects in answer (close-ok, cancel-ok) waits in :meth:`Session.data_to_send`.

Commands in, bytes out: :meth:`Session.publish`, :meth:`Session.ack`, :meth:`Session.reject`,
:meth:`Session.cancel`, :meth:`Session.declare_fanout`, :meth:`Session.inspect_queue` and
:meth:`Session.close` return the bytes to write. :meth:`Session.published` records a publish as
written, for publisher confirms. :class:`Heartbeat` decides, given the time, when a heartbeat is
due and when a silent broker counts as gone.

A driver owns the socket: the blocking :class:`rpc.transport.amqp.AMQPLink` and the asyncio
:mod:`rpc.transport.aio`. Threads: :meth:`~Session.receive` and :meth:`~Session.data_to_send` run
on one thread at a time (the reader). Commands may run on other threads: the encoding ones
(:meth:`~Session.publish`, :meth:`~Session.ack`, ...) anywhere, while :meth:`~Session.published`
and :meth:`~Session.inspect_queue`, which change state, run under the driver's write lock, in the
same hold as the write of their bytes, so the wire carries them in the order the session counted
them. What the reader and the commands both change, the unconfirmed publishes and the queue
inspections waiting for an answer, changes in single ``dict`` and ``deque`` operations, each
atomic under the GIL.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar

from . import frames
from .errors import BrokerBlocked, ConnectionLost
from .frames import (
    BASIC,
    BASIC_ACK,
    BASIC_CANCEL,
    BASIC_DELIVER,
    BASIC_NACK,
    BASIC_RETURN,
    CHANNEL,
    CHANNEL_CLOSE,
    CONNECTION,
    CONNECTION_BLOCKED,
    CONNECTION_CLOSE,
    CONNECTION_CLOSE_OK,
    CONNECTION_UNBLOCKED,
    QUEUE,
    QUEUE_DECLARE_OK,
    method_key,
)

logger = logging.getLogger(__name__)

#: The link a message came through (the session's owner): acks go back through it.
LinkT = TypeVar("LinkT")
T = TypeVar("T")

#: Why a connection whose broker sent a frame that cannot be read is lost.
MALFORMED = "malformed AMQP frame from the broker"

_DELIVER = method_key(BASIC, BASIC_DELIVER)
_RETURN = method_key(BASIC, BASIC_RETURN)
_ACK = method_key(BASIC, BASIC_ACK)
_NACK = method_key(BASIC, BASIC_NACK)
_CANCEL = method_key(BASIC, BASIC_CANCEL)
_CHANNEL_CLOSE = method_key(CHANNEL, CHANNEL_CLOSE)
_CONNECTION_CLOSE = method_key(CONNECTION, CONNECTION_CLOSE)
_CONNECTION_CLOSE_OK = method_key(CONNECTION, CONNECTION_CLOSE_OK)
_BLOCKED = method_key(CONNECTION, CONNECTION_BLOCKED)
_UNBLOCKED = method_key(CONNECTION, CONNECTION_UNBLOCKED)
_DECLARE_OK = method_key(QUEUE, QUEUE_DECLARE_OK)


def _parsed(parse: Callable[..., T], payload: bytes, *args: Any) -> T:
    """``parse(payload, *args)``: the arguments of a method read off the fast path.

    Raises:
        ConnectionLost: the payload is too short for the arguments it should hold.
    """
    try:
        return parse(payload, *args)
    except (struct.error, IndexError):
        raise ConnectionLost(MALFORMED) from None


class Incoming(Generic[LinkT]):
    """One message read from the broker: body, AMQP properties and delivery facts."""

    __slots__ = ("body", "props", "delivery_tag", "redelivered", "routing_key", "link", "oversize")

    def __init__(
        self,
        body: bytes,
        props: dict[str, Any],
        delivery_tag: int | None,
        redelivered: bool,
        routing_key: str,
        link: LinkT,
        oversize: int = 0,
    ) -> None:
        self.body = body
        self.props = props
        self.delivery_tag = delivery_tag
        self.redelivered = redelivered
        self.routing_key = routing_key
        #: The link that read it: acknowledgements must go back through the same channel.
        self.link = link
        #: The size of a body over the link's limit, which was dropped unread (0 otherwise).
        self.oversize = oversize

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


#: Hears of a queue inspection: its counts, or None when there is no such queue.
OnQueueInfo = Callable[[QueueInfo | None], None]


class Heartbeat:
    """When to send a heartbeat, and when a silent broker counts as gone; the caller tells the time.

    The driver sets :attr:`last_sent` and :attr:`last_recv` as it writes and reads. A heartbeat
    is due half an interval after the last write; the broker is presumed dead after two
    intervals without a byte from it (RabbitMQ sends one every half interval).
    """

    __slots__ = ("interval", "last_sent", "last_recv", "_last_tick")

    def __init__(self, interval: float, now: float) -> None:
        self.interval = interval
        self.last_sent = now
        self.last_recv = now
        self._last_tick = now

    def check(self, now: float) -> bool:
        """Whether to send a heartbeat now.

        Raises:
            ConnectionLost: nothing came from the broker for two intervals.
        """
        silent = now - self.last_recv
        if silent > 2 * self.interval:
            raise ConnectionLost(
                f"no data from the broker for {silent:.1f} s (heartbeat "
                f"{self.interval:g} s): connection presumed dead"
            )
        return now - self.last_sent >= self.interval / 2

    def next_check(self, now: float) -> float:
        """Seconds from ``now`` until :meth:`check` may next have something to do."""
        due = min(self.last_sent + self.interval / 2, self.last_recv + 2 * self.interval)
        return max(due - now, self.interval / 20)

    def tick(self, now: float, *, received: bool, sent: bool) -> tuple[bool, float]:
        """For a driver that notes only whether anything came or went since its last tick:
        whether to send a heartbeat now (it counts as sent), and the seconds to the next tick.

        A write since the last tick counts as made at the last tick, so a heartbeat is never
        late; a read counts as made now.

        Raises:
            ConnectionLost: nothing came from the broker for two intervals.
        """
        if received:
            self.last_recv = now
        if sent:
            self.last_sent = max(self.last_sent, self._last_tick)
        self._last_tick = now
        due = self.check(now)
        if due:
            self.last_sent = now
        return due, min(self.next_check(now), self.interval / 4)


class Session(Generic[LinkT]):
    """The consuming channel of one AMQP connection and its queue-inspection channel.

    Example::

        session = Session(link, channel=1, aux_channels=(2, 3), frame_max=131072,
                          on_message=handle, on_return=returned, on_cancel=cancelled)
        data = session.publish("calc", body, props, mandatory=True)
        session.published(track=call_id)
        sock.sendall(data)
        if session.receive(sock.recv(65536)):    # calls handle(Incoming) per delivery
            sock.sendall(session.data_to_send())  # what the broker is owed (close-ok, ...)

    Args:
        owner: the link each :class:`Incoming` names, through which it is acknowledged.
        channel: the channel py-amqp opened, consuming and publishing on it.
        aux_channels: two free channel numbers, taken in turn for queue inspections: the
            broker closes the channel of a passive declare of a missing queue, and the next
            inspection opens the other one.
        frame_max: the connection's negotiated frame size; larger bodies are split.
        on_message: hears of each delivery.
        on_return: hears of each returned (unroutable mandatory) publish, with the reply code
            and text.
        on_cancel: hears of the broker cancelling a consumer (its queue was deleted), with the
            consumer tag; cancel-ok is sent for it.
        max_body: bodies larger than this are dropped as they arrive and delivered empty, with
            ``oversize`` set to their size. None keeps every body.
    """

    def __init__(
        self,
        owner: LinkT,
        *,
        channel: int,
        aux_channels: tuple[int, int],
        frame_max: int,
        on_message: Callable[[Incoming[LinkT]], None],
        on_return: Callable[[Incoming[LinkT], int, str], None],
        on_cancel: Callable[[str], None],
        max_body: int | None = None,
    ) -> None:
        self.owner = owner
        self.channel = channel
        self.frame_max = frame_max
        self.on_message = on_message
        self.on_return = on_return
        self.on_cancel = on_cancel
        self.max_body = max_body
        #: The reason the broker gave for blocking publishers (a resource alarm), or None.
        self.blocked: str | None = None
        #: Set once the broker answered :meth:`close`: it has handled all that was written.
        self.closed_ok = False
        # Publisher confirms: the sequence number of each tracked publish -> its key.
        self.confirming = False
        self.on_nack: Callable[[Any], None] | None = None
        self.on_blocked: Callable[[list[Any], str], None] | None = None
        self._seq = 0
        self._unconfirmed: dict[int, Any] = {}
        # Queue inspections: the generation of the inspection channel (a closed one is never
        # reopened under the same number at once), the one opened, and those waiting for an
        # answer with the generation their declare went to.
        self._aux_channels = aux_channels
        self._aux_gen = 0
        self._aux_opened = -1
        self._inspecting: deque[tuple[int, OnQueueInfo]] = deque()
        self._out: list[bytes] = []
        # Parser state between calls: an incomplete frame, and the message being assembled.
        self._rest = b""
        self._state = 0  # 0: no message; 1: a method read, its header next; 2: its body next
        self._tag: int | None = None
        self._redelivered = False
        self._key = ""
        self._returned: tuple[int, str] | None = None
        self._props: dict[str, Any] = {}
        self._size = 0
        self._parts: list[bytes] = []
        self._got = 0
        self._skip = False

    # -- bytes in ----------------------------------------------------------------------------

    def receive(self, data: bytes | bytearray | memoryview) -> bool:
        """Parse ``data`` (more of the stream) and call back for what completes in it.

        Returns whether the broker is owed an answer (:meth:`data_to_send` has bytes).

        Raises:
            ConnectionLost: the broker closed the channel or the connection (the answer it
                expects is in :meth:`data_to_send`), or sent a malformed frame.
        """
        if self._rest:
            buf = self._rest + data
        elif isinstance(data, bytes):
            buf = data
        else:
            buf = bytes(data)
        end = len(buf)
        pos = 0
        unpack_header = frames.FRAME_HEADER_STRUCT.unpack_from
        unpack_key = frames.METHOD_KEY.unpack_from
        unpack_tag = frames.DELIVERY_TAG.unpack_from
        unpack_size = frames.BODY_SIZE.unpack_from
        state = self._state
        try:
            while end - pos >= 8:
                kind, channel, size = unpack_header(buf, pos)
                stop = pos + 7 + size
                if stop >= end:
                    break
                if buf[stop] != 0xCE:
                    raise ConnectionLost(MALFORMED)
                start = pos + 7
                pos = stop + 1
                if kind == 3:  # a body frame
                    if state != 2:
                        continue
                    if self._got == 0 and size >= self._size:  # the whole body: inline
                        state = 0
                        if self._skip:
                            self._complete(b"")
                            continue
                        msg = Incoming(buf[start:stop], self._props, self._tag, self._redelivered,
                                       self._key, self.owner)
                        if self._returned is None:
                            self.on_message(msg)
                        else:
                            self.on_return(msg, *self._returned)
                        continue
                    self._got += size
                    if not self._skip:
                        self._parts.append(buf[start:stop])
                    if self._got >= self._size:
                        state = 0
                        body = b"".join(self._parts)
                        self._parts = []
                        self._complete(body)
                elif kind == 1:  # a method frame
                    if size < 4:
                        raise ConnectionLost(MALFORMED)
                    (key,) = unpack_key(buf, start)
                    if key == _DELIVER and channel == self.channel:
                        offset = start + 5 + buf[start + 4]  # past the consumer tag
                        if offset + 10 > stop:  # the tag, the redelivered bit, the exchange's length
                            raise ConnectionLost(MALFORMED)
                        self._tag, bits = unpack_tag(buf, offset)
                        self._redelivered = (bits & 1) == 1
                        offset += 10 + buf[offset + 9]  # past the exchange
                        if offset >= stop:
                            raise ConnectionLost(MALFORMED)
                        self._key = buf[offset + 1:offset + 1 + buf[offset]].decode("utf-8", "replace")
                        self._returned = None
                        state = 1
                    elif key == _ACK:
                        if size < 13:
                            raise ConnectionLost(MALFORMED)
                        tag, bits = unpack_tag(buf, start + 4)
                        if bits & 1:
                            self._confirmed(tag, True, True)
                        elif self._unconfirmed:
                            self._unconfirmed.pop(tag, None)
                    elif key == _RETURN and channel == self.channel:
                        code, text, _, self._key = _parsed(frames.parse_return, buf[start:stop])
                        self._returned = (code, text)
                        self._tag, self._redelivered = None, False
                        state = 1
                    else:
                        self._on_method(channel, key, buf[start:stop])
                elif kind == 2:  # a content header
                    if state != 1:
                        continue
                    if size < 14:  # class, weight, body size and property flags
                        raise ConnectionLost(MALFORMED)
                    (body_size,) = unpack_size(buf, start + 4)
                    self._size = body_size
                    try:
                        self._props = frames.decode_properties(buf, start + 12)
                    except Exception:  # the broker checks tables; be safe anyway
                        logger.warning("undecodable message properties dropped", exc_info=True)
                        self._props = {}
                    self._skip = self.max_body is not None and body_size > self.max_body
                    if body_size == 0:
                        state = 0
                        self._complete(b"")
                    else:
                        state = 2
                        self._got = 0
                # a heartbeat (kind 8) needs nothing: it arrived, which the driver notes
            return bool(self._out)
        finally:
            self._state = state
            self._rest = buf[pos:] if pos < end else b""

    def _complete(self, body: bytes) -> None:
        msg = Incoming(body, self._props, self._tag, self._redelivered, self._key, self.owner,
                       self._size if self._skip else 0)
        if self._returned is None:
            self.on_message(msg)
        else:
            self.on_return(msg, *self._returned)

    def _on_method(self, channel: int, key: int, payload: bytes) -> None:
        """Any method but a delivery, a return or a single confirm (read inline)."""
        if channel != self.channel and channel != 0:
            self._on_aux(channel, key, payload)
        elif key == _NACK:
            tag, multiple = _parsed(frames.parse_confirm, payload)
            self._confirmed(tag, multiple, False)
        elif key == _CANCEL:
            consumer, offset = _parsed(frames.read_shortstr, payload, 4)
            if offset >= len(payload):
                raise ConnectionLost(MALFORMED)
            if not payload[offset] & 1:  # the broker waits for cancel-ok
                self._out.append(frames.cancel_ok_frame(self.channel, consumer))
            self.on_cancel(consumer)
        elif key == _CHANNEL_CLOSE:
            code, text = _parsed(frames.parse_close, payload)
            self._out.append(frames.close_ok_frame(self.channel))
            raise ConnectionLost(f"the broker closed the channel: {code} {text}", code=code)
        elif key == _CONNECTION_CLOSE:
            code, text = _parsed(frames.parse_close, payload)
            self._out.append(frames.close_ok_frame(0))
            raise ConnectionLost(f"the broker closed the connection: {code} {text}", code=code)
        elif key == _CONNECTION_CLOSE_OK:
            self.closed_ok = True
            raise ConnectionLost("the connection is closed")
        elif key == _BLOCKED:
            self.blocked, _ = _parsed(frames.read_shortstr, payload, 4)
            logger.warning("broker blocked publishing: %s", self.blocked)
            unconfirmed = self._unconfirmed
            keys = []
            while unconfirmed:  # popped one by one: a publisher may be adding one
                keys.append(unconfirmed.pop(next(iter(unconfirmed))))
            if keys and self.on_blocked is not None:
                self.on_blocked(keys, self.blocked)
        elif key == _UNBLOCKED:
            self.blocked = None
            logger.warning("broker unblocked publishing")
        # anything else (cancel-ok, qos-ok, ...) answers a command nothing waits on

    def _confirmed(self, tag: int, multiple: bool, ok: bool) -> None:
        unconfirmed = self._unconfirmed
        if multiple:  # sequence numbers go in in increasing order: stop at the first above
            keys = []
            # list() copies the keys in one step: a publisher on another thread may add one
            # meanwhile, which would break an iteration over the dict itself.
            for seq in list(unconfirmed):
                if seq > tag:
                    break
                key = unconfirmed.pop(seq, None)
                if key is not None:
                    keys.append(key)
        else:
            key = unconfirmed.pop(tag, None)
            keys = [] if key is None else [key]
        if not ok and self.on_nack is not None:
            for key in keys:
                self.on_nack(key)

    def _on_aux(self, channel: int, key: int, payload: bytes) -> None:
        """A method on the inspection channel: a declare's answer, or the close of a missing queue."""
        gen = self._aux_gen
        if channel != self._aux_channels[gen & 1]:
            return  # an earlier generation's channel: nothing there waits
        waiting = self._inspecting
        if key == _DECLARE_OK:
            _, messages, consumers = _parsed(frames.parse_declare_ok, payload)
            while waiting:
                asked_gen, on_info = waiting.popleft()
                if asked_gen == gen:
                    on_info(QueueInfo(messages, consumers))
                    return
                # asked on a channel that closed as it asked: the broker dropped that declare
                on_info(QueueInfo(0, None))
        elif key == _CHANNEL_CLOSE:
            code, text = _parsed(frames.parse_close, payload)
            self._out.append(frames.close_ok_frame(channel))
            self._aux_gen = gen + 1  # the next inspection opens the other channel
            answered = []
            while waiting and waiting[0][0] <= gen:  # only this thread takes from the left
                answered.append(waiting.popleft()[1])
            if code != 404:
                logger.warning("queue inspection failed: %s %s", code, text)
            for i, on_info in enumerate(answered):
                # The first asked for the missing queue; the broker dropped the ones after it.
                on_info(None if i == 0 and code == 404 else QueueInfo(0, None))

    def data_to_send(self) -> bytes:
        """The answers :meth:`receive` owes the broker (close-ok, cancel-ok), to write next."""
        if not self._out:
            return b""
        out = b"".join(self._out)
        self._out.clear()
        return out

    # -- commands out ------------------------------------------------------------------------

    def publish(
        self, routing_key: str, body: bytes, props: dict[str, Any], *,
        mandatory: bool = False, ack: int | None = None, exchange: str = "",
    ) -> bytes:
        """A ``basic.publish`` (and the ack of delivery ``ack`` after it, in the same write).

        Raises:
            BrokerBlocked: the broker has blocked publishing.
            ValueError: the routing key, the exchange or a property is over 255 bytes.
        """
        if self.blocked is not None:
            raise BrokerBlocked(f"the broker blocks publishing: {self.blocked}")
        return frames.publish_frames(self.channel, routing_key, body, props, mandatory=mandatory,
                                     frame_max=self.frame_max, exchange=exchange, ack=ack)

    def published(self, track: Any = None) -> None:
        """Count a publish about to be written; under confirms, ``track`` names it to
        ``on_nack`` and ``on_blocked``. Call it in the order the publishes go on the wire, and
        before the write: a reader on another thread may get the broker's confirm before the
        write returns, and a confirm of a publish not yet counted is lost."""
        if self.confirming:
            self._seq += 1
            if track is not None:
                self._unconfirmed[self._seq] = track

    @property
    def between_messages(self) -> bool:
        """Whether all bytes received so far made whole messages: nothing is half-read."""
        return not self._rest and self._state == 0

    @property
    def awaiting_confirms(self) -> bool:
        """Whether a tracked publish still waits for the broker's ack or nack."""
        return bool(self._unconfirmed)

    def enable_confirms(
        self, on_nack: Callable[[Any], None],
        on_blocked: Callable[[list[Any], str], None] | None = None,
    ) -> None:
        """Track publishes from now on: the broker has confirmed ``confirm.select``.

        Nothing waits for a confirm: acks retire the tracking entries, ``on_nack(key)`` hears of
        each refused publish, and ``on_blocked(keys, reason)`` of those still unconfirmed when
        the broker blocks publishing (it sends ``connection.blocked`` only after a publish).
        """
        self.on_nack = on_nack
        self.on_blocked = on_blocked
        self.confirming = True

    def ack(self, delivery_tag: int) -> bytes:
        """A ``basic.ack`` of one delivery."""
        return frames.ack_frame(self.channel, delivery_tag)

    def reject(self, delivery_tag: int, *, requeue: bool) -> bytes:
        """A ``basic.reject`` of one delivery."""
        return frames.reject_frame(self.channel, delivery_tag, requeue)

    def cancel(self, consumer_tag: str) -> bytes:
        """A ``basic.cancel``: deliveries already sent still arrive."""
        return frames.cancel_frame(self.channel, consumer_tag)

    def declare_fanout(self, exchange: str) -> bytes:
        """A no-wait declare of the durable fanout ``exchange``."""
        return frames.declare_fanout_frame(self.channel, exchange)

    def inspect_queue(self, queue: str, on_info: OnQueueInfo) -> bytes:
        """A passive declare of ``queue`` (opening the inspection channel first if needed);
        :meth:`receive` calls ``on_info`` with the answer, None for a missing queue.

        Write the bytes before the next command: the answers come back in their order.
        """
        gen = self._aux_gen
        channel = self._aux_channels[gen & 1]
        data = frames.passive_declare_frame(channel, queue)
        if self._aux_opened != gen:
            data = frames.channel_open_frame(channel) + data
            self._aux_opened = gen
        self._inspecting.append((gen, on_info))
        return data

    def forget_inspection(self) -> None:
        """Forget the inspection :meth:`inspect_queue` just added, whose bytes were not written."""
        if self._inspecting:
            self._inspecting.pop()

    def close(self) -> bytes:
        """A ``connection.close``. The broker handles everything written before it, then
        answers close-ok (:attr:`closed_ok`): a driver that closes its socket sooner may lose
        the last publishes and acknowledgements."""
        return frames.close_frame(0)

    @staticmethod
    def heartbeat() -> bytes:
        """A heartbeat frame."""
        return frames.heartbeat_frame()
