"""The public servers: registration, settings and lifecycle, blocking (:class:`Server`) or awaited
(:class:`AsyncServer`).

Both hold what lasts across restarts (the options, the methods, the counters, the table of
completed calls) and start a :class:`~rpc.server.runtime.Runtime` for each run: one I/O thread
reads the connection (and runs a request itself while no other is in flight, handing reading to
a new thread should it last); ``concurrency`` worker threads run the plain handlers, and each
publishes its reply and acknowledges the request in one write; ``async def`` handlers run on
an event loop, the server's own or, with :meth:`Server.serve_async` and :class:`AsyncServer`,
the application's. A request is acknowledged only after its reply is published (at-least-once);
one whose ``rpc-deadline`` has passed is acknowledged and skipped before its body is even
decoded. A request seen again (a proxy's retry, a redelivery) is answered from the table of
completed calls instead of running twice, and a lost connection moves on to the next node of a
cluster.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Self, TypeVar, overload

from ..core import dedup, serialization
from ..core.context import CallInfo
from ..defaults import (
    DEFAULT_ASYNC_CONCURRENCY,
    DEFAULT_GRACE,
    DEFAULT_HEARTBEAT,
    DEFAULT_MAX_MESSAGE_SIZE,
    SERVER_CONNECT_RETRY,
)
from ..transport.connect import FailoverStrategy
from ..transport.forks import renew_in_child
from ..transport.link import Link
from ..transport.urls import BrokerURL, mask_url, resolve_url
from .failures import LOGGER_NAME, FailureLog, default_logging
from .introspection import SystemMethods
from .options import (
    DEFAULT_DELIVERY_LIMIT,
    DEFAULT_METRICS_HOST,
    ErrorHook,
    Option,
    QueueType,
    ServerOptions,
)
from .registry import Registry
from .runtime import Runtime
from .status import Stats, status_report

logger = logging.getLogger(LOGGER_NAME)

_F = TypeVar("_F", bound=Callable[..., Any])
_T = TypeVar("_T")


class BaseServer:
    """What :class:`Server` and :class:`AsyncServer` share: settings, registration and status.

    The constructor's arguments are described on :class:`Server`.
    """

    url = Option[str]()
    server_id = Option[str]()
    #: Content types a request may come in.
    accept = Option[frozenset[str]]()
    concurrency = Option[int]()
    async_concurrency = Option[int]()
    #: Requests the broker may send ahead; None: see :attr:`prefetch_count`.
    prefetch = Option[int | None]()
    heartbeat = Option[float]()
    send_tracebacks = Option[bool]()
    connect_retry = Option[float]()
    max_message_size = Option[int]()
    on_error = Option[ErrorHook | None]()
    queue_arguments = Option[Mapping[str, Any] | None]()
    queue_type = Option[QueueType]()
    delivery_limit = Option[int]()
    failover = Option[FailoverStrategy]()
    #: Port of the metrics and health endpoint (None: none).
    metrics_port = Option[int | None]()
    metrics_host = Option[str]()

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
        metrics_host: str = DEFAULT_METRICS_HOST,
        ssl: dict[str, Any] | None = None,
        hostname: str | None = None,
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
        vhost: str | None = None,
    ) -> None:
        names = set(accept) if accept is not None else {"msgpack", "json"}
        if serializer is not None:
            names.add(serializer)
        self._options = ServerOptions(
            url=resolve_url(url, hostname=hostname, port=port, username=username,
                            password=password, vhost=vhost),
            server_id=server_id, accept=serialization.accept_set(names), concurrency=concurrency,
            async_concurrency=async_concurrency, prefetch=prefetch, heartbeat=heartbeat,
            send_tracebacks=send_tracebacks, connect_retry=connect_retry,
            max_message_size=max_message_size, on_error=on_error,
            queue_arguments=queue_arguments, queue_type=queue_type, delivery_limit=delivery_limit,
            failover=failover, metrics_port=metrics_port, metrics_host=metrics_host, ssl=ssl,
        )
        #: The methods this server dispatches to.
        self.registry = Registry()
        if introspection:
            self.registry.add_instance(SystemMethods(self), "system")
        self._stats = Stats()
        self._completed = dedup.CompletedCalls(dedup_size, dedup_ttl)
        self._failures = FailureLog()
        self._instances: list[object] = []
        self._runtime: Runtime | None = None
        self._starting: Runtime | None = None
        # One start or stop at a time; a second stop waits for the first and does nothing.
        self._lifecycle = threading.Lock()
        # Called (from any thread) each time the server has stopped.
        self._on_stopped: list[Callable[[], None]] = []
        renew_in_child(self, BaseServer._forked)

    def _forked(self) -> None:
        """In a child process just forked, where the connection and the threads are the
        parent's: leave the connection to it (stopping here would close it there, and the
        parent's requests would go back to the queue) and start afresh, not running (a
        :meth:`start` here connects anew). Locks a parent thread held are made anew."""
        runtime = self._runtime
        self._runtime = self._starting = None
        self._lifecycle = threading.Lock()
        self._stats = Stats()
        completed = self._completed
        self._completed = dedup.CompletedCalls(completed.size, completed.ttl, completed.max_bytes)
        self._failures = FailureLog()
        if runtime is not None and runtime.link is not None:
            runtime.link.abandon()

    # -- settings ----------------------------------------------------------------------------------

    @property
    def options(self) -> ServerOptions:
        """The server's settings; assigning new ones (``dataclasses.replace(server.options,
        ...)``) takes effect at the next start.

        Raises:
            RuntimeError: on assignment while the server runs.
        """
        return self._options

    @options.setter
    def options(self, value: ServerOptions) -> None:
        if self._runtime is not None or self._starting is not None:
            raise RuntimeError("a running server's settings cannot change: stop() it first")
        self._options = value

    @property
    def stats(self) -> dict[str, int]:
        """Counters for operators: calls answered, failed (unexpected, expected), expired,
        refused, requeued; repeats answered from the table of completed calls; requests
        redelivered; reconnections; replies the broker refused (the caller was gone), and
        requests of callers known to be gone; streams started and the items they sent; requests
        their callers cancelled (running, or before they ran). Kept across restarts."""
        return self._stats.counts

    # -- registration ------------------------------------------------------------------------------

    def register_function(
        self, func: _F, name: str | None = None, *, at_most_once: bool = False,
        expected: Iterable[type[BaseException]] = (),
    ) -> _F:
        """Serve ``func`` as ``name`` (default: its ``__name__``); returns ``func``.

        ``at_most_once=True`` acknowledges each request before running it, for work that must
        never run twice: a crash mid-call then loses the call instead of repeating it.
        ``expected`` names exceptions that are part of the method's contract (``Overdrawn``):
        they go back to the caller as usual but are logged at INFO, not as failures.

        A generator function (or an async generator) *streams*: callers iterate it with
        ``proxy.stream.name(...)``, and a plain call to it is refused. Its items go out as the
        caller's credit allows, the generator paused meanwhile; a plain generator holds its
        worker thread for the stream's whole life (pauses included), an async generator runs
        on the event loop within ``async_concurrency``. A caller that stops listening, or the
        call's deadline, closes the generator (its ``finally`` runs).

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

    # -- state -------------------------------------------------------------------------------------

    @property
    def identity(self) -> str:
        """How this server names itself in replies (their ``app_id``): id, host and pid."""
        return f"{self.server_id}@{socket.gethostname()}:{os.getpid()}"

    @property
    def running(self) -> bool:
        """Whether the server is consuming (from a start until its stop has finished)."""
        return self._runtime is not None

    @property
    def dead_letter_queue(self) -> str:
        """Where a quorum request queue sends a request delivered ``delivery_limit`` times."""
        return self._options.dead_letter_queue

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """``(host, port)`` of the metrics and health endpoint while running, else None."""
        runtime = self._runtime
        return None if runtime is None else runtime.metrics_address

    @property
    def prefetch_count(self) -> int:
        """The prefetch start() uses: ``prefetch``, or ``PREFETCH_PER_WORKER * concurrency``
        plus ``async_concurrency`` when a coroutine handler is registered."""
        return self._options.prefetch_count(self.registry.has_async())

    def request_queue_arguments(self) -> dict[str, Any] | None:
        """The request queue's arguments: those ``queue_type`` implies, then ``queue_arguments``."""
        return self._options.request_queue_arguments()

    def status(self) -> dict[str, Any]:
        """This instance's figures for operators (``system.stats``, ``rpc status``).

        ``queue_depth`` asks the broker (one round trip, at most 2 s); None when it cannot tell.
        """
        runtime = self._runtime
        options = self._options
        if runtime is None:
            return status_report(self._stats, server_id=options.server_id,
                                 queue_type=options.queue_type, uptime=0.0, node=None,
                                 in_flight=0, queue_depth=None)
        return status_report(
            self._stats, server_id=options.server_id, queue_type=options.queue_type,
            uptime=time.monotonic() - runtime.started_at, node=runtime.consumer.failover.node(),
            in_flight=runtime.in_flight.count, queue_depth=runtime.consumer.queue_depth(),
        )

    @property
    def _link(self) -> Link | None:
        """The current connection while running (tests cut it to see the server reconnect)."""
        runtime = self._runtime
        return None if runtime is None else runtime.link

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} server_id={self.server_id!r} {mask_url(self.url)} {state}>"

    # -- the lifecycle both faces drive ------------------------------------------------------------

    def _start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Connect, declare the queue and consume in background threads; return once consuming.
        Coroutine handlers run on ``loop`` (None: a loop of the server's own)."""
        with self._lifecycle:
            if self._runtime is not None:
                raise RuntimeError("the server is already running")
            runtime = Runtime(
                options=self._options, registry=self.registry, stats=self._stats,
                completed=self._completed, failures=self._failures, identity=self.identity,
                loop=loop,
            )
            self._starting = runtime
            try:
                self._hooks("on_init")
                try:
                    runtime.start()
                except BaseException:
                    self._hooks("on_tear_down")
                    raise
            finally:
                self._starting = None
            self._runtime = runtime
        options = runtime.options
        metrics = runtime.metrics_address
        logger.info(
            "serving %r from %s (queue %r, %s; pid %d; %d methods; concurrency %d; prefetch %d%s)",
            options.server_id, runtime.consumer.url, options.server_id, options.queue_type,
            os.getpid(), len(self.registry), options.concurrency, runtime.prefetch,
            f"; metrics on :{metrics[1]}" if metrics else "",
        )

    def _cancel_start(self) -> None:
        """Make a start that is still connecting give up (it raises rpc.ConnectionError)."""
        starting = self._starting
        if starting is not None:
            starting.stopping.set()

    def _stop(self, grace: float | None) -> int:
        """Stop consuming, finish the calls in flight (up to ``grace`` s), then disconnect;
        returns how many calls were still running when the grace ran out."""
        runtime = self._runtime
        if runtime is not None and runtime.loop.on_loop_thread():
            raise RuntimeError(
                "stop() would block the event loop that this server's coroutine handlers run "
                "on: cancel the task awaiting serve_async(), or await AsyncServer.stop()")
        with self._lifecycle:
            runtime = self._runtime
            if runtime is None:
                return 0
            try:
                abandoned = runtime.stop(grace)
            finally:
                self._runtime = None
                self._hooks("on_tear_down")
        counts = self._stats.counts
        logger.info("stopped serving %r after %.0f s: %d calls, %d errors, %d refused",
                    runtime.server_id, time.monotonic() - runtime.started_at, counts["calls"],
                    counts["errors"] + counts["expected_errors"], counts["bad_requests"])
        for listener in list(self._on_stopped):
            listener()
        return abandoned

    def _hooks(self, name: str) -> None:
        for obj in self._instances:
            hook = getattr(type(obj), name, None)
            if callable(hook):
                hook(obj)

    async def _start_on_loop(self, grace: float | None) -> None:
        """Start with coroutine handlers on the running loop; connecting happens off it.

        Cancelled while connecting, the start gives up (or, if it got through, the server stops
        within ``grace``) before the cancellation goes on.
        """
        loop = asyncio.get_running_loop()
        starting = loop.run_in_executor(None, self._start, loop)
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            self._cancel_start()
            try:
                await _uncancelled(starting)
            except Exception:
                pass  # the cancellation is what the caller hears of
            if self.running:
                await _uncancelled(loop.run_in_executor(None, self._stop, grace))
            raise

    async def _serve_on_loop(self, grace: float | None) -> None:
        """Wait until the server stops; cancelled, stop it within ``grace`` first (off the loop)."""
        loop = asyncio.get_running_loop()
        stopped: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            try:
                loop.call_soon_threadsafe(_resolve, stopped)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

        self._on_stopped.append(wake)
        try:
            if not self.running:
                return
            try:
                await stopped
            except asyncio.CancelledError:
                runtime = self._runtime
                if runtime is not None:
                    # At once, before the handlers cancelled with this task hear of it: a
                    # coroutine cut off now is left to the broker to redeliver, not answered.
                    runtime.begin_stop()
                await _uncancelled(loop.run_in_executor(None, self._stop, grace))
                raise
        finally:
            self._on_stopped.remove(wake)


class Server(BaseServer):
    """Serve registered functions and instances to proxies calling ``server_id``.

    Example::

        server = Server(server_id="calc")

        @server.expose
        def add(a, b):
            return a + b

        server.register_instance(Math(), "math")
        server.serve()          # or server.start() ... server.stop()

    Inside an asyncio application, ``await server.serve_async()`` serves from the application's
    own loop instead.

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
            ``system.method_signature``, ``system.ping`` and ``system.stats``.
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

    The settings are held as one frozen :class:`~rpc.server.options.ServerOptions`
    (:attr:`options`). Each is also an attribute (``server.concurrency``); assigning one checks
    it and replaces the options, for the next start. A running server's settings cannot change.

    Raises:
        ValueError: a setting is out of range, or the URL is not a broker URL.
    """

    def start(self) -> None:
        """Connect, declare the queue and consume in background threads; return once consuming.

        Raises:
            rpc.ConnectionError: the broker stayed unreachable for ``connect_retry`` seconds.
            RuntimeError: the server is already running.
        """
        self._start()

    def serve(self) -> None:
        """Run until :meth:`stop`, SIGINT or SIGTERM; the signals stop gracefully.

        When the application has configured no logging, the ``rpc`` logger gets a plain stderr
        handler at INFO first, so that a server run from a script says what it does.
        """
        default_logging()
        requested = threading.Event()
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda *_: requested.set())
        self._on_stopped.append(requested.set)
        try:
            self.start()
            while not requested.wait(0.5):
                pass
        finally:
            self._on_stopped.remove(requested.set)
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop(self, grace: float | None = DEFAULT_GRACE) -> int:
        """Stop consuming, finish the calls in flight (up to ``grace`` s), then disconnect.

        Requests prefetched but not started are requeued for another server. Returns how many
        calls were still running when the grace ran out: the broker redelivers those. An
        ``async def`` call among them is cancelled, and its cleanup (``finally``, ``async
        with``) runs before this returns (for up to 2 s more).

        Raises:
            RuntimeError: called on the event loop this server's coroutine handlers run on
                (where waiting for them would block them): cancel ``serve_async()`` instead.
        """
        return self._stop(grace)

    async def serve_async(self, *, grace: float | None = DEFAULT_GRACE) -> None:
        """Serve from inside the running event loop until :meth:`stop` or cancellation.

        Connecting and declaring happen off the loop, in its default executor. ``async def``
        handlers then run as tasks on this loop (at most ``async_concurrency`` at once), beside
        the application's own; plain functions run on the worker threads as usual. Cancelling
        the task that awaits this stops the server gracefully, letting calls in flight finish
        for up to ``grace`` seconds without blocking the loop, and then re-raises the
        cancellation. It returns once the server has stopped. No signal handler is installed:
        they are the application's.

        Example::

            async def main():
                server = Server(server_id="calc")
                server.register_function(add)
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(server.serve_async())
                    ...                             # the application, on the same loop

        Raises:
            rpc.ConnectionError: the broker stayed unreachable for ``connect_retry`` seconds.
            RuntimeError: the server is already running.
        """
        await self._start_on_loop(grace)
        await self._serve_on_loop(grace)


class AsyncServer(BaseServer):
    """A server driven from asyncio: it takes the same arguments and registration as
    :class:`Server`, and serves from the running event loop, as :meth:`Server.serve_async`.

    Example::

        async with AsyncServer(server_id="calc") as server:    # connects off the loop
            ...                                                # serving, beside the app

        server = AsyncServer(server_id="calc")
        server.register_function(add)
        await server.serve()        # until stop() or cancellation, which stops gracefully
    """

    async def start(self) -> None:
        """Connect (off the loop), declare the queue and consume; return once consuming.

        Raises:
            rpc.ConnectionError: the broker stayed unreachable for ``connect_retry`` seconds.
            RuntimeError: the server is already running.
        """
        await self._start_on_loop(DEFAULT_GRACE)

    async def stop(self, grace: float | None = DEFAULT_GRACE) -> int:
        """Stop consuming and let the calls in flight finish (up to ``grace`` s), off the loop;
        returns how many were still running when the grace ran out.

        Cancelling the caller does not cancel the stop: it goes on in the background.
        """
        loop = asyncio.get_running_loop()
        return await asyncio.shield(loop.run_in_executor(None, self._stop, grace))

    async def serve(self, *, grace: float | None = DEFAULT_GRACE) -> None:
        """Start unless started, then serve until :meth:`stop` or cancellation (which stops
        gracefully within ``grace`` s, then re-raises). No signal handler is installed; under
        ``asyncio.run()``, Ctrl-C cancels the main task, and so stops the server gracefully.

        When the application has configured no logging, the ``rpc`` logger gets a plain stderr
        handler at INFO first, as with :meth:`Server.serve`.
        """
        default_logging()
        if not self.running:
            await self._start_on_loop(grace)
        await self._serve_on_loop(grace)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _uncancelled(future: asyncio.Future[_T]) -> _T:
    """Wait for ``future`` to the end, through any further cancellation of the waiting task."""
    while True:
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if future.done():
                return future.result()
