"""The blocking link to RabbitMQ: py-amqp connects and declares, then this drives the socket.

It owns the socket, the poll, the write lock and TLS; the protocol is a
:class:`rpc.core.session.Session`, which turns what :meth:`AMQPLink.read` receives into
callbacks and each command into the bytes to write. A publish is one ``send``; a burst of
deliveries one ``recv``.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from kombu.connection import Connection

from ..core import protocol
from ..core.errors import ConnectionLost
from ..core.frames import CONFIRM_MARK
from ..core.protocol import DIRECT_REPLY_TO
from ..core.session import Heartbeat, Session
from ..core.session import Incoming as _Incoming
from .link import CAN_MARK, Incoming, Link, OnCancel, OnMessage, OnQueueInfo, OnReturn, Reply

logger = logging.getLogger(__name__)

#: Seconds a write may wait for the broker to read before the connection counts as dead.
SEND_TIMEOUT = 10.0
#: Seconds :meth:`AMQPLink.close` waits for the broker's close-ok.
CLOSE_WAIT = 2.0
#: The shortest receive timeout a read blocks for; a shorter read polls.
_SHORTEST_STEP = 0.01
#: While the confirm mark (frames.CONFIRM_MARK) is set, the longest a read blocks when a confirm
#: is awaited: a lone nack, which the mark holds back, is read this late at most...
CONFIRM_STEP = 0.05
#: ... and when none is: a lone heartbeat is read this late at most.
_MARK_STEP = 1.0


def _recv_step(timeout: float) -> float:
    """The receive timeout a read of ``timeout`` s blocks for: the longest step within it
    (few steps, so the socket option rarely changes)."""
    return 1.0 if timeout >= 1.0 else 0.25 if timeout >= 0.25 else 0.05 if timeout >= 0.05 \
        else _SHORTEST_STEP


class Detached(NamedTuple):
    """What :meth:`AMQPLink.detach` hands to another driver."""

    sock: socket.socket
    #: The session, whose owner the new driver becomes.
    session: Session[Any]
    heartbeat: float
    connection: Connection


class AMQPLink(Link):
    """RabbitMQ through py-amqp, with the per-call frames written and parsed by a Session."""

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
        self._sock: socket.socket = self._amqp.transport.sock
        # OpenSSL forbids reading and writing one TLS connection from two threads at once: once
        # our reader takes over from py-amqp, a TLS socket is non-blocking and every read and
        # write holds _wlock (a plain socket is safe to read and write at once).
        self._ssl = isinstance(self._sock, ssl.SSLSocket)
        if not self._ssl:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                                  struct.pack("ll", int(SEND_TIMEOUT), 0))
        self.heartbeat = float(self._amqp.heartbeat or 0)
        # Queue inspections take two channels of their own, since the broker closes the channel
        # of a passive declare of a missing queue.
        aux = max(self._amqp.channels or {0: None}) + 1
        self.session: Session[Link] = Session(
            self, channel=self._channel.channel_id, aux_channels=(aux, aux + 1),
            frame_max=int(self._amqp.frame_max), on_message=on_message,
            on_return=self.on_return, on_cancel=self.on_cancel, max_body=max_body,
        )
        self._wlock = threading.Lock()
        # Held by the thread reading the socket: close() reads the broker's close-ok under it
        # when no other thread does.
        self._rlock = threading.Lock()
        self._reader: int | None = None
        self._poller = select.poll()
        self._poller.register(self._sock, select.POLLIN | select.POLLERR | select.POLLHUP)
        self._chunk = bytearray(self._CHUNK)
        self._chunk_view = memoryview(self._chunk)
        self._hb = Heartbeat(self.heartbeat, time.monotonic())
        self._tick_at = 0.0  # before this (monotonic), tick() has nothing to do
        self._recv_step = 0.0  # the socket's receive timeout; 0 is none
        self._marking = False  # in confirm mode, the mark follows the parser (_set_mark)
        self._mark = 1  # the socket's receive low-water mark
        self._detached = False

    @property
    def blocked(self) -> str | None:
        return self.session.blocked

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
        self.session.enable_confirms(on_nack, on_blocked)
        self._marking = CAN_MARK and not self._ssl

    def consume(self, queue: str, *, prefetch: int) -> str:
        self._channel.basic_qos(0, prefetch, False)
        return str(self._channel.basic_consume(queue, no_ack=False, callback=self._from_amqp))

    def broadcast_queue(self, exchange: str) -> str:
        name = protocol.broadcast_queue(exchange)
        self._channel.exchange_declare(exchange, "fanout", durable=True, auto_delete=False)
        self._channel.queue_declare(name, exclusive=True, auto_delete=True)
        self._channel.queue_bind(name, exchange)
        return name

    def _from_amqp(self, message: Any) -> None:
        """A delivery py-amqp read during setup (the session parses every later one)."""
        props = dict(message.properties)
        if "application_headers" in props:
            props["headers"] = props.pop("application_headers")
        info = message.delivery_info
        msg: Incoming = _Incoming(
            bytes(message.body), props, info.get("delivery_tag"), bool(info.get("redelivered")),
            str(info.get("routing_key", "")), self.session.owner)
        self.session.on_message(msg)

    def detach(self) -> Detached:
        """Hand the socket, the session and the connection to another driver (the asyncio link).

        This link is closed from then on; the new driver becomes the session's owner.
        """
        with self._wlock:
            self._detached = self.closed = True
            self._poller.unregister(self._sock)
        self._stop_marking()  # the new driver's reads are its own: every byte wakes them again
        return Detached(self._sock, self.session, self.heartbeat, self._kombu)

    def abandon(self) -> None:
        # Only this process's descriptor closes (no shutdown): the parent's connection lives on.
        self._detached = self.closed = True
        try:
            self._sock.close()
        except OSError:
            pass

    # -- writing, from any thread ----------------------------------------------------------------

    def declare_fanout(self, exchange: str) -> None:
        self._send(self.session.declare_fanout(exchange))

    def cancel(self, consumer_tag: str) -> None:
        self._send(self.session.cancel(consumer_tag))

    def inspect_queue(self, queue: str, on_info: OnQueueInfo) -> None:
        with self._wlock:
            self._check_open()
            data = self.session.inspect_queue(queue, on_info)
            try:
                self._write(data)
            except ConnectionLost:
                self.session.forget_inspection()
                raise

    def publish(
        self, routing_key: str, body: bytes, props: dict[str, Any], *,
        mandatory: bool = False, ack: int | None = None, exchange: str = "",
        track: Any = None,
    ) -> None:
        session = self.session
        data = session.publish(routing_key, body, props, mandatory=mandatory, ack=ack,
                               exchange=exchange)
        with self._wlock:
            if self.closed:
                raise ConnectionLost("the connection is closed")
            # Counted before it is written: the reader may get its confirm before the write
            # returns, and a confirm of a publish not yet counted would be lost.
            session.published(track)
            self._write(data)

    def publish_replies(self, replies: list[Reply]) -> None:
        session = self.session
        data = b"".join([session.publish(routing_key, body, props, ack=ack)
                         for routing_key, body, props, ack in replies])
        with self._wlock:
            if self.closed:
                raise ConnectionLost("the connection is closed")
            for _ in replies:
                session.published()
            self._write(data)

    def ack(self, delivery_tag: int) -> None:
        self._send(self.session.ack(delivery_tag))

    def reject(self, delivery_tag: int, *, requeue: bool) -> None:
        self._send(self.session.reject(delivery_tag, requeue=requeue))

    def _send(self, data: bytes) -> None:
        with self._wlock:
            if self.closed:
                raise ConnectionLost("the connection is closed")
            self._write(data)

    def _check_open(self) -> None:
        if self.closed:
            raise ConnectionLost("the connection is closed")

    def _write(self, data: bytes) -> None:
        """Write all of ``data``; the caller holds the write lock."""
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
        self._hb.last_sent = time.monotonic()

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

    def tick(self) -> None:
        if not self.heartbeat or self.closed:
            return
        now = time.monotonic()
        if now < self._tick_at:  # the heartbeat's times only move later: nothing is due yet
            return
        try:
            due = self._hb.check(now)
        except ConnectionLost:
            self._fail()
            raise
        if due:
            self._send(self.session.heartbeat())
        self._tick_at = now + self._hb.next_check(now)

    # -- reading, one thread at a time -----------------------------------------------------------

    def read(self, timeout: float | None) -> bool:
        if self.closed:
            raise ConnectionLost("the connection is closed")
        with self._rlock:
            self._reader = threading.get_ident()
            try:
                return self._read(timeout)
            finally:
                self._reader = None

    def _read(self, timeout: float | None) -> bool:
        if self._ssl:
            return self._read_tls(timeout)
        # One syscall per read: a blocking recv bounded by the socket's receive timeout (set only
        # when the step changes), rather than a poll and a recv. A step is at most the timeout
        # asked for, so a read may return False early, never late.
        if self._marking:
            session = self.session
            if session.between_messages:
                if self._mark != CONFIRM_MARK:
                    self._set_mark(CONFIRM_MARK)
                cap = CONFIRM_STEP if session.awaiting_confirms else _MARK_STEP
                if timeout is None or timeout > cap:
                    timeout = cap
            elif self._mark != 1:
                # Within a message: the last segment of a large one may be shorter than the mark.
                self._set_mark(1)
        try:
            if timeout is None:
                if self._recv_step:
                    self._set_recv_step(0.0)  # no limit
                count = self._sock.recv_into(self._chunk)
            elif timeout <= 0:
                count = self._sock.recv_into(self._chunk, 0, socket.MSG_DONTWAIT)
            elif timeout >= _SHORTEST_STEP:
                # a read of the current step (a loop's usual tick) is that step again
                step = timeout if timeout == self._recv_step else _recv_step(timeout)
                if step != self._recv_step:
                    self._set_recv_step(step)
                count = self._sock.recv_into(self._chunk)
            elif self._poller.poll(max(1, int(timeout * 1000 + 0.999))):
                count = self._sock.recv_into(self._chunk, 0, socket.MSG_DONTWAIT)
            else:
                return False
        except (BlockingIOError, InterruptedError):  # the step passed with nothing to read
            return False
        except OSError as exc:
            self._fail()
            raise ConnectionLost(f"connection to the broker failed: {exc}") from exc
        return self._received(count)

    def _set_recv_step(self, seconds: float) -> None:
        whole = int(seconds)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                              struct.pack("ll", whole, int((seconds - whole) * 1_000_000)))
        self._recv_step = seconds

    def _set_mark(self, mark: int) -> None:
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, mark)
        self._mark = mark

    def _stop_marking(self) -> None:
        self._marking = False
        if self._mark != 1:
            self._set_mark(1)

    def _read_tls(self, timeout: float | None) -> bool:
        if self._sock.getblocking():
            with self._wlock:
                self._sock.setblocking(False)
        if not (isinstance(self._sock, ssl.SSLSocket) and self._sock.pending()):
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
        self._hb.last_recv = time.monotonic()
        session = self.session
        try:
            owed = session.receive(self._chunk_view[:count])
        except ConnectionLost:
            self._answer_and_fail()
            raise
        if owed:
            self._send(session.data_to_send())
        return True

    def _answer_and_fail(self) -> None:
        """Send what the broker is owed for its close (best effort), and mark the link dead."""
        answer = self.session.data_to_send()
        if answer and not self.closed:
            with self._wlock:
                try:
                    self._write(answer)
                except ConnectionLost:
                    pass
        self._fail()

    # -- closing ---------------------------------------------------------------------------------

    def _await_close_ok(self) -> None:
        """Read until the broker's close-ok (a reader still blocked in ``recv`` may read it
        first), for at most :data:`CLOSE_WAIT` s; what else comes is dispatched as usual."""
        session = self.session
        deadline = time.monotonic() + CLOSE_WAIT
        while not session.closed_ok:
            left = deadline - time.monotonic()
            if left <= 0 or not self._rlock.acquire(timeout=left):
                return
            try:
                if not session.closed_ok:
                    self._read(min(left, 0.25))
            except ConnectionLost:  # the close-ok, or the connection's end
                return
            finally:
                self._rlock.release()

    def _fail(self) -> None:
        """Mark the link dead and wake any reader blocked on the socket."""
        if self.closed:
            return
        self.closed = True
        self._shutdown()

    def _shutdown(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        """Close the connection once the broker has handled all that was written before
        (its close-ok, up to :data:`CLOSE_WAIT` s): closing the socket sooner makes RabbitMQ
        drop the channel with the last publishes and acknowledgements it has not handled."""
        if self._detached:
            return
        if not self.closed:
            with self._wlock:
                sent = not self.closed
                if sent:
                    self._stop_marking()  # the close-ok is smaller than the mark
                    try:
                        self._write(self.session.close())
                    except ConnectionLost:
                        sent = False
                    self.closed = True  # no more writes, and other readers stop
            if sent and self._reader != threading.get_ident():
                self._await_close_ok()
            self._shutdown()
        try:
            self._kombu.collect()
        except Exception:  # the socket is already gone; nothing left to release
            logger.debug("error collecting a closed connection", exc_info=True)
