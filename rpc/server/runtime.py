"""One run of a server, from start() to stop(): its connection, worker threads and event loop.

One I/O thread (:mod:`rpc.server.consumer`) reads the connection and screens each delivery;
``concurrency`` worker threads take the requests from one queue and handle them
(:mod:`rpc.server.handling`), except a request that comes while no other is in flight, which
the I/O thread runs itself (with one worker, every request of that read); ``async def``
handlers run on the :class:`HandlerLoop`, the server's own or the application's. Stopping
cancels the consumers, lets the calls in flight finish within the grace, and closes the
connection, which returns every request not acknowledged to the queue."""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable

from ..core import protocol
from ..core.dedup import CompletedCalls
from ..core.errors import ConnectionLost
from ..transport.link import Incoming, Link
from .consumer import Consumer
from .failures import LOGGER_NAME, FailureLog
from .handling import REJECTED, Handler
from .longcalls import Keepalives
from .loops import HandlerLoop
from .monitoring import Endpoint, server_metrics
from .options import ServerOptions
from .registry import Registry
from .replies import INTERNAL_ERROR, Replier
from .status import InFlight, Stats
from .streams import Streams

logger = logging.getLogger(LOGGER_NAME)


def _slots(count: int) -> tuple[Callable[[], object], Callable[[], object]]:
    """How to take and give back one of ``count`` slots, as calls into C."""
    if count == 1:
        lock = threading.Lock()
        return lock.acquire, lock.release
    tokens: queue.SimpleQueue[None] = queue.SimpleQueue()
    for _ in range(count):
        tokens.put(None)
    return tokens.get, functools.partial(tokens.put, None)


class _Later(threading.local):
    """A thread's outcomes held between hold() and flush() (None: not holding); the class
    default spares every request a ``getattr`` that raises and swallows an exception."""

    outcomes: list[str] | None = None


class Runtime:
    """Everything a server runs on between one start() and the stop() after it.

    Args:
        options: the options to run with (frozen for the whole run).
        registry: the methods to serve.
        stats: the server's counters, kept across runs.
        completed: the server's table of completed calls, kept across runs.
        failures: the server's failure log, kept across runs.
        identity: the server's ``app_id`` on replies.
        loop: the application's running loop for ``async def`` handlers; None: the server's own.
    """

    def __init__(
        self, *, options: ServerOptions, registry: Registry, stats: Stats,
        completed: CompletedCalls, failures: FailureLog, identity: str,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.options = options
        self.server_id = server_id = options.server_id
        self.counts = stats.counts
        #: Set once stop() begins: no more reconnecting, and the I/O thread ends when idle.
        self.stopping = threading.Event()
        #: Whether deliveries are handled (False: they go back to the queue).
        self.accepting = False
        self.started_at = 0.0
        self.in_flight = InFlight(stats.counts)
        self.metrics = server_metrics(server_id) if options.metrics_port is not None else None
        self.endpoint: Endpoint | None = None
        self.replier = Replier(server_id, identity, stats.counts, self.stopping)
        self.loop = HandlerLoop(f"rpc-server-loop-{server_id}", options.async_concurrency, loop)
        self.streams = Streams(server_id, limiter=failures.limiter)
        self.handler = Handler(
            options=options, registry=registry, completed=completed, stats=stats,
            in_flight=self.in_flight, failures=failures, replier=self.replier, loop=self.loop,
            stopping=self.stopping, metrics=self.metrics, streams=self.streams,
            control_address=self.control_address,
        )
        #: Sends the keep-alives and throttled progress of the calls in flight.
        self.keepalives = Keepalives(self.streams, f"rpc-keepalive-{server_id}")
        self.prefetch = options.prefetch_count(registry.has_async())
        self._work: queue.SimpleQueue[Incoming | None] = queue.SimpleQueue()
        self.consumer = Consumer(
            options, prefetch=self.prefetch, on_message=self.on_message,
            run_deferred=self.run_one, hand_off=self.hand_off, hold=self.hold,
            flush=self.flush, stopping=self.stopping, idle=self.idle, on_lost=self.on_lost,
            on_reconnected=self.on_reconnected,
        )
        #: A slot is taken by each request while a handler runs it, on a worker or the I/O
        #: thread: no more than ``concurrency`` run at once. One slot is a plain lock; more are
        #: tokens in a SimpleQueue, since threading.Semaphore is Python code around a condition
        #: (1.2 µs per take and give, against 0.05).
        self._one_slot = options.concurrency == 1
        self._take_slot, self._give_slot = _slots(options.concurrency)
        #: With one slot, the requests of one read run one after another wherever they run:
        #: on the I/O thread they skip a hand-off each.
        self._workers: list[threading.Thread] = []
        #: Per thread, between hold() and flush(), ``outcomes`` of the requests whose replies
        #: the replier holds: they stay in flight until those replies are written, so a stop
        #: cannot close the connection before.
        self._later = _Later()

    # -- starting and stopping ---------------------------------------------------------------------

    def start(self) -> None:
        """Serve the metrics endpoint, connect and consume; return once consuming.

        Raises:
            rpc.ConnectionError: the broker stayed unreachable, or refused the queue.
            OSError: the metrics port could not be bound.
        """
        options = self.options
        try:
            if options.metrics_port is not None:
                self.endpoint = Endpoint(
                    options.metrics_port, options.metrics_host, healthy=self.healthy,
                    ready=self.ready, stopping=self.stopping, name=self.server_id)
            self.consumer.connect()
        except BaseException:
            self.stopping.set()
            if self.endpoint is not None:
                self.endpoint.close()
            raise
        self.started_at = time.monotonic()
        self.accepting = True
        self._workers = [
            threading.Thread(target=self.work, name=f"rpc-worker-{self.server_id}-{i}",
                             daemon=True)
            for i in range(options.concurrency)
        ]
        for worker in self._workers:
            worker.start()
        self.keepalives.start()
        self.consumer.start()

    def stop(self, grace: float | None) -> int:
        """Stop consuming, let the calls in flight finish (up to ``grace`` s; None: for ever),
        then disconnect; returns how many calls were still running when the grace ran out.

        Requests prefetched but not started go back to the queue for another server, and so do
        the abandoned ones once the connection closes.
        """
        self.begin_stop()
        self.consumer.cancel()
        for _ in self._workers:
            self._work.put(None)
        deadline = None if grace is None else time.monotonic() + grace
        for worker in self._workers:
            worker.join(None if deadline is None else max(deadline - time.monotonic(), 0))
        while True:  # one the I/O thread handed over as the workers ended
            try:
                msg = self._work.get_nowait()
            except queue.Empty:
                break
            if msg is not None:
                self.give_back(msg)
        # Coroutine handlers may still run on the loop.
        abandoned = self.in_flight.wait_idle(
            None if deadline is None else max(deadline - time.monotonic(), 0))
        if abandoned:
            logger.warning("stopping %r with %d call(s) still running after the %s s grace: the "
                           "broker will redeliver them", self.server_id, abandoned, grace)
        self.consumer.close()
        self.streams.wake_all()  # streams paused for credit see the closed connection and end
        self.loop.cancel_running()
        self.loop.close()
        self.keepalives.stop()
        if self.endpoint is not None:
            self.endpoint.close()
        return abandoned

    def begin_stop(self) -> None:
        """Take no more requests in, at once; :meth:`stop` does the rest."""
        self.stopping.set()
        self.accepting = False

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        return None if self.endpoint is None else self.endpoint.address

    def healthy(self) -> bool:
        """Alive: the I/O thread runs, reading or reconnecting (a broker outage fails readiness
        only)."""
        return self.consumer.healthy()

    def ready(self) -> bool:
        """Ready: consuming requests now."""
        return self.accepting and self.consumer.consuming()

    @property
    def link(self) -> Link | None:
        """The current connection."""
        return self.consumer.link

    def control_address(self) -> str | None:
        """Where the callers of this instance's streams send credit and cancels: the broadcast
        queue of the current connection."""
        return self.consumer.broadcast_queue

    # -- on the I/O thread -------------------------------------------------------------------------

    def on_message(self, msg: Incoming) -> None:
        """Control messages of streams are applied here; requests get cheap checks, then go to
        a worker, or to the I/O thread itself when nothing else is in flight."""
        tag = msg.delivery_tag
        assert tag is not None, "a request is a delivery, which always has a tag"
        kind = msg.props.get("type")
        if kind == protocol.CREDIT_TYPE or kind == protocol.CANCEL_TYPE:
            self.streams.control(msg)
            return
        if not self.accepting:
            self.counts["requeued"] += 1
            # A broadcast, read while streams finish during a stop: its queue goes with this
            # connection, and requeued it would only come straight back.
            requeue(msg.link, tag, again=msg.routing_key == self.server_id)
            return
        verdict = self.handler.screen(msg)
        if verdict is None:
            self.handler.admit()
            # It runs on the I/O thread when nothing else is in flight, or only requests
            # deferred before it with one slot; never a stream (which waits for credit the I/O
            # thread reads) nor a reply that would wait for a probe's verdict.
            deferred = self.consumer.deferred
            headers = msg.props.get("headers")
            if (self.in_flight.count == len(deferred) + 1 and (not deferred or self._one_slot)
                    and not (headers and protocol.STREAM_HEADER in headers)
                    and not (self.replier.suspects and self.replier.would_wait(msg))):
                deferred.append(msg)
            else:
                self._work.put(msg)
        elif verdict == REJECTED:
            msg.link.reject(tag, requeue=False)
        else:
            msg.link.ack(tag)

    def idle(self) -> bool:
        """Whether every request taken in is done with."""
        return self.in_flight.count == 0 and self._work.empty()

    def on_lost(self, exc: ConnectionLost) -> None:
        if exc.code == INTERNAL_ERROR:
            # RabbitMQ does this on a reply to a caller whose node is gone: the request comes
            # back redelivered, and is answered by a probe, or acknowledged unanswered once its
            # address is known gone.
            link = self.consumer.link
            if link is not None:
                self.replier.closed_on_reply(link)
            self.counts["reply_failures"] += 1
            if self.metrics is not None:
                self.metrics.reply_failed()
            logger.warning("server %r: the broker closed the connection on a reply (%s); its "
                           "caller is presumably gone", self.server_id, exc)
        else:
            logger.warning("server %r lost its connection: %s", self.server_id, exc)

    def on_reconnected(self) -> None:
        self.counts["reconnects"] += 1
        if self.metrics is not None:
            self.metrics.reconnected()

    # -- on the worker threads ---------------------------------------------------------------------

    def work(self) -> None:
        """A worker: handle requests until told to stop (a None on the queue)."""
        while True:
            msg = self._work.get()
            if msg is None:
                return
            self.run_one(msg)

    def run_one(self, msg: Incoming) -> None:
        """Handle one request taken in, whatever happens (on a worker or the I/O thread)."""
        handler = self.handler
        outcome: str | None = "requeued"
        try:
            self._take_slot()
            try:
                if self.accepting:
                    outcome = handler.handle(msg)
                elif msg.delivery_tag is not None:
                    requeue(msg.link, msg.delivery_tag)
            finally:
                self._give_slot()
        except ConnectionLost as exc:
            logger.warning("reply to %s not sent, the request will be redelivered: %s",
                           msg.props.get("correlation_id"), exc)
        except Exception:
            logger.exception("unexpected error handling a request")
        finally:
            if outcome is not None:  # None: a coroutine handler runs on, on the loop
                held = self._later.outcomes
                if held is not None:
                    held.append(outcome)
                else:
                    handler.settle(outcome)

    def hand_off(self, msg: Incoming) -> None:
        """A request the I/O thread will not run after all goes to the workers, or back to its
        queue once the server takes no more."""
        if self.accepting:
            self._work.put(msg)
        else:
            self.give_back(msg)

    def give_back(self, msg: Incoming) -> None:
        """Return a request taken in but not run to its queue, and count it so."""
        if msg.delivery_tag is not None:
            requeue(msg.link, msg.delivery_tag)
        self.handler.settle("requeued")

    def hold(self) -> None:
        """Keep the replies of the requests this thread runs from now on (the requests of one
        read, on the I/O thread) to send together at :meth:`flush`, or half the prefetch at a
        time."""
        self._later.outcomes = []
        self.replier.hold(max(self.prefetch // 2, 1))

    def flush(self) -> None:
        """Send the replies held, in one write, and only then settle their requests.

        Raises:
            ConnectionLost: the connection failed; those requests come back redelivered.
        """
        try:
            self.replier.flush()
        finally:
            settled = self._later.outcomes or []
            self._later.outcomes = None
            for outcome in settled:
                self.handler.settle(outcome)


def requeue(link: Link, tag: int, *, again: bool = True) -> None:
    """Give a delivery back to its queue (``again=False``: drop it), unless the connection is
    gone (which does the same)."""
    if not link.closed:
        try:
            link.reject(tag, requeue=again)
        except ConnectionLost:
            pass
