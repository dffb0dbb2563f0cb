"""A server's side of the broker: its queues, the I/O thread that reads them, and reconnecting.

The I/O thread reads the connection and dispatches each delivery to ``on_message``. A request
that comes while the server has nothing else to do may be *deferred*: the I/O thread runs it
itself once the read returns, which spares a sequential caller the hand-off to a worker thread
(two thread switches per call). A watchdog keeps that safe: should such a request run longer
than :data:`INLINE_LIMIT`, a new I/O thread takes over reading (heartbeats, cancels, the next
requests) and the old one ends with its request.

A lost connection moves on to the next node of a cluster and declares everything again; the
consumer of the request queue always comes last, once everything else is set up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import amqp.exceptions

from ..core import protocol
from ..core.errors import AccessRefused, ConnectionError, ConnectionLost
from ..transport.connect import Failover, open_connection
from ..transport.link import Incoming, Link, OnMessage, QueueInfo, open_link
from ..transport.urls import mask_url
from .failures import LOGGER_NAME
from .options import ServerOptions

logger = logging.getLogger(LOGGER_NAME)

#: Seconds each reconnection attempt keeps retrying before it logs and starts over.
RECONNECT_RETRY = 30.0
#: Longest pause between reconnection attempts, in seconds.
RECONNECT_BACKOFF = 5.0
#: Seconds ``queue_depth()`` waits for the broker's answer.
INSPECT_WAIT = 2.0
#: Deliveries the broadcast queue's consumer may hold unacknowledged beyond the request
#: queue's prefetch. Grants of credit and cancels share that queue with broadcast requests,
#: and queue behind those waiting for a worker: a stream paused for credit must not wait for
#: ever behind broadcasts that wait for its worker.
CONTROL_HEADROOM = 64
#: Seconds a request may run on the I/O thread before another thread takes over reading.
INLINE_LIMIT = 0.02
#: Seconds without a request run on the I/O thread after which the watchdog sleeps.
WATCH_IDLE = 1.0


class Consumer:
    """Connects, declares and consumes for one server, and keeps doing so until it stops.

    Args:
        options: the server's options (URL, queue, heartbeat, TLS...).
        prefetch: the prefetch of the request and broadcast consumers.
        on_message: called on the I/O thread with every delivery; it may :meth:`defer` one.
        run_deferred: runs a deferred request to its end, on the I/O thread.
        hand_off: gives a deferred request to the workers (the I/O thread reads no more).
        hold: from now on, keeps this thread's replies (and settles) to send together...
        flush: ...then sends them, in one write, and settles their requests.
        stopping: set when the server stops: no more reconnecting, and connecting gives up.
        idle: whether nothing is left to answer; once stopping, the I/O thread ends when idle.
        on_lost: hears of each lost connection, before reconnecting.
        on_reconnected: hears of each new connection after a loss.
    """

    def __init__(
        self, options: ServerOptions, *, prefetch: int, on_message: OnMessage,
        run_deferred: OnMessage, hand_off: OnMessage, hold: Callable[[], None],
        flush: Callable[[], None], stopping: threading.Event,
        idle: Callable[[], bool], on_lost: Callable[[ConnectionLost], None],
        on_reconnected: Callable[[], None],
    ) -> None:
        self.options = options
        self.server_id = options.server_id
        self.prefetch = prefetch
        self.on_message = on_message
        self.run_deferred = run_deferred
        self.hand_off = hand_off
        self.hold = hold
        self.flush = flush
        self.stopping = stopping
        self.idle = idle
        self.on_lost = on_lost
        self.on_reconnected = on_reconnected
        self.failover = Failover(options.url, options.failover)
        #: The current connection (None before :meth:`connect`).
        self.link: Link | None = None
        self.consumer_tag: str | None = None
        self.broadcast_tag: str | None = None
        #: The broadcast queue of the current connection: also this instance's control
        #: address, where the callers of its streams send credit and cancels.
        self.broadcast_queue: str | None = None
        #: The I/O thread: the one thread that reads the connection.
        self._thread: threading.Thread | None = None
        #: The requests ``on_message`` deferred in this read, for the I/O thread to run itself
        #: once the read is done, in order (``on_message`` appends to it; a plain list, as
        #: it is on every request's path).
        self.deferred: list[Incoming] = []
        #: The requests of the read the I/O thread runs, not yet started (guarded by _role).
        self._burst: deque[Incoming] = deque()
        #: Guards the hand-over of reading between the I/O thread and the watchdog.
        self._role = threading.Lock()
        #: When (monotonic) the I/O thread began running the requests of a read; 0: it runs none.
        self._inline_since = 0.0
        self._last_inline = 0.0
        #: Set while requests run on the I/O thread: the watchdog looks often.
        self._watching = threading.Event()
        self._watchdog: threading.Thread | None = None
        #: Set by :meth:`close`; it also cuts the watchdog's sleep short.
        self._closed = threading.Event()

    @property
    def url(self) -> str:
        """The URL of the node connected to, password masked."""
        return mask_url(self.failover.current or self.options.url)

    def connect(self) -> None:
        """Connect and consume, retrying for the options' ``connect_retry`` seconds.

        Raises:
            rpc.ConnectionError: the broker stayed unreachable, or refused the queue.
        """
        self.link = self.open(self.options.connect_retry)

    def start(self) -> None:
        """Start the I/O thread and its watchdog (after :meth:`connect`)."""
        self._thread = self._reader()
        self._thread.start()
        self._watchdog = threading.Thread(
            target=self.watch, name=f"rpc-server-watch-{self.server_id}", daemon=True)
        self._watchdog.start()

    def _reader(self) -> threading.Thread:
        return threading.Thread(target=self.run, name=f"rpc-server-io-{self.server_id}",
                                daemon=True)

    def cancel(self) -> None:
        """Ask the broker to send no more requests (those already sent still arrive).

        The broadcast queue is still consumed: the streams that finish within the grace hear
        their callers' credit and cancels through it (broadcasts that still come are refused).
        """
        link = self.link
        if link is None or link.closed:
            return
        try:
            if self.consumer_tag is not None:
                link.cancel(self.consumer_tag)
        except ConnectionLost:
            pass

    def close(self) -> None:
        """Close the connection (unacknowledged deliveries go back to the queue) and wait for
        the I/O thread to end."""
        self._closed.set()
        if self.link is not None:
            self.link.close()
        self._watching.set()  # the watchdog sees the close at once
        with self._role:
            thread = self._thread
        if thread is not None:
            thread.join(timeout=5)
        if self._watchdog is not None:
            self._watchdog.join(timeout=5)

    def healthy(self) -> bool:
        """Alive: the I/O thread runs, reading or reconnecting. A broker outage is not a fault
        of this process (it reconnects by itself, and a restart would not help), so it fails
        readiness (:meth:`consuming`), not liveness."""
        with self._role:
            thread = self._thread
        return thread is not None and thread.is_alive()

    def consuming(self) -> bool:
        """Whether the request queue's consumer is on an open connection."""
        link = self.link
        return link is not None and not link.closed and self.consumer_tag is not None

    def queue_depth(self) -> int | None:
        """The request queue's message count (one round trip, at most 2 s); None when unknown."""
        link = self.link
        if link is None or link.closed:
            return None
        answer: list[QueueInfo | None] = []
        got = threading.Event()

        def on_info(info: QueueInfo | None) -> None:
            answer.append(info)
            got.set()

        try:
            link.inspect_queue(self.server_id, on_info)
        except ConnectionLost:
            return None
        if not got.wait(INSPECT_WAIT) or answer[0] is None:
            return None
        return answer[0].messages

    # -- connecting --------------------------------------------------------------------------------

    def open(self, retry_for: float) -> Link:
        """A new connection, with the queues declared and consumed."""
        options = self.options
        conn = open_connection(
            self.failover, heartbeat=options.heartbeat, retry_for=retry_for,
            name=f"rpc-server {self.server_id}", ssl=options.ssl_options(), cancel=self.stopping,
        )
        try:
            return self.declare(conn)
        except amqp.exceptions.AccessRefused as exc:
            conn.release()
            raise AccessRefused(f"the broker refused {self.server_id!r} its queue: {exc}") from None
        except amqp.exceptions.PreconditionFailed as exc:
            conn.release()
            raise ConnectionError(
                f"queue {self.server_id!r} exists with other arguments than this server's "
                f"({options.queue_type}: {options.request_queue_arguments()}): {exc}. Delete "
                f"it, or give the server the queue's own queue_type and queue_arguments") from None
        except amqp.exceptions.AMQPError as exc:
            conn.release()
            raise ConnectionError(f"cannot set up {self.server_id!r}: {exc}") from None
        except Exception:
            conn.release()
            raise

    def declare(self, conn: Any) -> Link:
        """Declare, bind and consume: the request queue's consumer comes last, once all is set."""
        options = self.options
        link = open_link(conn, self.on_message, on_cancel=self.on_cancel,
                         max_body=options.max_message_size)
        if options.queue_type == "quorum":
            link.declare_queue(options.dead_letter_queue, durable=True,
                               arguments={"x-queue-type": "quorum"})
        link.declare_queue(self.server_id, durable=True,
                           arguments=options.request_queue_arguments())
        broadcasts = link.broadcast_queue(protocol.broadcast_exchange(self.server_id))
        self.broadcast_queue = broadcasts
        self.broadcast_tag = link.consume(broadcasts, prefetch=self.prefetch + CONTROL_HEADROOM)
        self.consumer_tag = link.consume(self.server_id, prefetch=self.prefetch)
        return link

    def on_cancel(self, tag: str) -> None:
        """The broker cancelled a consumer (its queue was deleted): reconnect to declare it."""
        if not self.stopping.is_set():
            logger.error("the broker cancelled consumer %s of %r (queue deleted?); "
                         "reconnecting to declare it again", tag, self.server_id)
            if self.link is not None:
                self.link.close()

    # -- the I/O thread ----------------------------------------------------------------------------

    def run(self) -> None:
        """Read and dispatch until stopped and idle, reconnecting after each loss; return
        early once the watchdog has handed reading to a new thread."""
        heartbeat = self.options.heartbeat
        tick = max(min(heartbeat / 4, 1.0), 0.05) if heartbeat else 1.0
        me = threading.current_thread()
        while True:
            link = self.link
            assert link is not None
            try:
                while not (self.stopping.is_set() and self.idle()):
                    link.read(tick)
                    link.tick()
                    if self.deferred and not self.run_inline(me):
                        return
                return
            except ConnectionLost as exc:
                # A request deferred in the read that failed is in flight: it runs (its reply
                # fails, and the broker redelivers it) like one a worker had taken.
                if self.deferred and not self.run_inline(me):
                    return
                if self.stopping.is_set():
                    return
                self.consumer_tag = None
                self.on_lost(exc)
                if not self.reconnect():
                    return

    def run_inline(self, me: threading.Thread) -> bool:
        """Run the deferred requests on this thread (``me``, the I/O thread), in order; False if
        another thread reads from now on. The watchdog times the whole run: when it hands
        reading over, it gives the requests not yet started to the workers."""
        if len(self.deferred) == 1:
            return self._run_alone(me)
        burst = deque(self.deferred)
        self.deferred = []
        together = len(burst) > 1
        with self._role:
            self._burst = burst
            self._inline_since = self._last_inline = time.monotonic()
        if not self._watching.is_set():
            self._watching.set()
        if together:
            self.hold()
        done = 0
        try:
            while burst:  # only the watchdog takes from it otherwise, and it takes all
                with self._role:
                    if not burst or self._thread is not me:
                        break
                    msg = burst.popleft()
                done += 1
                self.run_deferred(msg)
        finally:
            if together:
                try:
                    self.flush()
                except ConnectionLost as exc:  # the next read hears of the loss
                    logger.warning("replies to %d requests not sent, they will be redelivered: "
                                   "%s", done, exc)
            with self._role:
                reading = self._thread is me
                if reading:  # else the watchdog has done this, and the new I/O thread times itself
                    self._inline_since = 0.0
                rest = list(burst)
                burst.clear()
            for msg in rest:  # a handler raised past run_deferred
                self.hand_off(msg)
        return reading

    def _run_alone(self, me: threading.Thread) -> bool:
        """:meth:`run_inline` for the one request of a read (a sequential caller's): it never
        waits in the burst, so there is nothing for the watchdog to hand over nor any reply
        to hold, and the run costs two takes of the lock rather than four."""
        msg = self.deferred.pop()
        with self._role:
            self._inline_since = self._last_inline = time.monotonic()
        if not self._watching.is_set():
            self._watching.set()
        try:
            self.run_deferred(msg)
        finally:
            with self._role:
                reading = self._thread is me
                if reading:  # else the watchdog has done this, and the new I/O thread times itself
                    self._inline_since = 0.0
        return reading

    def watch(self) -> None:
        """The watchdog: hand reading to a new thread, and the requests of its read not yet
        started to the workers, when requests hold the I/O thread longer than
        :data:`INLINE_LIMIT`. While requests run there it looks when the run it last saw could
        first overrun, so at most once per limit, and not at all once they stop coming."""
        while not self._closed.is_set():
            if not self._watching.wait(WATCH_IDLE):
                continue
            now = time.monotonic()
            rest: list[Incoming] = []
            with self._role:
                since = self._inline_since
                if since and now - since > INLINE_LIMIT and not self._closed.is_set():
                    self._inline_since = since = 0.0
                    rest = list(self._burst)
                    self._burst.clear()  # the old thread's own: it starts none of them
                    thread = self._reader()
                    thread.start()
                    self._thread = thread
            for msg in rest:
                self.hand_off(msg)
            if now - self._last_inline > WATCH_IDLE:
                self._watching.clear()
                if time.monotonic() - self._last_inline <= WATCH_IDLE:
                    self._watching.set()  # a request began just now: keep watching
                continue
            self._closed.wait(max(since + INLINE_LIMIT - now, 0.0) if since else INLINE_LIMIT)

    def reconnect(self) -> bool:
        """Connect again, to the next node first; False once the server stops instead."""
        failures = 0
        while not self.stopping.is_set():
            try:
                link = self.open(retry_for=RECONNECT_RETRY)
            except Exception as exc:
                # The next attempt goes to the next node; back off only as failures repeat.
                failures += 1
                logger.error("server %r cannot reconnect: %s", self.server_id, exc)
                self.stopping.wait(min(0.25 * 2 ** (failures - 1), RECONNECT_BACKOFF))
                continue
            if self.stopping.is_set():  # the stop came while connecting: serve nothing more
                link.close()
                return False
            self.link = link
            self.on_reconnected()
            logger.info("server %r reconnected to %s", self.server_id, self.url)
            return True
        return False
