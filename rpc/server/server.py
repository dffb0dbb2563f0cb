"""The server: registered functions and instances, served from a broker queue.

One I/O thread reads the connection and never runs user code; ``concurrency`` worker threads run
the handlers and each publishes its reply and acknowledges the request in one write. A request
is acknowledged only after its reply is published (at-least-once); one whose ``rpc-deadline`` has
passed is acknowledged and skipped before its body is even decoded. A request seen again (a
proxy's retry, a redelivery) is answered from the table of completed calls instead of running
twice, and a lost connection moves on to the next node of a cluster.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import os
import queue
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeVar, overload

import amqp.exceptions

from ..core import context, dedup, protocol, serialization, tracing
from ..core.context import CallInfo
from ..core.errors import (
    AccessRefused,
    BadRequest,
    ConnectionError,
    ConnectionLost,
    InvalidArguments,
    MethodNotFound,
)
from ..core.ratelimit import RepeatLimiter
from ..defaults import (
    DEFAULT_ASYNC_CONCURRENCY,
    DEFAULT_GRACE,
    DEFAULT_HEARTBEAT,
    DEFAULT_MAX_MESSAGE_SIZE,
    SERVER_CONNECT_RETRY,
)
from ..transport.connect import (
    Failover,
    FailoverStrategy,
    open_connection,
)
from ..transport.link import Incoming, Link, QueueInfo, open_link
from ..transport.urls import BrokerURL, mask_url, resolve_url
from .introspection import SystemMethods
from .registry import Method, Registry

logger = logging.getLogger(__name__)

_F = TypeVar("_F", bound=Callable[..., Any])

#: Requests prefetched per concurrent call unless ``prefetch`` is given: the smallest multiple
#: that kept 100 pipelined calls at the raw pika loop's pace (docs/protocol.md, benchmarks/).
PREFETCH_PER_WORKER = 4
#: ``async def`` handler calls run at once on the server's loop unless told otherwise.
#: Deliveries of one request before a quorum queue dead-letters it (``queue_type="quorum"``).
DEFAULT_DELIVERY_LIMIT = 20
#: The AMQP code RabbitMQ closes a connection with when a reply goes to a caller that is gone.
_INTERNAL_ERROR = 541
#: Seconds a reply to a suspect address waits for such a close before it counts as delivered.
_PROBE_WAIT = 0.2
#: Seconds a reply address found dead is remembered (its requests are acknowledged unanswered).
_GONE_CALLER_TTL = 120.0
#: Seconds a server keeps trying to bind a metrics port that another process holds.
METRICS_BIND_RETRY = 120.0
#: Handler durations kept for the p50/p99 of ``status()``.
_LATENCY_SAMPLES = 1024
QueueType = Literal["classic", "quorum"]
_REFUSALS = (BadRequest, MethodNotFound, InvalidArguments)
#: The method label of requests refused before their method was known (as rpc.metrics names it).
_UNKNOWN_METHOD = "<unknown>"


class Server:
    """Serve registered functions and instances to proxies calling ``server_id``.

    Example::

        server = Server(server_id="calc")

        @server.expose
        def add(a, b):
            return a + b

        server.register_instance(Math(), "math")
        server.serve()          # or server.start() ... server.stop()

    Args:
        url: broker URL; None reads $RPC_BROKER_URL, then ``amqp://guest:guest@localhost:5672//``.
        server_id: the queue to consume, and the name proxies call.
        serializer: ``"pickle"`` (or another registered name) to accept it besides the defaults.
        accept: serializer names or content types to accept instead of msgpack and JSON.
        concurrency: calls of plain functions run at once, each on its own worker thread.
        async_concurrency: calls of ``async def`` handlers run at once on the server's event
            loop, taking no worker thread while they await (0 runs them on the workers).
        prefetch: requests the broker may send ahead; default ``4 * concurrency``, plus
            ``async_concurrency`` when an ``async def`` handler is registered.
        heartbeat: AMQP heartbeat interval in seconds (0 turns heartbeats off).
        send_tracebacks: include the server's traceback in error replies (off in production).
        connect_retry: seconds start() keeps retrying an unreachable broker.
        introspection: answer the built-in ``system.list_methods``, ``system.method_help``,
            ``system.method_signature`` and ``system.ping``.
        max_message_size: largest request body in bytes; a larger one is refused (BadRequest)
            without being buffered or decoded.
        on_error: ``on_error(exc, call)`` sees every exception a handler raises (for reporting);
            ``call`` is the :class:`rpc.CallInfo` of the failed call.
        queue_arguments: further arguments of the request queue (they win over those
            ``queue_type`` sets), such as ``{"x-max-length": 10000}``.
        queue_type: ``"classic"`` (one node holds the queue), or ``"quorum"`` for a cluster: the
            queue is replicated, and a request delivered ``delivery_limit`` times (it keeps
            killing its server) is dead-lettered to ``<server_id>.dead``.
        delivery_limit: deliveries of one request a quorum queue allows.
        failover: with several broker URLs, ``"round-robin"`` or ``"shuffle"`` (see Proxy).
        dedup_size, dedup_ttl: how many completed calls, and for how many seconds, are
            remembered to answer a repeat of the same request without running it again (0
            turns it off). Repeats are recognised within this process only.
        metrics_port: serve Prometheus metrics, ``/healthz`` and ``/readyz`` on this port while
            running (0 picks a free one; needs ``amqp-rpc[metrics]`` for /metrics).
        metrics_host: the address that endpoint listens on (all interfaces by default).
        ssl: py-amqp TLS options; ``amqps://`` verifies certificate and hostname by default.
        hostname, port, username, password, vhost: the URL in pieces, instead of ``url``.
    """

    def __init__(
        self,
        url: BrokerURL | None = None,
        *,
        server_id: str = "calc",
        serializer: str | None = None,
        accept: Iterable[str] | None = None,
        concurrency: int = 1,
        async_concurrency: int = DEFAULT_ASYNC_CONCURRENCY,
        prefetch: int | None = None,
        heartbeat: float = DEFAULT_HEARTBEAT,
        send_tracebacks: bool = False,
        connect_retry: float = SERVER_CONNECT_RETRY,
        introspection: bool = True,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        on_error: Callable[[BaseException, CallInfo], Any] | None = None,
        queue_arguments: dict[str, Any] | None = None,
        queue_type: QueueType = "classic",
        delivery_limit: int = DEFAULT_DELIVERY_LIMIT,
        failover: FailoverStrategy = "round-robin",
        dedup_size: int = dedup.DEFAULT_SIZE,
        dedup_ttl: float = dedup.DEFAULT_TTL,
        metrics_port: int | None = None,
        metrics_host: str = "0.0.0.0",
        ssl: dict[str, Any] | None = None,
        hostname: str | None = None,
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
        vhost: str | None = None,
    ) -> None:
        #: The broker URL (resolved); may be changed before start().
        self.url = resolve_url(
            url, hostname=hostname, port=port, username=username, password=password, vhost=vhost,
        )
        if not server_id or len(server_id.encode()) > 255:
            raise ValueError("server_id must be a non-empty queue name of at most 255 bytes")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.server_id = server_id
        names = set(accept) if accept is not None else {"msgpack", "json"}
        if serializer is not None:
            names.add(serializer)
        self.accept = serialization.accept_set(names)
        self.concurrency = concurrency
        if async_concurrency < 0:
            raise ValueError("async_concurrency cannot be negative")
        self.async_concurrency = async_concurrency
        self._async_slots: asyncio.Semaphore | None = None
        if prefetch is not None and prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        #: Requests the broker may send ahead; None: ``PREFETCH_PER_WORKER * concurrency``.
        self.prefetch = prefetch
        self.heartbeat = heartbeat
        self.send_tracebacks = send_tracebacks
        self.connect_retry = connect_retry
        self.max_message_size = max_message_size
        self.on_error = on_error
        self.queue_arguments = queue_arguments
        #: ``"classic"`` or ``"quorum"``; may be changed before start().
        self.queue_type: str = _check_queue_type(queue_type)
        if delivery_limit < 1:
            raise ValueError("delivery_limit must be at least 1")
        self.delivery_limit = delivery_limit
        self.failover = failover
        Failover(self.url, failover)  # validates the URLs and the strategy now
        #: Port of the metrics and health endpoint (None: none); may be changed before start().
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self._completed = dedup.CompletedCalls(dedup_size, dedup_ttl)
        self._ssl = ssl
        self.registry = Registry()
        if introspection:
            self.registry.add_instance(SystemMethods(self), "system")

        self._link: Link | None = None
        self._failover: Failover | None = None
        self._metrics: Any = None
        self._metrics_server: Any = None
        self._started_at = 0.0
        self._latencies: deque[float] = deque(maxlen=_LATENCY_SAMPLES)
        self._log_limiter = RepeatLimiter()
        # Reply addresses lately written to, those suspected and those known to be gone: a reply
        # to a caller whose node died makes RabbitMQ close the connection.
        self._recent_replies: deque[str] = deque(maxlen=64)
        self._suspects: set[str] = set()
        self._gone: dict[str, float] = {}
        self._suspects_until = 0.0
        self._probe: str | None = None
        self._probe_lock = threading.Lock()
        self._consumer_tag: str | None = None
        self._broadcast_tag: str | None = None
        self._work: queue.SimpleQueue[Incoming | None] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._instances: list[object] = []
        self._workers: list[threading.Thread] = []
        self._io_thread: threading.Thread | None = None
        self._accepting = False
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._busy = 0
        self._busy_lock = threading.Condition()
        #: Counters for operators: calls answered, failed (unexpected, expected), expired,
        #: refused, requeued; repeats answered from the table of completed calls; requests
        #: redelivered; reconnections; replies the broker refused (the caller was gone).
        self.stats = {
            "calls": 0, "errors": 0, "expected_errors": 0, "expired": 0, "bad_requests": 0,
            "requeued": 0, "duplicates": 0, "redelivered": 0, "reconnects": 0,
            "reply_failures": 0, "gone_callers": 0,
        }

    # -- registration ----------------------------------------------------------------------------

    def register_function(
        self, func: _F, name: str | None = None, *, at_most_once: bool = False,
        expected: Iterable[type[BaseException]] = (),
    ) -> _F:
        """Serve ``func`` as ``name`` (default: its ``__name__``); returns ``func``.

        ``at_most_once=True`` acknowledges each request before running it, for work that must
        never run twice: a crash mid-call then loses the call instead of repeating it.
        ``expected`` names exceptions that are part of the method's contract (``Overdrawn``):
        they go back to the caller as usual but are logged at INFO, not as failures.

        Raises:
            ValueError: ``func`` is not callable, or the name is empty or private.
        """
        self.registry.add_function(func, name, at_most_once=at_most_once, expected=expected)
        return func

    def register_instance(
        self, obj: object, name: str, *, at_most_once: bool = False,
        expected: Iterable[type[BaseException]] = (),
    ) -> list[str]:
        """Serve every public method of ``obj`` as ``name.method``; returns the names.

        The instance's ``on_init()`` runs before the server starts consuming and its
        ``on_tear_down()`` after it stops; neither is callable remotely.
        """
        names = self.registry.add_instance(obj, name, at_most_once=at_most_once, expected=expected)
        self._instances.append(obj)
        return names

    register_class = register_instance

    @overload
    def expose(self, func: _F, /) -> _F: ...

    @overload
    def expose(
        self, name: str | None = None, /, *, at_most_once: bool = False,
        expected: Iterable[type[BaseException]] = (),
    ) -> Callable[[_F], _F]: ...

    def expose(
        self, func_or_name: Any = None, /, *, at_most_once: bool = False,
        expected: Iterable[type[BaseException]] = (),
    ) -> Any:
        """Decorator: ``@server.expose``, ``@server.expose("name")``, with ``at_most_once=True``
        or ``expected=(Overdrawn,)``."""
        if func_or_name is None or isinstance(func_or_name, str):
            name = func_or_name
            return lambda func: self.register_function(
                func, name, at_most_once=at_most_once, expected=expected)
        return self.register_function(func_or_name)

    # -- running ---------------------------------------------------------------------------------

    @property
    def identity(self) -> str:
        """How this server names itself in replies (their ``app_id``): id, host and pid."""
        return f"{self.server_id}@{socket.gethostname()}:{os.getpid()}"

    @property
    def running(self) -> bool:
        """Whether the server is consuming."""
        return not self._stopped.is_set()

    @property
    def dead_letter_queue(self) -> str:
        """Where a quorum request queue sends a request delivered ``delivery_limit`` times."""
        return f"{self.server_id}.dead"

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """``(host, port)`` of the metrics and health endpoint while running, else None."""
        served = self._metrics_server
        return None if served is None else (served.host, served.port)

    def start(self) -> None:
        """Connect, declare the queue and consume in background threads; return once consuming.

        Raises:
            rpc.ConnectionError: the broker stayed unreachable for ``connect_retry`` seconds.
            RuntimeError: the server is already running.
            ValueError: a setting changed since construction is not valid.
        """
        if self.running:
            raise RuntimeError("the server is already running")
        _check_queue_type(self.queue_type)
        if self.queue_type == "quorum" and len(self.dead_letter_queue.encode()) > 255:
            raise ValueError("a quorum server_id must leave room for '.dead' within 255 bytes")
        self._failover = Failover(self.url, self.failover)
        self._stopping.clear()
        self._hooks("on_init")
        try:
            self._start_metrics()
            self._link = self._open(self.connect_retry)
        except BaseException:
            self._stop_metrics()
            self._hooks("on_tear_down")
            raise
        self._started_at = time.monotonic()
        self._stopped.clear()
        self._accepting = True
        self._workers = [
            threading.Thread(target=self._work_loop, name=f"rpc-worker-{self.server_id}-{i}",
                             daemon=True)
            for i in range(self.concurrency)
        ]
        for worker in self._workers:
            worker.start()
        self._io_thread = threading.Thread(
            target=self._io_loop, name=f"rpc-server-io-{self.server_id}", daemon=True,
        )
        self._io_thread.start()
        metrics = self.metrics_address
        logger.info(
            "serving %r from %s (queue %r, %s; pid %d; %d methods; concurrency %d; prefetch %d%s)",
            self.server_id, mask_url(self._failover.current or self.url), self.server_id,
            self.queue_type, os.getpid(), len(self.registry), self.concurrency,
            self.prefetch_count, f"; metrics on :{metrics[1]}" if metrics else "",
        )

    def serve(self) -> None:
        """Run until :meth:`stop`, SIGINT or SIGTERM; the signals stop gracefully.

        When the application has configured no logging, the ``rpc`` logger gets a plain stderr
        handler at INFO first, so that a server run from a script says what it does.
        """
        _default_logging()
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda *_: self._stopping.set())
        try:
            self.start()
            while not self._stopping.wait(0.5):
                pass
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop(self, grace: float | None = DEFAULT_GRACE) -> int:
        """Stop consuming, finish the calls in flight (up to ``grace`` s), then disconnect.

        Requests prefetched but not started are requeued for another server. Returns how many
        calls were still running when the grace ran out: the broker redelivers those.
        """
        if self._stopped.is_set():
            return 0
        self._stopping.set()
        self._accepting = False
        link = self._link
        if link is not None and not link.closed:
            try:
                for tag in (self._consumer_tag, self._broadcast_tag):
                    if tag is not None:
                        link.cancel(tag)
            except ConnectionLost:
                pass
        for _ in self._workers:
            self._work.put(None)
        deadline = None if grace is None else time.monotonic() + grace
        for worker in self._workers:
            worker.join(None if deadline is None else max(deadline - time.monotonic(), 0))
        with self._busy_lock:  # coroutine handlers still running on the loop
            self._busy_lock.wait_for(
                lambda: self._busy == 0,
                None if deadline is None else max(deadline - time.monotonic(), 0))
            abandoned = self._busy
        if abandoned:
            logger.warning("stopping %r with %d call(s) still running after the %s s grace: the "
                           "broker will redeliver them", self.server_id, abandoned, grace)
        if self._link is not None:
            self._link.close()  # also wakes the I/O thread; unacked deliveries go back to the queue
        if self._io_thread is not None:
            self._io_thread.join(timeout=5)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            assert self._loop_thread is not None
            self._loop_thread.join(timeout=5)
            self._loop.close()
            self._loop = self._loop_thread = None
        self._stop_metrics()
        self._stopped.set()
        self._hooks("on_tear_down")
        stats = self.stats
        logger.info("stopped serving %r after %.0f s: %d calls, %d errors, %d refused",
                    self.server_id, time.monotonic() - self._started_at, stats["calls"],
                    stats["errors"] + stats["expected_errors"], stats["bad_requests"])
        return abandoned

    @property
    def prefetch_count(self) -> int:
        """The prefetch start() uses: ``prefetch``, or ``PREFETCH_PER_WORKER * concurrency``
        plus ``async_concurrency`` when a coroutine handler is registered."""
        if self.prefetch is not None:
            return self.prefetch
        extra = self.async_concurrency if self.registry.has_async() else 0
        return PREFETCH_PER_WORKER * self.concurrency + extra

    def status(self) -> dict[str, Any]:
        """This instance's figures for operators (``system.stats``, ``rpc status``).

        ``queue_depth`` asks the broker (one round trip, at most 2 s); None when it cannot tell.
        """
        with self._busy_lock:
            in_flight = self._busy
        samples = sorted(self._latencies)
        stats = self.stats
        return {
            "server_id": self.server_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "uptime": round(time.monotonic() - self._started_at, 3) if self.running else 0.0,
            "node": self._failover.node() if self._failover and self.running else None,
            "queue_type": self.queue_type,
            "calls": stats["calls"] + stats["errors"] + stats["expected_errors"],
            "errors": stats["errors"],
            "expected_errors": stats["expected_errors"],
            "bad_requests": stats["bad_requests"],
            "duplicates": stats["duplicates"],
            "reconnects": stats["reconnects"],
            "in_flight": in_flight,
            "p50_ms": _percentile(samples, 0.50),
            "p99_ms": _percentile(samples, 0.99),
            "queue_depth": self._queue_depth(),
        }

    def _queue_depth(self) -> int | None:
        link = self._link
        if link is None or link.closed or not self.running:
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
        if not got.wait(2.0) or answer[0] is None:
            return None
        return answer[0].messages

    def _hooks(self, name: str) -> None:
        for obj in self._instances:
            hook = getattr(type(obj), name, None)
            if callable(hook):
                hook(obj)

    # -- metrics and probes ----------------------------------------------------------------------

    def _start_metrics(self) -> None:
        if self.metrics_port is None:
            return
        from .. import metrics

        if metrics.available():
            self._metrics = metrics.ServerMetrics(self.server_id)
        try:
            self._metrics_server = self._bind_metrics()
        except OSError as exc:
            if not self.metrics_port:
                raise
            # A reload's new worker starts while its predecessor still holds the port.
            logger.warning("%s; retrying in the background", exc)
            threading.Thread(target=self._bind_metrics_later, daemon=True,
                             name=f"rpc-metrics-bind-{self.server_id}").start()

    def _bind_metrics(self) -> Any:
        from .. import metrics

        assert self.metrics_port is not None
        return metrics.MetricsServer(
            self.metrics_port, host=self.metrics_host, healthy=self._healthy, ready=self._ready)

    def _bind_metrics_later(self) -> None:
        deadline = time.monotonic() + METRICS_BIND_RETRY
        while not self._stopping.wait(0.25) and time.monotonic() < deadline:
            try:
                served = self._bind_metrics()
            except OSError:
                continue
            if self._stopping.is_set():
                served.close()
            else:
                self._metrics_server = served
                logger.info("serving metrics on %s:%d", served.host, served.port)
            return
        if not self._stopping.is_set():
            logger.error("gave up serving metrics on port %s", self.metrics_port)

    def _stop_metrics(self) -> None:
        if self._metrics_server is not None:
            self._metrics_server.close()
        self._metrics_server = self._metrics = None

    def _healthy(self) -> bool:
        """Alive: the I/O thread runs and its connection is open (or being reopened briefly)."""
        io = self._io_thread
        link = self._link
        return io is not None and io.is_alive() and link is not None and not link.closed

    def _ready(self) -> bool:
        """Ready: consuming requests now."""
        link = self._link
        return (self._accepting and link is not None and not link.closed
                and self._consumer_tag is not None)

    # -- connecting ------------------------------------------------------------------------------

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

    def _open(self, retry_for: float) -> Link:
        assert self._failover is not None
        conn = open_connection(
            self._failover, heartbeat=self.heartbeat, retry_for=retry_for,
            name=f"rpc-server {self.server_id}", ssl=self._ssl, cancel=self._stopping,
        )
        try:
            link = self._setup(conn)
        except amqp.exceptions.AccessRefused as exc:
            conn.release()
            raise AccessRefused(f"the broker refused {self.server_id!r} its queue: {exc}") from None
        except amqp.exceptions.PreconditionFailed as exc:
            conn.release()
            raise ConnectionError(
                f"queue {self.server_id!r} exists with other arguments than this server's "
                f"({self.queue_type}: {self.request_queue_arguments()}): {exc}. Delete it, or "
                f"give the server the queue's own queue_type and queue_arguments") from None
        except amqp.exceptions.AMQPError as exc:
            conn.release()
            raise ConnectionError(f"cannot set up {self.server_id!r}: {exc}") from None
        except Exception:
            conn.release()
            raise
        return link

    def _setup(self, conn: Any) -> Link:
        """Declare, bind and consume: the request queue's consumer comes last, once all is set."""
        link = open_link(conn, self._on_message, on_cancel=self._on_cancel,
                         max_body=self.max_message_size)
        if self.queue_type == "quorum":
            link.declare_queue(self.dead_letter_queue, durable=True,
                               arguments={"x-queue-type": "quorum"})
        link.declare_queue(self.server_id, durable=True, arguments=self.request_queue_arguments())
        broadcasts = link.broadcast_queue(protocol.broadcast_exchange(self.server_id))
        self._broadcast_tag = link.consume(broadcasts, prefetch=self.prefetch_count)
        self._consumer_tag = link.consume(self.server_id, prefetch=self.prefetch_count)
        return link

    def _on_cancel(self, tag: str) -> None:
        if not self._stopping.is_set():
            logger.error("the broker cancelled consumer %s of %r (queue deleted?); "
                         "reconnecting to declare it again", tag, self.server_id)
            assert self._link is not None
            self._link.close()

    def _io_loop(self) -> None:
        tick = max(min(self.heartbeat / 4, 1.0), 0.05) if self.heartbeat else 1.0
        while not self._stopped.is_set():
            link = self._link
            assert link is not None
            try:
                while not (self._stopping.is_set() and self._idle()):
                    link.read(tick)
                    link.tick()
                return
            except ConnectionLost as exc:
                if self._stopping.is_set():
                    return
                self._consumer_tag = None
                if exc.code == _INTERNAL_ERROR:
                    # RabbitMQ does this on a reply to a caller whose node is gone: the request
                    # comes back redelivered, and is then acknowledged before its reply.
                    self._suspect_replies()
                    self.stats["reply_failures"] += 1
                    if self._metrics is not None:
                        self._metrics.reply_failed()
                    logger.warning("server %r: the broker closed the connection on a reply (%s); "
                                   "its caller is presumably gone", self.server_id, exc)
                else:
                    logger.warning("server %r lost its connection: %s", self.server_id, exc)
                self._reconnect()

    def _reconnect(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                link = self._open(retry_for=30.0)
                if self._stopping.is_set():  # stop() came while connecting: serve nothing more
                    link.close()
                    return
                self._link = link
                self._recent_replies.clear()
                self.stats["reconnects"] += 1
                if self._metrics is not None:
                    self._metrics.reconnected()
                assert self._failover is not None
                logger.info("server %r reconnected to %s", self.server_id,
                            mask_url(self._failover.current or self.url))
                return
            except Exception as exc:
                # The next attempt goes to the next node; back off only as failures repeat.
                failures += 1
                logger.error("server %r cannot reconnect: %s", self.server_id, exc)
                self._stopping.wait(min(0.25 * 2 ** (failures - 1), 5.0))

    def _idle(self) -> bool:
        with self._busy_lock:
            return self._busy == 0 and self._work.empty()

    # -- handling requests -----------------------------------------------------------------------

    def _on_message(self, msg: Incoming) -> None:
        """On the I/O thread: cheap checks, then hand the request to a worker."""
        link = msg.link
        if not self._accepting:
            self.stats["requeued"] += 1
            self._requeue(link, msg)
            return
        props = msg.props
        if props.get("type") == protocol.REPLY_TYPE:
            logger.warning("refused a reply published to the request queue %r", self.server_id)
            self.stats["bad_requests"] += 1
            self._observe(_UNKNOWN_METHOD, "rejected")
            link.reject(msg.delivery_tag, requeue=False)  # type: ignore[arg-type]
            return
        if self._expired(msg):
            self.stats["expired"] += 1
            self._observe(_UNKNOWN_METHOD, "expired")
            link.ack(msg.delivery_tag)  # type: ignore[arg-type]
            return
        with self._busy_lock:
            self._busy += 1
        if self._metrics is not None:
            self._metrics.in_flight(1)
        self._work.put(msg)

    def _observe(self, method: str, outcome: str, duration: float | None = None) -> None:
        if self._metrics is not None:
            self._metrics.call(method, outcome, duration)

    @staticmethod
    def _expired(msg: Incoming) -> bool:
        deadline = protocol.deadline_of(msg.props.get("headers"))
        return deadline is not None and deadline < time.time()

    def _requeue(self, link: Link, msg: Incoming) -> None:
        if not link.closed:
            try:
                link.reject(msg.delivery_tag, requeue=True)  # type: ignore[arg-type]
            except ConnectionLost:
                pass

    def _work_loop(self) -> None:
        while True:
            msg = self._work.get()
            if msg is None:
                return
            outcome: str | None = "requeued"
            try:
                if self._accepting:
                    outcome = self._handle(msg)
                else:
                    self._requeue(msg.link, msg)
            except ConnectionLost as exc:
                logger.warning("reply to %s not sent, the request will be redelivered: %s",
                               msg.props.get("correlation_id"), exc)
            except Exception:
                logger.exception("unexpected error handling a request")
            finally:
                if outcome is not None:  # None: a coroutine handler runs on, on the loop
                    self._account(outcome)

    def _account(self, outcome: str) -> None:
        with self._busy_lock:
            self._busy -= 1
            self.stats[outcome] += 1
            self._busy_lock.notify_all()
        if self._metrics is not None:
            self._metrics.in_flight(-1)

    def _handle(self, msg: Incoming) -> str | None:
        """Run one request (or answer a repeat of one) and reply; returns the stats key, or
        None when a coroutine handler goes on running on the server's loop."""
        link = msg.link
        tag: int | None = msg.delivery_tag
        props = msg.props
        deadline = protocol.deadline_of(props.get("headers"))
        if deadline is not None and deadline < time.time():  # it waited here past its deadline
            link.ack(tag)  # type: ignore[arg-type]
            self._observe(_UNKNOWN_METHOD, "expired")
            return "expired"
        if msg.redelivered:
            self.stats["redelivered"] += 1
            if self._metrics is not None:
                self._metrics.redelivered()
        key = self._repeat_key(msg)
        if key is not None:
            wait = None if deadline is None else max(deadline - time.time(), 0.0)
            done = self._completed.begin(key, wait)
            if done is not None:
                if self._metrics is not None:
                    self._metrics.duplicate()
                logger.info("answered a repeat of request %s from the completed calls",
                            props.get("message_id"))
                self._reply(msg, done.body, done.content_type, tag)
                return "duplicates"
        call = _Call(msg, key, tag, self.accept, deadline)
        try:
            try:
                self._prepare(call)
            except BaseException as exc:  # a bad request: its error is the reply
                return self._finish(call, None, exc)
            assert call.target is not None and call.request is not None and call.info is not None
            if call.target.is_async and self.async_concurrency:
                self._schedule(call)
                return None
            try:
                result = self._run(call.target.func, call.request, call.info)
            except BaseException as exc:  # a handler's SystemExit must not end a worker either
                return self._finish(call, None, exc)
            return self._finish(call, result, None)
        except BaseException:
            if key is not None:
                self._completed.finish(key, None)
            raise

    def _repeat_key(self, msg: Incoming) -> tuple[str, int] | None:
        """What identifies a repeat of this request: its message id and body."""
        if not self._completed.enabled:
            return None
        message_id = msg.props.get("message_id")
        if not isinstance(message_id, str) or not message_id:
            return None
        return message_id, hash(msg.body)

    def _prepare(self, call: _Call) -> None:
        """Decode and check a request, and resolve its method.

        Raises:
            BadRequest, MethodNotFound, InvalidArguments: the request cannot run.
        """
        msg = call.msg
        if msg.oversize:
            raise BadRequest(f"request body of {msg.oversize} bytes exceeds this server's "
                             f"limit of {self.max_message_size} bytes")
        request = protocol.parse_request(
            serialization.decode(msg.body, msg.props.get("content_type"), self.accept))
        call.method = request.method
        call.target = target = self.registry.resolve(request.method)
        target.check_arguments(request.args, request.kwargs)
        call.request = request
        call.info = self._call_info(msg, request.method, call.deadline)
        if self._metrics is not None:
            self._observe_queued(msg.props)
        if target.at_most_once:
            msg.link.ack(call.tag)  # type: ignore[arg-type]
            call.tag = None

    def _finish(self, call: _Call, result: Any, exc: BaseException | None) -> str:
        """Log, count, encode and remember a call's outcome, and reply; returns its stats key."""
        elapsed = time.perf_counter() - call.started
        method, target, info = call.method, call.target, call.info
        if exc is None:
            ok = True
            body = protocol.result_body(result)
            outcome = "calls"
        else:
            ok = False
            body = protocol.error_reply(exc, call.reply_type,
                                       include_traceback=self.send_tracebacks)
            outcome = self._log_failure(exc, call.msg, method, target, info, elapsed)
            if info is not None and self.on_error is not None:
                self._report(exc, info)
        self._latencies.append(elapsed)
        if self._metrics is not None:
            self._observe(method if target is not None and method else _UNKNOWN_METHOD,
                          _METRIC_OUTCOME[outcome], elapsed if info is not None else None)
        payload, reply_type = protocol.encode_reply(body, call.reply_type, ok=ok,
                                                    include_traceback=self.send_tracebacks)
        if ok and logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s ok in %.2f ms", method, elapsed * 1000)
        if not ok and not call.msg.props.get("reply_to"):
            logger.warning("cast %s failed: %s", method or "<undecodable request>",
                           body["error"]["message"])
        if call.key is not None:
            self._completed.finish(call.key, dedup.Completed(payload, reply_type, time.monotonic()))
        self._reply(call.msg, payload, reply_type, call.tag)
        return outcome

    def _schedule(self, call: _Call) -> None:
        """Run a coroutine handler on the server's loop; the worker thread goes back at once."""
        future = asyncio.run_coroutine_threadsafe(self._run_async(call), self._event_loop())
        future.add_done_callback(lambda done: self._after_async(call, done))

    async def _run_async(self, call: _Call) -> Any:
        assert call.target is not None and call.request is not None and call.info is not None
        assert self._async_slots is not None
        async with self._async_slots:
            token = context.enter(call.info)
            try:
                with tracing.server_span(call.info.headers, self.server_id, call.info.method):
                    return await call.target.func(*call.request.args, **call.request.kwargs)
            finally:
                context.leave(token)

    def _after_async(self, call: _Call, done: concurrent.futures.Future[Any]) -> None:
        """Reply to a coroutine handler's call, on the loop's thread once it has ended."""
        outcome = "requeued"
        try:
            try:
                error = done.exception()
            except concurrent.futures.CancelledError as cancelled:
                error = cancelled
            outcome = self._finish(call, None if error else done.result(), error)
        except ConnectionLost as exc:
            if call.key is not None:
                self._completed.finish(call.key, None)
            logger.warning("reply to %s not sent, the request will be redelivered: %s",
                           call.msg.props.get("correlation_id"), exc)
        except Exception:
            logger.exception("unexpected error replying to a request")
        finally:
            self._account(outcome)

    def _observe_queued(self, props: dict[str, Any]) -> None:
        """Time from publish to start: the deadline less the timeout the caller gave it."""
        deadline = protocol.deadline_of(props.get("headers"))
        expiration = props.get("expiration")
        if deadline is not None and isinstance(expiration, str) and expiration.isdigit():
            self._metrics.queued(max(time.time() - (deadline - int(expiration) / 1000), 0.0))

    def _log_failure(
        self, exc: BaseException, msg: Incoming, method: str | None, target: Method | None,
        info: CallInfo | None, elapsed: float,
    ) -> str:
        """Log a failed call as what it is; returns its stats key. Repeats are rate-limited."""
        shown = method or "<undecodable request>"
        if isinstance(exc, _REFUSALS) and info is None:
            level, outcome, trace = logging.WARNING, "bad_requests", False
        elif target is not None and isinstance(exc, target.expected):
            level, outcome, trace = logging.INFO, "expected_errors", False
        else:
            level, outcome, trace = logging.ERROR, "errors", True
        if not logger.isEnabledFor(level):
            return outcome
        suppressed = self._log_limiter.allow((shown, type(exc)))
        if suppressed is None:
            return outcome
        props = msg.props
        context_ids = ""
        if info is not None and info.context.get("request_id") is not None:
            context_ids = f" request_id={info.context['request_id']}"
        more = f" ({suppressed} more like it suppressed)" if suppressed else ""
        verb = "refused" if outcome == "bad_requests" else "raised"
        logger.log(
            level, "%s %s %s: %s (correlation_id=%s%s, %.2f ms)%s", shown, verb,
            type(exc).__name__, _first_line(exc), props.get("correlation_id"), context_ids,
            elapsed * 1000, more, exc_info=exc if trace else None,
            extra={"rpc_method": shown, "correlation_id": props.get("correlation_id"),
                   "outcome": outcome},
        )
        return outcome

    def _suspect_replies(self) -> None:
        """Work out which reply address made the broker close the connection.

        When every recent reply went to one address, that is the one. Otherwise each becomes a
        suspect, and the next reply to a suspect is sent alone and given a moment: the broker
        closes the connection again only if its caller is gone.
        """
        now = time.monotonic()
        recent = set(self._recent_replies)
        self._recent_replies.clear()
        if self._probe is not None:
            gone = {self._probe}
        elif len(recent) == 1:
            gone = recent
        else:
            gone = set()
            self._suspects |= recent
            self._suspects_until = now + _GONE_CALLER_TTL
        self._suspects -= gone
        self._gone = {to: until for to, until in self._gone.items() if until > now}
        for to in gone:
            logger.warning("server %r: replies to %s... fail: its caller is gone", self.server_id,
                           to[:40])
            self._gone[to] = now + _GONE_CALLER_TTL

    def _probe_reply(self, link: Link, reply_to: str, payload: bytes,
                     reply_props: dict[str, Any]) -> None:
        """Reply to a suspect address alone, and clear it if the connection survives."""
        with self._probe_lock:
            self._probe = reply_to
            try:
                link.publish(reply_to, payload, reply_props)
                self._stopping.wait(_PROBE_WAIT)
                if not link.closed:
                    self._suspects.discard(reply_to)
            finally:
                self._probe = None

    def _reply(self, msg: Incoming, payload: bytes, reply_type: str, tag: int | None) -> None:
        """Publish the reply and acknowledge the request, in one write where that is safe."""
        link = msg.link
        props = msg.props
        reply_to = props.get("reply_to")
        if not reply_to or not protocol.is_reply_address(reply_to):
            if reply_to:
                logger.warning("not replying to %r: not a reply address", reply_to[:100])
            if tag is not None:
                link.ack(tag)
            return
        if self._gone and reply_to in self._gone:
            self.stats["gone_callers"] += 1
            if tag is not None:
                link.ack(tag)
            return
        if msg.redelivered:
            if tag is not None:
                # Its first reply may have been the one that made the broker close the
                # connection (a caller that is gone): acknowledge first, so it cannot loop.
                link.ack(tag)
                tag = None
        self._recent_replies.append(reply_to)
        reply_props = protocol.reply_properties(props.get("correlation_id"), reply_type,
                                                self.identity)
        if self._suspects and reply_to in self._suspects:
            if time.monotonic() > self._suspects_until:
                self._suspects.clear()
        if reply_to in self._suspects:
            if tag is not None:
                link.ack(tag)
            self._probe_reply(link, reply_to, payload, reply_props)
            return
        link.publish(reply_to, payload, reply_props, ack=tag)

    def _call_info(self, msg: Incoming, method: str, deadline: float | None) -> CallInfo:
        props = msg.props
        headers = props.get("headers")
        ctx, stack = context.incoming(headers)
        return CallInfo(
            server_id=self.server_id, method=method,
            correlation_id=props.get("correlation_id"), message_id=props.get("message_id"),
            deadline=deadline, redelivered=msg.redelivered,
            user_id=props.get("user_id"), context=ctx, call_stack=stack, headers=headers or {},
        )

    def _run(self, func: Callable[..., Any], request: protocol.Request, info: CallInfo) -> Any:
        """Run a handler with ``current_call()`` set; coroutines run on the server's loop."""
        token = context.enter(info)
        try:
            with tracing.server_span(info.headers, self.server_id, info.method):
                result = func(*request.args, **request.kwargs)
                if inspect.isawaitable(result):
                    result = self._await(result, info)
        finally:
            context.leave(token)
        return result

    def _await(self, awaitable: Any, info: CallInfo) -> Any:
        async def run() -> Any:
            token = context.enter(info)
            try:
                return await awaitable
            finally:
                context.leave(token)

        return asyncio.run_coroutine_threadsafe(run(), self._event_loop()).result()

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._busy_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, daemon=True,
                                          name=f"rpc-server-loop-{self.server_id}")
                thread.start()
                self._loop, self._loop_thread = loop, thread
                self._async_slots = asyncio.Semaphore(max(self.async_concurrency, 1))
            return self._loop

    def _report(self, exc: BaseException, info: CallInfo) -> None:
        assert self.on_error is not None
        try:
            self.on_error(exc, info)
        except Exception:
            logger.exception("the server's on_error hook raised")

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Server server_id={self.server_id!r} {mask_url(self.url)} {state}>"


class _Call:
    """One request on its way through the server: what is known of it so far."""

    __slots__ = ("msg", "key", "tag", "deadline", "reply_type", "started", "method", "target",
                 "request", "info")

    def __init__(
        self, msg: Incoming, key: tuple[str, int] | None, tag: int | None, accept: frozenset[str],
        deadline: float | None,
    ) -> None:
        self.msg = msg
        self.deadline = deadline
        self.key = key
        #: The delivery tag still to acknowledge (None once acknowledged).
        self.tag = tag
        self.reply_type = protocol.reply_content_type(msg.props.get("content_type"), accept)
        self.started = time.perf_counter()
        self.method: str | None = None
        self.target: Method | None = None
        self.request: protocol.Request | None = None
        self.info: CallInfo | None = None


_METRIC_OUTCOME = {
    "calls": "ok", "errors": "error", "expected_errors": "expected_error",
    "bad_requests": "bad_request",
}


def _check_queue_type(queue_type: str) -> QueueType:
    if queue_type not in ("classic", "quorum"):
        raise ValueError(f"queue_type must be 'classic' or 'quorum', not {queue_type!r}")
    return queue_type  # type: ignore[return-value]


def _percentile(ordered: list[float], fraction: float) -> float | None:
    """The ``fraction`` percentile of sorted durations, in milliseconds (None without any)."""
    if not ordered:
        return None
    return round(ordered[min(int(len(ordered) * fraction), len(ordered) - 1)] * 1000, 3)


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0][:500] if text else ""


def _default_logging() -> None:
    """A plain stderr handler for the ``rpc`` logger when the application configured none."""
    package = logging.getLogger("rpc")
    if logging.getLogger().handlers or any(
            not isinstance(h, logging.NullHandler) for h in package.handlers):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package.addHandler(handler)
    if package.level == logging.NOTSET:
        package.setLevel(logging.INFO)
