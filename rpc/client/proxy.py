"""The proxy: remote methods as attributes, called synchronously, by callback or as futures.

One proxy owns one connection and is safe to share between threads, with any number of calls in
flight. Its I/O follows a leader/follower scheme: a thread waiting for a reply reads the socket
itself when nobody else is, so a single-threaded caller publishes and reads on its own thread
with no hand-off; other waiters sleep until the reader hands them their reply or the reader's
role. A background thread reads only while future or callback calls are outstanding and nobody
else reads, fires their timeouts, and keeps heartbeats going.

On a cluster the proxy fails the calls pending on a lost connection at once, reconnects to the
next node in the background, and publishes again the calls that asked for retries.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import tenacity

from ..core import protocol, serialization, tracing
from ..core.calls import (
    BROADCAST,
    CALLBACK,
    CAST,
    CHECK,
    FUTURE,
    SYNC,
    CallbackState,
    CallbackStates,
    CallFuture,
    Pending,
)
from ..core.context import outgoing_headers
from ..core.errors import (
    AccessRefused,
    BrokerBlocked,
    ConnectionError,
    ConnectionLost,
    Refused,
    RPCError,
    RPCTimeout,
    ServerUnavailable,
    UnknownServer,
)
from ..defaults import (
    BROADCAST_TIMEOUT,
    DEFAULT_CONNECT_RETRY,
    DEFAULT_HEARTBEAT,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_TIMEOUT,
)
from ..transport.connect import (
    Failover,
    FailoverStrategy,
    open_connection,
)
from ..transport.link import Incoming, Link, QueueInfo, open_link
from ..transport.urls import BrokerURL, mask_url, resolve_url
from .views import (
    CallOptions,
    CallView,
    OnError,
    OnSuccess,
    RemoteMethod,
    check_retries,
    check_timeout,
)

logger = logging.getLogger(__name__)

#: Seconds a check that a server consumes the queue holds before it is made again.
AVAILABILITY_TTL = 1.0
#: Longest wait for the broker's answer to that check; without one, the call goes ahead.
AVAILABILITY_CHECK_TIMEOUT = 2.0
#: Backoff between retries of a call: 50 ms doubling up to 1 s, with jitter.
_BACKOFF = tenacity.wait_exponential(multiplier=0.05, max=1.0) + tenacity.wait_random(0, 0.05)
#: Backoff after no server was consuming: 0.5 s doubling up to 4 s, with jitter.
_BACKOFF_UNAVAILABLE = (tenacity.wait_exponential(multiplier=0.5, max=4.0)
                        + tenacity.wait_random(0, 0.1))
_RETRYING = tenacity.Retrying(wait=_BACKOFF)
_PLAIN = CallOptions()
_BROADCAST = CallOptions(broadcast=True)
_FUTURE = CallOptions(future=True)
_CAST = CallOptions(cast=True)
_ASYNC = frozenset({FUTURE, CALLBACK})


@dataclass(frozen=True, slots=True)
class BroadcastReply:
    """One server's answer to a broadcast: who answered, and its result or error."""

    server: str
    result: Any
    error: Exception | None


class Proxy:
    """A dynamic client for the server registered as ``server_id``.

    Example::

        with Proxy(server_id="calc") as proxy:
            proxy.add(2, 3)                          # 5
            proxy.math.mul(2, 4)                     # 8
            proxy.set_timeout(10).add(2, 3)          # RPCTimeout after 10 s without a reply
            uid = proxy.callback(print, print).add(2, 4)
            proxy.get_callback_state(uid)            # CallbackState.WAITING, then FINISHED
            proxy.future.add(2, 3).result()          # 5

    Args:
        url: broker URL; None reads $RPC_BROKER_URL, then ``amqp://guest:guest@localhost:5672//``.
        server_id: the server (request queue) to call.
        serializer: ``"msgpack"``, ``"json"``, ``"pickle"`` or a registered name.
        timeout: default seconds per call (None waits for ever); ``set_timeout`` overrides it.
        retries: times a call is published again (with backoff, within its timeout) when the
            connection failed, the broker refused the request or blocked publishing, or no
            server was consuming; ``set_retries`` overrides it. Servers answer a repeat from
            their table of completed calls, so a retried call runs once.
        wait_for_ready: let requests wait in the queue until a server consumes it, instead of
            failing at once with ServerUnavailable; ``wait_for_ready()`` sets it per call.
        failover: with several broker URLs, the order to try them: ``"round-robin"`` from the
            first, or ``"shuffle"`` to spread clients; a reconnect starts with the next node.
        metrics: record calls, latency, timeouts, dropped replies and reconnects in
            prometheus_client's default registry (``amqp-rpc[metrics]``).
        heartbeat: AMQP heartbeat interval in seconds (0 turns heartbeats off).
        connect_retry: seconds to keep retrying an unreachable broker before ConnectionError.
        max_message_size: largest reply body in bytes; a call whose reply is larger fails.
        ssl: py-amqp TLS options; ``amqps://`` verifies certificate and hostname by default
            (``ssl={"context": {"cafile": "ca.pem"}}`` trusts a private CA).
        hostname, port, username, password, vhost: the URL in pieces, instead of ``url``.
    """

    def __init__(
        self,
        url: BrokerURL | None = None,
        *,
        server_id: str = "calc",
        serializer: str = "msgpack",
        timeout: float | None = DEFAULT_TIMEOUT,
        retries: int = 0,
        wait_for_ready: bool = False,
        failover: FailoverStrategy = "round-robin",
        metrics: bool = False,
        heartbeat: float = DEFAULT_HEARTBEAT,
        connect_retry: float = DEFAULT_CONNECT_RETRY,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        ssl: dict[str, Any] | None = None,
        hostname: str | None = None,
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
        vhost: str | None = None,
    ) -> None:
        self._url = resolve_url(
            url, hostname=hostname, port=port, username=username, password=password, vhost=vhost,
        )
        self.server_id = server_id
        self.content_type = serialization.content_type_of(serializer)
        self._accept = frozenset({self.content_type, serialization.JSON})
        self.default_timeout = check_timeout(timeout)
        self.default_retries = check_retries(retries)
        self.default_wait_for_ready = wait_for_ready
        self._failover = Failover(self._url, failover)
        self._available_until = 0.0
        self._metrics: Any = None
        if metrics:
            from ..metrics import ProxyMetrics

            self._metrics = ProxyMetrics(server_id)
        self._heartbeat = heartbeat
        self._connect_retry = connect_retry
        self.max_message_size = max_message_size
        self._ssl = ssl
        self._prefix = secrets.token_hex(8) + "."
        self._counter = itertools.count(1)

        self._lock = threading.Lock()
        self._pump_wakeup = threading.Condition(self._lock)
        self._pending: dict[str, Pending] = {}
        self._sleepers: dict[str, Pending] = {}
        self._reader_active = False
        self._async_count = 0
        self._timers: list[tuple[float, str]] = []
        self._states = CallbackStates()
        self._closed = False
        self._connect_lock = threading.Lock()
        self._declared: set[str] = set()
        #: Replies that matched no pending call (late after a timeout, duplicates, forgeries).
        self.replies_dropped = 0

        self._link: Link = self._connect()
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._callback_thread = threading.Thread(
            target=self._run_jobs, name=f"rpc-proxy-callbacks-{server_id}", daemon=True,
        )
        self._callback_thread.start()
        self._pump_thread = threading.Thread(
            target=self._pump, name=f"rpc-proxy-io-{server_id}", daemon=True,
        )
        self._pump_thread.start()

    # -- the public surface ----------------------------------------------------------------------

    def __getattr__(self, name: str) -> RemoteMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return RemoteMethod(CallView(self, _PLAIN), name)

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` by name: for names that clash with the proxy's own attributes."""
        return self._invoke(_PLAIN, method, args, kwargs)

    def set_timeout(self, timeout: float | None) -> CallView:
        """A one-call view with this timeout: ``proxy.set_timeout(10).add(2, 3)``."""
        return CallView(self, _PLAIN).set_timeout(timeout)

    def set_retries(self, retries: int) -> CallView:
        """A one-call view with this many retries: ``proxy.set_retries(3).add(2, 3)``."""
        return CallView(self, _PLAIN).set_retries(retries)

    def wait_for_ready(self, wait: bool = True) -> CallView:
        """A one-call view whose request waits in the queue for a server, up to its timeout."""
        return CallView(self, _PLAIN).wait_for_ready(wait)

    def callback(self, on_success: OnSuccess | None, on_error: OnError | None = None) -> CallView:
        """A one-call view that returns a uid at once and later runs one of the functions."""
        return CallView(self, _PLAIN).callback(on_success, on_error)

    @property
    def future(self) -> CallView:
        """A one-call view that returns a ``concurrent.futures.Future``."""
        return CallView(self, _FUTURE)

    @property
    def cast(self) -> CallView:
        """A one-call view that publishes without a reply and returns None at once."""
        return CallView(self, _CAST)

    @property
    def broadcast(self) -> CallView:
        """A view that calls every running server of this ``server_id`` and lists the replies.

        ``proxy.broadcast(timeout=2).reload()`` waits 2 s (default 1 s) and returns a
        :class:`BroadcastReply` per answer; ``proxy.broadcast.cast.reload()`` waits for none.
        """
        return CallView(self, _BROADCAST)

    def with_context(self, **context: Any) -> CallView:
        """A one-call view sending ``context`` (small values) for ``rpc.current_call()``."""
        return CallView(self, _PLAIN).with_context(**context)

    def gather(
        self, calls: Iterable[Sequence[Any]], *, concurrency: int = 50, timeout: float | None = None,
    ) -> list[Any]:
        """Run ``(method, args[, kwargs])`` calls with at most ``concurrency`` in flight.

        Returns the results in order, with each failed call's exception in its place (as
        ``asyncio.gather(return_exceptions=True)`` does); ``timeout`` applies to each call.
        """
        return list(self._stream(((c[0], tuple(c[1]) if len(c) > 1 else (),
                                   dict(c[2]) if len(c) > 2 else {}) for c in calls),
                                 concurrency, timeout, raise_errors=False))

    def map(
        self, method: str, iterable: Iterable[Any], *, concurrency: int = 50,
        timeout: float | None = None,
    ) -> Iterator[Any]:
        """Yield ``method(*args)`` for each ``args`` tuple (or single argument), in order.

        At most ``concurrency`` calls are in flight; the first failure is raised where its
        result would have been yielded.
        """
        def requests() -> Iterator[tuple[str, tuple[Any, ...], dict[str, Any]]]:
            for args in iterable:
                yield method, args if isinstance(args, tuple) else (args,), {}

        return self._stream(requests(), concurrency, timeout, raise_errors=True)

    def _stream(
        self, requests: Iterable[tuple[str, tuple[Any, ...], dict[str, Any]]], concurrency: int,
        timeout: float | None, *, raise_errors: bool,
    ) -> Iterator[Any]:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        view = self.set_timeout(timeout).future if timeout is not None else self.future
        window: deque[Future[Any]] = deque()
        for method, args, kwargs in requests:
            if len(window) >= concurrency:
                yield _outcome(window.popleft(), raise_errors)
            window.append(view.call(method, *args, **kwargs))
        while window:
            yield _outcome(window.popleft(), raise_errors)

    def get_callback_state(self, uid: str) -> CallbackState:
        """The state of a callback call.

        Raises:
            KeyError: ``uid`` was not issued by this proxy (or finished over 10,000 calls ago).
        """
        return self._states.get(uid)

    def get_num_waiting_callbacks(self) -> int:
        """How many callback calls have not finished yet."""
        return self._states.waiting()

    @property
    def connected(self) -> bool:
        """Whether the connection is up (the next call reconnects if it is not)."""
        return not self._link.closed

    def check_availability(self) -> None:
        """Ask the broker now whether a server consumes this proxy's queue (the answer holds
        for a second, and calls in that second skip the question).

        Raises:
            ServerUnavailable: the queue exists and nobody consumes it.
        """
        self._check_available(self._live_link(), None)

    @property
    def checks_availability(self) -> bool:
        """Whether the next call asks the broker first if a server consumes (once a second)."""
        return time.monotonic() >= self._available_until

    @property
    def node(self) -> str | None:
        """``host:port`` of the broker node this proxy is connected to."""
        return self._failover.node()

    @property
    def pending_calls(self) -> int:
        """Calls awaiting their reply."""
        return len(self._pending)

    def close(self) -> None:
        """Fail calls still pending, stop the proxy's threads and close the connection."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._pump_wakeup.notify_all()
        self._fail_all(RPCError("the proxy was closed while the call was pending"))
        self._link.close()
        self._jobs.put(None)
        for thread in (self._pump_thread, self._callback_thread):
            if thread is not threading.current_thread():
                thread.join(timeout=5)

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Proxy server_id={self.server_id!r} {mask_url(self._url)} {state}>"

    # -- connecting ------------------------------------------------------------------------------

    def _connect(self) -> Link:
        conn = open_connection(
            self._failover, heartbeat=self._heartbeat, retry_for=self._connect_retry,
            name=f"rpc-proxy {self.server_id}", ssl=self._ssl,
        )
        try:
            link = open_link(conn, self._on_reply, self._on_return, max_body=self.max_message_size)
            self._reply_to = link.reply_queue()
            link.enable_confirms(self._on_nack, self._on_blocked)
        except Exception:
            conn.release()
            raise
        return link

    def _live_link(self) -> Link:
        link = self._link
        if not link.closed:
            return link
        with self._connect_lock:
            if self._closed:
                raise RPCError("this proxy is closed")
            if self._link.closed:
                self._declared.clear()
                self._available_until = 0.0
                self._link = self._connect()
                logger.info("proxy for %r reconnected to %s", self.server_id,
                            mask_url(self._failover.current or self._url))
                if self._metrics is not None:
                    self._metrics.reconnected()
            return self._link

    def _reconnect_soon(self) -> None:
        """Reconnect in the background after a loss, so the next call finds a connection."""
        def run() -> None:
            try:
                self._live_link()
            except Exception as exc:
                logger.warning("proxy for %r cannot reconnect yet: %s", self.server_id, exc)

        threading.Thread(target=run, name=f"rpc-proxy-reconnect-{self.server_id}",
                         daemon=True).start()

    # -- making a call ---------------------------------------------------------------------------

    def _invoke(
        self, options: CallOptions, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
    ) -> Any:
        """Make one call as ``options`` say: the single entry point of every view."""
        if options.timeout_set:
            timeout = options.timeout
        else:
            timeout = BROADCAST_TIMEOUT if options.broadcast else self.default_timeout
        if options.cast:
            if options.callbacks is not None or options.future:
                raise TypeError("a cast has no reply: it takes no callbacks and no future")
            pending = self._prepare(method, args, kwargs, timeout, CAST, options)
            self._run_sync(pending)
            return None
        if options.broadcast:
            if options.callbacks is not None or options.future:
                raise TypeError("a broadcast returns its replies: no callbacks and no future")
            if timeout is None:
                raise ValueError("a broadcast needs a timeout: how long to collect replies")
            pending = self._prepare(method, args, kwargs, timeout, BROADCAST, options)
            pending.retries = 0
            self._send(pending)
            self._wait_or_forget(pending)
            return pending.value
        if options.future:
            fut = CallFuture(self._jobs.put)
            pending = self._prepare(method, args, kwargs, timeout, FUTURE, options)
            pending.future = fut
            self._send_async(pending)
            fut.forget = lambda: self._forget(pending)
            return fut
        if options.callbacks is not None:
            pending = self._prepare(method, args, kwargs, timeout, CALLBACK, options)
            pending.on_success, pending.on_error = options.callbacks
            self._states.start(pending.cid)
            try:
                self._send_async(pending)
            except BaseException:
                self._states.finish(pending.cid)
                raise
            return pending.cid
        pending = self._prepare(method, args, kwargs, timeout, SYNC, options)
        self._run_sync(pending)
        if pending.ok:
            return pending.value
        raise pending.value

    def _run_sync(self, pending: Pending) -> None:
        """Send a synchronous call (or a cast) and wait for it, retrying as it asked."""
        while True:
            try:
                self._send(pending)
                if pending.kind == CAST:
                    return
                self._wait_or_forget(pending)
                if pending.ok or not self._may_retry(pending, pending.value):
                    return
            except Exception as exc:
                if not self._may_retry(pending, exc):
                    raise
            time.sleep(self._next_backoff(pending))
            if pending.kind != CAST:
                pending.arm()

    def _send_async(self, pending: Pending) -> None:
        try:
            self._send(pending)
        except Exception as exc:
            if not self._retry_later(pending, exc):
                raise
        self._kick_pump()

    def _wait_or_forget(self, pending: Pending) -> None:
        try:
            self._wait(pending)
        except BaseException:  # KeyboardInterrupt while waiting: nobody will collect the reply
            self._forget(pending)
            raise

    def _kick_pump(self) -> None:
        with self._lock:
            if not self._reader_active:
                self._pump_wakeup.notify()

    def _prepare(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None,
        kind: int, options: CallOptions,
    ) -> Pending:
        """Encode the request once; it is published by :meth:`_send`, again on a retry."""
        if self._closed:
            raise RPCError("this proxy is closed")
        cid = self._prefix + format(next(self._counter), "x")
        extra = outgoing_headers(dict(options.context))
        tracing.inject(extra)
        body = serialization.encode(protocol.request_body(method, args, kwargs), self.content_type)
        props = protocol.request_properties(cid, self.content_type, timeout, time.time(), extra)
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = Pending(cid, method, kind, self.content_type, deadline)
        pending.body, pending.props, pending.broadcast = body, props, options.broadcast
        pending.retries = self.default_retries if options.retries is None else options.retries
        pending.wait_for_ready = (self.default_wait_for_ready if options.wait_for_ready is None
                                  else options.wait_for_ready)
        pending.started = time.perf_counter()
        if kind in (SYNC, BROADCAST):
            pending.arm()
            if kind == BROADCAST:
                pending.value = []
        return pending

    def _send(self, pending: Pending) -> None:
        """Publish the request and track it: for the first time, or again for a retry."""
        if self._closed:
            raise RPCError("this proxy is closed")
        kind, cid = pending.kind, pending.cid
        link = self._live_link()
        if not pending.broadcast and not pending.wait_for_ready:
            self._check_available(link, pending.deadline)
        props = pending.props
        if kind != CAST:
            props["reply_to"] = self._reply_to
            with self._lock:
                self._pending[cid] = pending
                if kind in _ASYNC:
                    self._async_count += 1
                    if pending.deadline is not None:
                        heapq.heappush(self._timers, (pending.deadline, cid))
        track = cid if kind != CAST else None
        try:
            try:
                self._publish(link, pending.body, props, pending.broadcast, track)
            except ConnectionLost:
                # The write failed, so the broker has not got the request: send it once more
                # on a new connection (whose reply address differs).
                link = self._live_link()
                if kind != CAST:
                    props["reply_to"] = self._reply_to
                self._publish(link, pending.body, props, pending.broadcast, track)
        except Exception:
            self._forget(pending)
            raise

    def _check_available(self, link: Link, deadline: float | None) -> None:
        """Fail at once when the queue exists but nobody consumes it (one check a second).

        Raises:
            ServerUnavailable: the broker counts no consumer on the server's queue.
        """
        now = time.monotonic()
        if now < self._available_until:
            return
        check = Pending(f"{self._prefix}check.{next(self._counter):x}", "(availability check)",
                        CHECK, self.content_type, min(deadline or now + AVAILABILITY_CHECK_TIMEOUT,
                                                     now + AVAILABILITY_CHECK_TIMEOUT))
        check.arm()
        with self._lock:
            self._pending[check.cid] = check

        def on_info(info: QueueInfo | None) -> None:
            if self._take(check.cid) is not None:
                self._complete(check, True, info)

        try:
            link.inspect_queue(self.server_id, on_info)
        except ConnectionLost:
            self._take(check.cid)
            return  # the publish that follows fails the same way, and says so
        self._wait_or_forget(check)
        info = check.value if check.ok else None
        if info is not None and info.consumers == 0:
            raise ServerUnavailable(
                f"no server is consuming {self.server_id!r} ({info.messages} requests waiting)")
        self._available_until = time.monotonic() + AVAILABILITY_TTL

    def _may_retry(self, pending: Pending, error: BaseException) -> bool:
        """Whether a failed call has a retry left, for an error a retry may cure, in time."""
        if pending.retries <= 0 or self._closed or isinstance(error, AccessRefused):
            return False
        if not isinstance(error, (ConnectionError, Refused, ServerUnavailable)):
            return False
        if pending.deadline is not None and time.monotonic() >= pending.deadline:
            return False
        pending.retries -= 1
        pending.attempt += 1
        pending.unavailable = isinstance(error, ServerUnavailable)
        logger.info("retrying %s() (attempt %d) after %s: %s", pending.method,
                    pending.attempt + 1, type(error).__name__, error)
        return True

    @staticmethod
    def _next_backoff(pending: Pending) -> float:
        state = tenacity.RetryCallState(retry_object=_RETRYING, fn=None, args=(), kwargs={})
        state.attempt_number = pending.attempt
        # Servers take seconds to come back; a broker's hiccup, milliseconds.
        wait = float((_BACKOFF_UNAVAILABLE if pending.unavailable else _BACKOFF)(state))
        if pending.deadline is not None:
            wait = min(wait, max(pending.deadline - time.monotonic(), 0.0))
        return wait

    def _retry_later(self, pending: Pending, error: BaseException) -> bool:
        """Publish a future or callback call again after a backoff, on a timer thread."""
        if not self._may_retry(pending, error):
            return False
        timer = threading.Timer(self._next_backoff(pending), self._resend, (pending,))
        timer.daemon = True
        timer.start()
        return True

    def _resend(self, pending: Pending) -> None:
        if pending.future is not None and pending.future.done():
            return  # cancelled meanwhile
        if pending.deadline is not None and time.monotonic() >= pending.deadline:
            self._complete(pending, False, RPCTimeout(
                f"no reply to {pending.method}() within the call's timeout"))
            return
        try:
            self._send(pending)
        except Exception as exc:
            self._complete(pending, False, exc)
        else:
            self._kick_pump()

    def _publish(
        self, link: Link, body: bytes, props: dict[str, Any], broadcast: bool, track: str | None,
    ) -> None:
        exchange = ""
        if broadcast:
            exchange = protocol.broadcast_exchange(self.server_id)
            if exchange not in self._declared:
                link.declare_fanout(exchange)
                self._declared.add(exchange)
        link.publish(self.server_id if not exchange else "", body, props, mandatory=True,
                     exchange=exchange, track=track)

    def _forget(self, pending: Pending) -> None:
        """Drop a call nobody waits for any more; a reply to it will be dropped and counted."""
        self._take(pending.cid)

    def _wait(self, pending: Pending) -> None:
        deadline = pending.deadline
        while True:
            with self._lock:
                if pending.done:
                    return
                if self._reader_active:
                    self._sleepers[pending.cid] = pending
                    reading = False
                else:
                    self._reader_active = True
                    reading = True
            if reading:
                self._read_until(pending)
            else:
                pending.sleep(None if deadline is None else deadline - time.monotonic())
                with self._lock:
                    self._sleepers.pop(pending.cid, None)
            if not pending.done and deadline is not None and time.monotonic() >= deadline:
                self._expire(pending)
                return

    def _read_until(self, pending: Pending) -> None:
        deadline = pending.deadline
        try:
            while not pending.done:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return
                self._link.read(remaining)
        except ConnectionLost as exc:
            self._connection_lost(exc)
        finally:
            self._release_reader()

    def _release_reader(self) -> None:
        with self._lock:
            self._reader_active = False
            for sleeper in self._sleepers.values():
                if not sleeper.done:
                    sleeper.wake()  # it takes over reading
                    return
            if self._async_count:
                self._pump_wakeup.notify()

    def _expire(self, pending: Pending) -> None:
        with self._lock:
            if pending.done or self._pending.pop(pending.cid, None) is None:
                return
            if pending.kind in _ASYNC:
                self._async_count -= 1
        if pending.kind == BROADCAST:
            self._complete(pending, True, pending.value)
            return
        if self._metrics is not None and pending.kind != CHECK:
            self._metrics.timeout()
        timeout = RPCTimeout(f"no reply to {pending.method}() within the call's timeout")
        self._complete(pending, False, timeout)

    # -- replies ---------------------------------------------------------------------------------

    def _on_reply(self, msg: Incoming) -> None:
        cid = msg.props.get("correlation_id")
        with self._lock:
            pending = self._pending.get(cid) if isinstance(cid, str) else None
            if pending is None:
                self.replies_dropped += 1
                if self._metrics is not None:
                    self._metrics.dropped_reply()
            elif pending.kind != BROADCAST:
                del self._pending[pending.cid]
                if pending.kind in _ASYNC:
                    self._async_count -= 1
        if pending is None:
            logger.debug("dropped a reply with unknown correlation id %r", cid)
            return
        ok, value = protocol.decode_reply(msg.body, msg.props.get("content_type"),
                                          pending.content_type, self._accept,
                                          oversize=msg.oversize, limit=self.max_message_size)
        if pending.kind == BROADCAST:
            server = str(msg.props.get("app_id") or "")
            reply = BroadcastReply(server, value if ok else None, None if ok else value)
            with self._lock:
                if not pending.done:
                    pending.value.append(reply)
            return
        self._complete(pending, ok, value)

    def _on_return(self, msg: Incoming, code: int, text: str) -> None:
        cid = msg.props.get("correlation_id")
        pending = self._take(cid) if isinstance(cid, str) else None
        if pending is None:
            logger.warning("request to %r returned by the broker (%s %s): no server is serving it",
                           msg.routing_key or self.server_id, code, text)
        elif pending.kind == BROADCAST:
            self._complete(pending, True, [])  # no server is bound: nobody to hear it
        else:
            self._complete(pending, False, UnknownServer(
                f"no server is serving {msg.routing_key!r}: the broker returned the request "
                f"({code} {text})"
            ))

    def _take(self, cid: str) -> Pending | None:
        """Remove a pending call to complete it (None if it is already gone)."""
        with self._lock:
            pending = self._pending.pop(cid, None)
            if pending is not None and pending.kind in _ASYNC:
                self._async_count -= 1
        return pending

    def _on_blocked(self, cids: list[str], reason: str) -> None:
        """The broker blocked publishing: requests not yet confirmed will not be answered soon."""
        for cid in cids:
            pending = self._take(cid)
            if pending is not None:
                self._complete(pending, False, BrokerBlocked(
                    f"the broker blocked publishing ({reason}) before accepting the request to "
                    f"{pending.method}(); it may still run later, within its deadline"))

    def _on_nack(self, cid: str) -> None:
        pending = self._take(cid)
        if pending is not None:
            self._complete(pending, False, Refused(
                f"the broker did not accept the request to {pending.method}() (basic.nack)"))

    def _complete(self, pending: Pending, ok: bool, value: Any) -> None:
        if not ok and pending.kind in _ASYNC and pending.retries > 0 and self._retry_later(
                pending, value):
            return
        pending.ok, pending.value = ok, value
        if self._metrics is not None and pending.kind != CHECK:
            self._record(pending, ok, value)
        if pending.kind in (SYNC, BROADCAST, CHECK):
            with self._lock:
                pending.done = True
                pending.wake()
        elif pending.kind == FUTURE:
            pending.done = True
            fut = pending.future
            assert fut is not None
            if fut.set_running_or_notify_cancel():
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
        else:
            pending.done = True
            self._jobs.put(lambda: self._run_callback(pending))

    def _record(self, pending: Pending, ok: bool, value: Any) -> None:
        from ..metrics import proxy_outcome

        self._metrics.call(pending.method, proxy_outcome(None if ok else value),
                           time.perf_counter() - pending.started)

    def _run_callback(self, pending: Pending) -> None:
        self._states.processing(pending.cid)
        try:
            if pending.ok:
                if pending.on_success is not None:
                    pending.on_success(pending.value)
            elif pending.on_error is not None:
                pending.on_error(pending.value)
            else:
                logger.warning("call %s() failed and has no error callback: %r",
                               pending.method, pending.value)
        finally:
            self._states.finish(pending.cid)

    def _connection_lost(self, exc: ConnectionLost) -> None:
        if not self._closed:
            logger.warning("proxy for %r lost its connection: %s", self.server_id, exc)
            self._reconnect_soon()
        self._fail_all(ConnectionLost(f"connection lost while the call was pending: {exc}"))

    def _fail_all(self, error: Exception) -> None:
        with self._lock:
            pending = list(self._pending.values())
            self._pending.clear()
            self._async_count = 0
            self._timers.clear()
        for call in pending:
            self._complete(call, False, error)

    # -- background threads ----------------------------------------------------------------------

    def _run_jobs(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception:
                logger.exception("a callback raised")

    def _pump(self) -> None:
        link_tick = max(min(self._heartbeat / 4, 1.0), 0.05) if self._heartbeat else 1.0
        next_tick = time.monotonic() + link_tick
        while True:
            with self._lock:
                while True:
                    if self._closed:
                        return
                    now = time.monotonic()
                    expired = self._pop_expired(now)
                    if expired:
                        break
                    if now >= next_tick:
                        break
                    if self._async_count and not self._reader_active:
                        self._reader_active = True
                        break
                    wait = next_tick - now
                    if self._timers:
                        wait = min(wait, self._timers[0][0] - now)
                    self._pump_wakeup.wait(max(wait, 0.001))
                reading = self._reader_active and not expired and now < next_tick
            for pending in expired:
                if self._metrics is not None:
                    self._metrics.timeout()
                self._complete(pending, False, RPCTimeout(
                    f"no reply to {pending.method}() within the call's timeout"))
            if expired:
                continue
            if not reading:
                next_tick = now + link_tick
                self._tick()
                continue
            try:
                while self._async_count and not self._closed:
                    now = time.monotonic()
                    if now >= next_tick or (self._timers and self._timers[0][0] <= now):
                        break
                    wait = next_tick - now
                    if self._timers:
                        wait = min(wait, self._timers[0][0] - now)
                    self._link.read(wait)
                    if self._sleepers:
                        break  # let a synchronous caller read for itself
            except ConnectionLost as exc:
                self._connection_lost(exc)
            finally:
                self._release_reader()

    def _pop_expired(self, now: float) -> list[Pending]:
        expired = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, cid = heapq.heappop(timers)
            pending = self._pending.pop(cid, None)
            if pending is not None:
                self._async_count -= 1
                expired.append(pending)
        return expired

    def _tick(self) -> None:
        """Keep an idle connection alive: read what waits, send a heartbeat when due."""
        link = self._link
        if link.closed:
            return
        with self._lock:
            take = not self._reader_active
            if take:
                self._reader_active = True
        try:
            if take:
                link.read(0)
            link.tick()
        except ConnectionLost as exc:
            self._connection_lost(exc)
        finally:
            if take:
                self._release_reader()


def _outcome(fut: Future[Any], raise_errors: bool) -> Any:
    try:
        return fut.result()
    except Exception as exc:
        if raise_errors:
            raise
        return exc


__all__ = ["BroadcastReply", "CallbackState", "Proxy"]
