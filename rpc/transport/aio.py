"""Links driven from an asyncio event loop, with no I/O thread for RabbitMQ.

:func:`open_async_link` connects in the loop's default executor (py-amqp's handshake and the
declarations block), then drives the connection from the loop:

* RabbitMQ (an :class:`~rpc.transport.amqp.AMQPLink`): the loop takes over the socket.
  ``add_reader`` reads each burst with one ``recv_into`` into a reused buffer and feeds it to the
  link's :class:`~rpc.core.session.Session`, which calls back on the loop's thread. The writes
  of one loop pass (the publishes of every task a burst of replies woke) go out in one ``send``
  after the pass, and what the socket does not take at once waits for ``add_writer``. TLS
  sockets too. Heartbeats go out, and a silent broker is noticed, from ``call_later`` timers.
  While calls go out, the socket's low-water mark keeps a call's confirm from waking the loop
  apart from its reply (between messages only), and one timer reads what waits below it every
  :data:`MARK_CHECK` s. A task woken by a reply runs at the end of the read that brought it
  (:meth:`AsyncLink.call_after_read`), so a sequential call costs one loop pass.
* Any other transport (a :class:`~rpc.transport.kombu.KombuLink`, for ``memory://`` and
  ``redis://``): a bridge. A reader thread calls ``link.read`` and hands every callback to the
  loop with ``call_soon_threadsafe``; publishes go straight to the thread-safe kombu link.

Example::

    def connect() -> Link:                      # runs in the executor
        link = open_link(open_connection(url), on_reply, on_return)
        link.enable_confirms(on_nack, on_blocked)
        return link

    link = await open_async_link(connect, on_lost=fail_pending_calls)
    link.publish("calc", body, props, mandatory=True, track=call_id)
    ...
    await link.close()
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeAlias

from ..core import frames
from ..core.errors import ConnectionLost
from ..core.session import Heartbeat, OnQueueInfo, QueueInfo, Session
from ..core.session import Incoming as _Incoming
from .amqp import CLOSE_WAIT, CONFIRM_STEP, SEND_TIMEOUT, AMQPLink, Detached
from .link import CAN_MARK, Link

__all__ = ["AsyncIncoming", "AsyncLink", "OnLost", "QueueInfo", "open_async_link"]

logger = logging.getLogger(__name__)

#: Hears, once and on the loop, that the connection failed.
OnLost: TypeAlias = Callable[[ConnectionLost], None]

#: Seconds between the reads of what waits below the mark (a lone nack, a heartbeat) while it
#: is raised: the blocking link's bound too (``CONFIRM_STEP``).
MARK_CHECK = CONFIRM_STEP


class AsyncLink:
    """A broker connection driven by an asyncio loop; every method runs on the loop's thread and
    none blocks. Open one with :func:`open_async_link`.

    The callbacks given to the blocking link it came from (``on_message``, ``on_return``,
    ``on_cancel``, and the ``on_nack`` and ``on_blocked`` of ``enable_confirms``) run on the
    loop's thread, and each message's ``link`` is this link.
    """

    #: Whether the broker offers RabbitMQ's direct reply-to.
    direct_reply_to = False

    def __init__(self) -> None:
        #: Set once the connection failed or :meth:`close` began.
        self.closed = False
        #: The ``track`` of each publish the failed connection never wrote: the broker never
        #: got those, so they may go out again on a new connection. Read it in ``on_lost``.
        self.unwritten: list[Any] = []

    @property
    def blocked(self) -> str | None:
        """Why the broker blocks publishing (a resource alarm), or None while it does not."""
        return None

    def publish(
        self, routing_key: str, body: bytes, props: dict[str, Any], *,
        mandatory: bool = False, ack: int | None = None, exchange: str = "",
        track: Any = None, now: bool = False,
    ) -> None:
        """Publish a message; ``ack`` acknowledges that delivery in the same write.

        ``track`` names the publish to ``on_nack`` (and ``on_blocked``) under confirms. A
        publish goes out with the others of its loop pass, after the pass; ``now`` sends it
        (and those before it) at once, for a publish that has no others to wait for.

        Raises:
            BrokerBlocked: the broker has blocked publishing (a resource alarm).
            ConnectionLost: the connection failed or is closed.
        """
        raise NotImplementedError

    def call_after_read(self, callback: Callable[..., object], *args: Any,
                        context: contextvars.Context | None = None) -> None:
        """Run ``callback(*args)`` on the loop soon, as ``loop.call_soon`` does; during a read,
        as soon as the bytes read are parsed, in the same loop pass.

        A task whose reply came in that read (its future's wake-up, handed here) then makes its
        next request without waiting for the loop's next pass.
        """
        raise NotImplementedError

    def ack(self, delivery_tag: int) -> None:
        """Acknowledge a delivery."""
        raise NotImplementedError

    def reject(self, delivery_tag: int, *, requeue: bool) -> None:
        """Reject a delivery, back to its queue if ``requeue``."""
        raise NotImplementedError

    def declare_fanout(self, exchange: str) -> None:
        """Declare the durable fanout ``exchange`` (no answer is awaited)."""
        raise NotImplementedError

    def inspect_queue(self, queue: str, on_info: OnQueueInfo) -> None:
        """Ask for ``queue``'s message and consumer counts; ``on_info`` runs on the loop with
        them, or with None when there is no such queue.

        Raises:
            ConnectionLost: the connection failed or is closed.
        """
        raise NotImplementedError

    def cancel(self, consumer_tag: str) -> None:
        """Stop deliveries to ``consumer_tag`` (those already sent still arrive)."""
        raise NotImplementedError

    async def close(self) -> None:
        """Close the connection; ``on_lost`` is not called."""
        raise NotImplementedError


#: A message read through an :class:`AsyncLink`.
AsyncIncoming: TypeAlias = _Incoming[AsyncLink]


async def open_async_link(open_blocking: Callable[[], Link], *, on_lost: OnLost) -> AsyncLink:
    """Connect with ``open_blocking`` in the loop's default executor, then drive the link from
    the running loop.

    ``open_blocking`` does the blocking part: connecting, ``reply_queue()``,
    ``enable_confirms(...)``, declarations. Deliveries py-amqp reads while it runs reach the
    callbacks on the executor's thread; from the return of this coroutine on, every callback
    runs on the loop's thread, and nothing reads the connection from another thread.

    Args:
        open_blocking: returns a blocking :class:`~rpc.transport.link.Link`, made with the
            callbacks the async link will call.
        on_lost: called once, on the loop, when the connection fails (a socket error, the
            broker closing it or the channel, missed heartbeats), never by :meth:`AsyncLink.close`.

    Raises:
        whatever ``open_blocking`` raises (``rpc.ConnectionError`` when the broker is unreachable).
    """
    loop = asyncio.get_running_loop()
    opening = loop.run_in_executor(None, open_blocking)
    try:
        link = await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_close_abandoned)
        raise
    try:
        if isinstance(link, AMQPLink):
            return _SocketLink(loop, link.detach(), on_lost)
        return _BridgeLink(loop, link, on_lost)
    except BaseException:
        link.close()
        raise


def _close_abandoned(opening: asyncio.Future[Link]) -> None:
    """Close a link whose opener was cancelled while it connected."""
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


class _SocketLink(AsyncLink):
    """RabbitMQ: the loop reads and writes the socket; a Session does the protocol."""

    direct_reply_to = True
    _CHUNK = 65536

    def __init__(self, loop: asyncio.AbstractEventLoop, detached: Detached, on_lost: OnLost) -> None:
        super().__init__()
        self._loop = loop
        self._on_lost = on_lost
        self._sock = detached.sock
        self._conn = detached.connection
        #: The socket again when it is a TLS one, which may hold decrypted bytes.
        self._tls = self._sock if isinstance(self._sock, ssl.SSLSocket) else None
        # The session's messages name this link from now on.
        self._session: Session[Any] = detached.session
        self._session.owner = self
        # The messages the burst being parsed delivered: each may wake a task that publishes.
        self._delivered = 0
        # What call_after_read() was given during the read being parsed (None: no read is).
        self._after: list[tuple[Callable[..., object], tuple[Any, ...],
                                contextvars.Context | None]] | None = None
        on_message, on_return = self._session.on_message, self._session.on_return

        def delivered(msg: _Incoming[Any]) -> None:
            self._delivered += 1
            on_message(msg)

        def returned(msg: _Incoming[Any], code: int, text: str) -> None:
            self._delivered += 1
            on_return(msg, code, text)

        self._session.on_message, self._session.on_return = delivered, returned
        self._sock.setblocking(False)
        self._fd = self._sock.fileno()
        self._chunk = bytearray(self._CHUNK)
        self._view = memoryview(self._chunk)
        # This loop pass's writes, sent together by one callback after the pass, and the
        # tracks of the publishes among them.
        self._out: list[bytes] = []
        self._out_tracks: list[Any] = []
        self._sending = False  # whether that callback is scheduled
        self._wbuf = bytearray()  # what the socket has not taken yet
        self._writing = False  # whether add_writer is on
        self._read_wants_write = False  # a TLS read that must wait for the socket to be writable
        self._written = 0  # bytes the socket took, to tell a stalled broker from a slow one
        # Set while close() waits for the broker's close-ok.
        self._closing: asyncio.Future[None] | None = None
        self._stall_timer: asyncio.TimerHandle | None = None
        # Heartbeats: whether anything came and went since the last timer, and the timer.
        self._heartbeat = Heartbeat(detached.heartbeat, time.monotonic())
        self._received = self._sent = False
        self._timer: asyncio.TimerHandle | None = None
        self._can_mark = CAN_MARK and self._tls is None
        self._marked = False  # raised while tracked publishes go out: see _raise_mark
        self._mark = 1  # the socket's low-water mark now: 1 within a message
        self._tracked = False  # a tracked publish went out since the mark's last check
        self._mark_timer: asyncio.TimerHandle | None = None
        loop.add_reader(self._fd, self._on_readable)
        if detached.heartbeat:
            self._timer = loop.call_later(detached.heartbeat / 4, self._on_timer)
        if self._tls is not None:  # py-amqp's handshake may have left decrypted bytes
            loop.call_soon(self._on_readable)

    @property
    def blocked(self) -> str | None:
        return self._session.blocked

    # -- reading -----------------------------------------------------------------------------

    def _on_readable(self) -> None:
        if self.closed:
            return
        if self._wbuf and not self._writing:
            self._flush()  # a TLS write that waited for the socket to be readable
        try:
            count = self._sock.recv_into(self._chunk)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
            return
        except ssl.SSLWantWriteError:
            self._read_wants_write = True
            self._want_writable()
            return
        except OSError as exc:
            self._lose(ConnectionLost(f"connection to the broker failed: {exc}"))
            return
        if not count:
            self._lose(ConnectionLost("the broker closed the connection"))
            return
        self._received = True
        after = self._after = []
        try:
            owed = self._session.receive(self._view[:count])
        except ConnectionLost as exc:
            self._after = None
            self._answer()
            self._lose(exc)
            self._run_after(after)
            return
        except Exception:
            owed = self._parse_on()
        self._after = None
        if self._marked:
            self._set_mark(frames.CONFIRM_MARK if self._session.between_messages else 1)
        if owed:
            self._answer()
        if after:
            self._run_after(after)
        if self._delivered:
            if self._delivered > 1 and not self._sending:
                # Scheduled after the tasks the burst woke: their publishes go out with it, in
                # the next pass, and not one pass later.
                self._sending = True
                self._loop.call_soon(self._send_soon)
            self._delivered = 0
        if self._tls is not None and not self.closed and self._tls.pending():
            self._on_readable()  # TLS holds decrypted bytes the socket will not signal

    def call_after_read(self, callback: Callable[..., object], *args: Any,
                        context: contextvars.Context | None = None) -> None:
        after = self._after
        if after is None:
            self._loop.call_soon(callback, *args, context=context)
        else:
            after.append((callback, args, context))

    def _run_after(self, after: list[tuple[Callable[..., object], tuple[Any, ...],
                                           contextvars.Context | None]]) -> None:
        """Run what the read's callbacks handed to :meth:`call_after_read`, as loop handles
        would; the publishes they make go out together, in one send, when they are done."""
        sending = self._sending
        self._sending = True  # _write schedules no send of its own meanwhile
        try:
            for i, (callback, args, context) in enumerate(after):
                try:
                    if context is None:
                        callback(*args)
                    else:
                        context.run(callback, *args)
                except (SystemExit, KeyboardInterrupt):
                    for rest, rest_args, rest_context in after[i + 1:]:
                        self._loop.call_soon(rest, *rest_args, context=rest_context)
                    raise
                except BaseException as exc:
                    self._loop.call_exception_handler({
                        "message": f"Exception in callback {callback!r}", "exception": exc})
        finally:
            if not sending:
                self._sending = False
                self._send_out()

    def _parse_on(self) -> bool:
        """After a callback raised: log it, and parse the rest of what was received."""
        logger.exception("a callback of the asyncio link raised")
        while not self.closed:
            try:
                return self._session.receive(b"")
            except ConnectionLost as exc:
                self._answer()
                self._lose(exc)
                return False
            except Exception:
                logger.exception("a callback of the asyncio link raised")
        return False

    def _answer(self) -> None:
        """Write what the session owes the broker (close-ok, cancel-ok), if it can."""
        answer = self._session.data_to_send()
        if answer and not self.closed:
            self._out.append(answer)
            self._send_out()  # now: the connection may be lost right after

    # -- writing -----------------------------------------------------------------------------

    def _write(self, data: bytes, *, now: bool = False) -> None:
        """Queue ``data`` for the send after this loop pass (``now``: for the caller's own
        :meth:`_send_out`); never blocks.

        Every publish that tasks make in one pass (a burst of replies wakes many) goes out in
        one ``send``: a send per publish cost more CPU than the rest of a call's client side.
        """
        if self.closed or self._closing is not None:
            raise ConnectionLost("the connection is closed")
        self._out.append(data)
        if not now and not self._sending:
            self._sending = True
            self._loop.call_soon(self._send_soon)

    def _send_soon(self) -> None:
        self._sending = False
        self._send_out()

    def _send_out(self) -> None:
        """Send the queued writes now, or queue what the socket does not take."""
        out = self._out
        if self.closed or not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        tracks = self._out_tracks
        self._sent = True
        if self._wbuf:
            self._wbuf += data
            tracks.clear()
            return
        try:
            sent = self._sock.send(data)
        except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
            sent = 0
        except ssl.SSLWantReadError:  # the reader's callback retries
            self._wbuf += data
            tracks.clear()
            return
        except OSError as exc:
            self.unwritten = tracks[:]
            tracks.clear()
            self._lose(ConnectionLost(f"cannot write to the broker: {exc}"))
            return
        tracks.clear()
        self._written += sent
        if sent < len(data):
            self._wbuf += memoryview(data)[sent:]
            self._want_writable()

    def _want_writable(self) -> None:
        if not self._writing:
            self._writing = True
            self._loop.add_writer(self._fd, self._on_writable)
            if self._stall_timer is None:
                self._stall_timer = self._loop.call_later(
                    SEND_TIMEOUT, self._check_stalled, self._written)

    def _on_writable(self) -> None:
        if self.closed:
            return
        if self._read_wants_write:
            self._read_wants_write = False
            self._on_readable()
        if self._wbuf:
            self._flush()
        if not self._wbuf and not self._read_wants_write and self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)

    def _flush(self) -> None:
        try:
            sent = self._sock.send(self._wbuf)
        except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return
        except OSError as exc:
            self._lose(ConnectionLost(f"cannot write to the broker: {exc}"))
            return
        del self._wbuf[:sent]
        self._written += sent

    def _check_stalled(self, written: int) -> None:
        self._stall_timer = None
        if self.closed or not self._writing:
            return
        if self._wbuf and self._written == written:
            self._lose(ConnectionLost(f"the broker read nothing for {SEND_TIMEOUT:g} s "
                                      f"(blocked or stalled)"))
        else:
            self._stall_timer = self._loop.call_later(
                SEND_TIMEOUT, self._check_stalled, self._written)

    # -- the confirm mark --------------------------------------------------------------------

    def _raise_mark(self) -> None:
        """Let a lone confirm wait for the reply that follows it, sparing the loop a pass (an
        epoll wake-up, a read, a parse) per call. The mark applies between messages only (the
        tail of a message may be shorter: within one it is 1), and :meth:`_check_mark` bounds
        what waits below it."""
        self._marked = True
        if self._session.between_messages:
            self._set_mark(frames.CONFIRM_MARK)
        if self._can_mark:
            self._mark_timer = self._loop.call_later(MARK_CHECK, self._check_mark)
        else:  # the socket refused it
            self._marked = False

    def _lower_mark(self) -> None:
        if self._marked:
            self._marked = False
            self._set_mark(1)

    def _set_mark(self, mark: int) -> None:
        if mark != self._mark:
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, mark)
            except OSError:
                self._can_mark = False
                return
            self._mark = mark

    def _check_mark(self) -> None:
        """Every :data:`MARK_CHECK` s while the mark is raised: read what waits below it (a
        lone nack, a heartbeat), and lower it once no tracked publish went out since the last
        check, so nothing waits below it for longer than a check."""
        self._mark_timer = None
        if self.closed:
            return
        if self._tracked:
            self._tracked = False
            self._mark_timer = self._loop.call_later(MARK_CHECK, self._check_mark)
        else:
            self._lower_mark()  # before the read: what comes after it wakes the loop
        self._on_readable()

    # -- heartbeats --------------------------------------------------------------------------

    def _on_timer(self) -> None:
        if self.closed:
            return
        try:
            due, delay = self._heartbeat.tick(time.monotonic(), received=self._received,
                                              sent=self._sent)
        except ConnectionLost as exc:
            self._lose(exc)
            return
        self._received = self._sent = False
        if due:
            try:
                self._write(self._session.heartbeat())
            except ConnectionLost:
                return
        self._timer = self._loop.call_later(delay, self._on_timer)

    # -- commands ----------------------------------------------------------------------------

    def publish(
        self, routing_key: str, body: bytes, props: dict[str, Any], *,
        mandatory: bool = False, ack: int | None = None, exchange: str = "",
        track: Any = None, now: bool = False,
    ) -> None:
        session = self._session
        data = session.publish(routing_key, body, props, mandatory=mandatory, ack=ack,
                               exchange=exchange)
        self._write(data, now=now)
        session.published(track)  # _write() only queues: this still comes before the send
        if track is not None:
            self._out_tracks.append(track)
            self._tracked = True
            if not self._marked and self._can_mark:
                self._raise_mark()
        if now:
            self._send_out()

    def ack(self, delivery_tag: int) -> None:
        self._write(self._session.ack(delivery_tag))

    def reject(self, delivery_tag: int, *, requeue: bool) -> None:
        self._write(self._session.reject(delivery_tag, requeue=requeue))

    def declare_fanout(self, exchange: str) -> None:
        self._write(self._session.declare_fanout(exchange))

    def cancel(self, consumer_tag: str) -> None:
        self._write(self._session.cancel(consumer_tag))

    def inspect_queue(self, queue: str, on_info: OnQueueInfo) -> None:
        if self.closed:
            raise ConnectionLost("the connection is closed")
        data = self._session.inspect_queue(queue, on_info)
        try:
            self._write(data)
        except ConnectionLost:
            self._session.forget_inspection()
            raise

    # -- closing -----------------------------------------------------------------------------

    def _lose(self, exc: ConnectionLost) -> None:
        if self.closed:
            return
        self._release()
        closing = self._closing
        if closing is None:
            self._loop.call_soon(self._on_lost, exc)
        elif not closing.done():  # the close-ok close() waits for, or the end of the connection
            closing.set_result(None)

    def _release(self) -> None:
        """Stop watching the socket and let the connection go."""
        self.closed = True
        for timer in (self._timer, self._stall_timer, self._mark_timer):
            if timer is not None:
                timer.cancel()
        self._loop.remove_reader(self._fd)
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self._conn.collect()
        except Exception:  # the socket is already gone; nothing left to release
            logger.debug("error collecting a closed connection", exc_info=True)

    async def close(self) -> None:
        if self.closed:
            return
        if asyncio.get_running_loop() is not self._loop:
            # Closed from another loop: the link's own loop does it, unwaited for.
            try:
                self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self.close()))
            except RuntimeError:  # that loop is closed: nothing watches the socket any more
                self._release()
            return
        if self._closing is not None:  # another close() waits for the close-ok
            await asyncio.wait({self._closing}, timeout=CLOSE_WAIT)
            return
        self._lower_mark()  # close-ok is 12 bytes
        self._out.append(self._session.close())
        self._send_out()  # with the writes of this pass before it
        if self.closed:
            return
        # The broker handles what was written before the close, then answers close-ok; a
        # socket closed sooner makes it drop the channel with the publishes not yet handled.
        closing = self._closing = self._loop.create_future()
        try:
            await asyncio.wait({closing}, timeout=CLOSE_WAIT)
        finally:
            if not self.closed:
                self._release()


class _BridgeLink(AsyncLink):
    """Any other transport: a reader thread reads, the loop runs the callbacks.

    The thread, and the callbacks it runs for the blocking link, hold this link (and through it
    its owner) only weakly: an owner dropped unclosed (an :class:`~rpc.AsyncProxy`) is
    collected, and the thread then closes the blocking link and ends (see :func:`_bridge`).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, link: Link, on_lost: OnLost) -> None:
        super().__init__()
        self._loop = loop
        self._link = link
        self._on_lost = on_lost
        self.direct_reply_to = link.direct_reply_to
        self._on_message, self._on_return = link.on_message, link.on_return
        self._on_cancel = link.on_cancel
        #: Set by close(), or once this link is collected: the reader thread ends.
        self._stop = stop = threading.Event()
        ref = weakref.ref(self, lambda _: stop.set())
        call_soon = loop.call_soon_threadsafe

        def deliver(msg: _Incoming[Any]) -> None:
            call_soon(_bridged, ref, _BridgeLink._delivered, msg)

        def returned(msg: _Incoming[Any], code: int, text: str) -> None:
            call_soon(_bridged, ref, _BridgeLink._returned, msg, code, text)

        def cancelled(tag: str) -> None:
            call_soon(_bridged, ref, _BridgeLink._cancelled, tag)

        link.on_message = deliver
        link.on_return = returned
        link.on_cancel = cancelled
        self._reader = threading.Thread(target=_bridge, args=(ref, link, stop),
                                        name="rpc-async-bridge", daemon=True)
        self._reader.start()

    def _delivered(self, msg: _Incoming[Any]) -> None:
        msg.link = self
        self._on_message(msg)

    def _returned(self, msg: _Incoming[Any], code: int, text: str) -> None:
        msg.link = self
        self._on_return(msg, code, text)

    def _cancelled(self, tag: str) -> None:
        self._on_cancel(tag)

    @property
    def blocked(self) -> str | None:
        return self._link.blocked

    def _lose(self, exc: ConnectionLost) -> None:
        if self.closed:
            return
        self.closed = True
        self._on_lost(exc)
        self._loop.run_in_executor(None, self._link.close)

    def _check_open(self) -> None:
        if self.closed:
            raise ConnectionLost("the connection is closed")

    def call_after_read(self, callback: Callable[..., object], *args: Any,
                        context: contextvars.Context | None = None) -> None:
        self._loop.call_soon(callback, *args, context=context)

    def publish(
        self, routing_key: str, body: bytes, props: dict[str, Any], *,
        mandatory: bool = False, ack: int | None = None, exchange: str = "",
        track: Any = None, now: bool = False,
    ) -> None:
        self._check_open()
        self._link.publish(routing_key, body, props, mandatory=mandatory, ack=ack,
                           exchange=exchange, track=track)

    def ack(self, delivery_tag: int) -> None:
        self._check_open()
        self._link.ack(delivery_tag)

    def reject(self, delivery_tag: int, *, requeue: bool) -> None:
        self._check_open()
        self._link.reject(delivery_tag, requeue=requeue)

    def declare_fanout(self, exchange: str) -> None:
        self._check_open()
        self._link.declare_fanout(exchange)

    def cancel(self, consumer_tag: str) -> None:
        self._check_open()
        self._link.cancel(consumer_tag)

    def inspect_queue(self, queue: str, on_info: OnQueueInfo) -> None:
        self._check_open()
        call_soon = self._loop.call_soon_threadsafe

        def answer(info: QueueInfo | None) -> None:
            call_soon(on_info, info)

        def inspect() -> None:
            try:
                self._link.inspect_queue(queue, answer)
            except ConnectionLost as exc:  # the reader hears of it too
                logger.debug("queue inspection not sent: %s", exc)

        self._loop.run_in_executor(None, inspect)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._stop.set()
        loop = asyncio.get_running_loop()  # the link's own, or any other: both work
        await loop.run_in_executor(None, self._reader.join)
        await loop.run_in_executor(None, self._link.close)


_READ_SLICE = 0.05  # a bridge's longest read, so that a close or a collection is noticed soon


def _bridge(ref: weakref.ref[_BridgeLink], link: Link, stop: threading.Event) -> None:
    """A bridge's reader thread: reads ``link`` until the bridge closes, fails or is collected.

    It takes the bridge only to report a failure: were it to hold it, even for a moment between
    reads, a collection at that moment would find a dropped bridge (and its owner) reachable.
    Once the bridge is collected, or its loop closed, it closes ``link`` itself: that needs
    neither the loop nor the collecting thread, which must not block.
    """
    while not stop.is_set():
        try:
            link.read(_READ_SLICE)
            continue
        except ConnectionLost as exc:
            lost = exc
        except Exception as exc:  # a closed loop's refusal of a message is no failure to report
            if not _loop_closed(ref):
                logger.exception("the asyncio bridge's reader failed")
            lost = ConnectionLost(f"read failed: {exc}")
        if _report(ref, lost):
            return
        break
    if ref() is None or _loop_closed(ref):
        link.close()


def _loop_closed(ref: weakref.ref[_BridgeLink]) -> bool:
    bridge = ref()
    return bridge is not None and bridge._loop.is_closed()


def _report(ref: weakref.ref[_BridgeLink], lost: ConnectionLost) -> bool:
    """Hand the bridge its loss, on its loop; False when nobody is left to hear of it (the
    bridge was collected, or its loop closed)."""
    bridge = ref()
    if bridge is None:
        return False
    try:
        bridge._loop.call_soon_threadsafe(bridge._lose, lost)
    except RuntimeError:  # the loop closed
        return False
    return True


def _bridged(ref: weakref.ref[_BridgeLink], method: Callable[..., None], *args: Any) -> None:
    """On the loop: ``method`` of the bridge, with ``args``, if the bridge was not collected."""
    if (bridge := ref()) is not None:
        method(bridge, *args)
