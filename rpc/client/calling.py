"""What both proxies do for a call, with no I/O: build the request, read the reply, decide on a
retry and its backoff, remember whether a server consumes, and count.

:class:`~rpc.Proxy` (blocking) and :class:`~rpc.AsyncProxy` (asyncio) each hold a
:class:`CallMaker` and differ only in how they write, read and wait.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
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
    STREAM,
    SYNC,
    CallbackState,
    CallbackStates,
    CallTable,
    Pending,
    StreamState,
)
from ..core.context import outgoing_headers
from ..core.errors import (
    AccessRefused,
    BrokerBlocked,
    Cancelled,
    ConnectionError,
    ConnectionLost,
    Refused,
    RPCError,
    RPCTimeout,
    ServerLost,
    ServerUnavailable,
    UnknownServer,
)
from ..defaults import BROADCAST_TIMEOUT, DEFAULT_KEEPALIVE, DEFAULT_STREAM_WINDOW
from ..transport.connect import Failover, FailoverStrategy, open_connection
from ..transport.link import Incoming, Link, QueueInfo, open_link
from ..transport.urls import BrokerURL, resolve_url
from .views import PLAIN, CallOptions, check_retries, check_timeout

logger = logging.getLogger("rpc.client")

#: Seconds a check that a server consumes the queue holds before it is made again.
AVAILABILITY_TTL = 1.0
#: Longest wait for the broker's answer to that check; without one, the call goes ahead.
AVAILABILITY_CHECK_TIMEOUT = 2.0
#: Seconds the broker must count no consumer before a call fails with ServerUnavailable. A
#: quorum queue counts none for a moment while a new leader takes over (0.05-0.2 s measured
#: after a node was killed or stopped), and a server that lost its node is away while it
#: reconnects to another: neither is a server that is gone.
UNAVAILABLE_AFTER = 1.0
#: Seconds between two checks while the broker counts no consumer.
RECHECK_EVERY = 0.25
#: Cancels kept for the next connection at most; the oldest are dropped first.
OWED_CANCELS = 1_000

#: A control message to publish: exchange, routing key, body and properties.
ControlMessage = tuple[str, str, bytes, dict[str, Any]]
#: Backoff between retries of a call: 50 ms doubling up to 1 s, with jitter.
_BACKOFF = tenacity.wait_exponential(multiplier=0.05, max=1.0) + tenacity.wait_random(0, 0.05)
#: Backoff after no server was consuming: 0.5 s doubling up to 4 s, with jitter.
_BACKOFF_UNAVAILABLE = (tenacity.wait_exponential(multiplier=0.5, max=4.0)
                        + tenacity.wait_random(0, 0.1))
_RETRYING = tenacity.Retrying(wait=_BACKOFF)
#: One call of a batch: method, positional and keyword arguments.
Request = tuple[str, tuple[Any, ...], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class BroadcastReply:
    """One server's answer to a broadcast: who answered, and its result or error."""

    server: str
    result: Any
    error: Exception | None


class CallMaker:
    """A proxy's settings and the per-call decisions that do not depend on how it does I/O."""

    def __init__(
        self, server_id: str, *, serializer: str, timeout: float | None, retries: int,
        wait_for_ready: bool, max_message_size: int, metrics: bool,
        keepalive: float | None = DEFAULT_KEEPALIVE,
    ) -> None:
        self.server_id = protocol.check_server_id(server_id)
        self.content_type = serialization.content_type_of(serializer)
        self.accept = frozenset({self.content_type, serialization.JSON})
        self.default_timeout = check_timeout(timeout)
        self.default_retries = check_retries(retries)
        self.default_wait_for_ready = wait_for_ready
        if keepalive is not None and not (
                protocol.KEEPALIVE_RANGE[0] <= keepalive <= protocol.KEEPALIVE_RANGE[1]):
            raise ValueError(f"keepalive must be from {protocol.KEEPALIVE_RANGE[0]} to "
                             f"{protocol.KEEPALIVE_RANGE[1]} seconds, or None, not {keepalive!r}")
        self.keepalive = keepalive
        self.max_message_size = max_message_size
        self.metrics: Any = None
        if metrics:
            from ..metrics import ProxyMetrics

            self.metrics = ProxyMetrics(server_id)
        #: Until when (monotonic) a server is known to consume, so calls skip the question.
        self.available_until = 0.0
        #: Since when (monotonic) every check has counted no consumer; None: the last counted one.
        self.unconsumed_since: float | None = None
        #: Replies that matched no pending call (late after a timeout, duplicates, forgeries).
        self.replies_dropped = 0
        self._owed: deque[ControlMessage] = deque(maxlen=OWED_CANCELS)
        self._prefix = secrets.token_hex(8) + "."
        self._counter = itertools.count(1)

    def forked(self) -> None:
        """In a child process just forked: new correlation and message ids, which the parent
        does not make too (a server would answer the child's call from the parent's, as a
        repeat), and a new look at whether a server consumes."""
        self._prefix = secrets.token_hex(8) + "."
        self.available_until = 0.0
        self._owed.clear()  # the parent's to send

    # -- requests --------------------------------------------------------------------------------

    def prepare(
        self, options: CallOptions, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
    ) -> Pending:
        """Check the options, and encode the request once: it is published again on a retry.

        Raises:
            TypeError: options that do not go together (a cast with a future, ...).
            ValueError: a broadcast without a timeout.
            SerializationError: an argument the serializer cannot encode.
        """
        if options is PLAIN:  # the usual call: the proxy's defaults, no option to read
            kind, timeout = SYNC, self.default_timeout
        else:
            kind, timeout = self._kind_and_timeout(options)
        cid = self._prefix + format(next(self._counter), "x")
        extra = outgoing_headers(dict(options.context) if options.context else None)
        tracing.inject(extra)
        if kind == STREAM:
            extra[protocol.STREAM_HEADER] = options.window or DEFAULT_STREAM_WINDOW
        keepalive = self.keepalive if kind != CAST and kind != BROADCAST else None
        if keepalive is not None:
            extra[protocol.KEEPALIVE_HEADER] = keepalive
        body = serialization.encode(protocol.request_body(method, args, kwargs), self.content_type)
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = Pending(cid, method, kind, self.content_type, deadline)
        pending.body = body
        pending.props = protocol.request_properties(cid, self.content_type, timeout, time.time(),
                                                    extra)
        pending.keepalive = keepalive
        if options is PLAIN:
            pending.retries = self.default_retries
            pending.wait_for_ready = self.default_wait_for_ready
        else:
            self._apply(options, pending)
        pending.started = time.perf_counter()
        return pending

    def _kind_and_timeout(self, options: CallOptions) -> tuple[int, float | None]:
        """How a call with these options is made, and its timeout.

        Raises:
            TypeError: options that do not go together.
            ValueError: a broadcast without a timeout.
        """
        kind = self.kind_of(options)
        if options.timeout_set:
            timeout = options.timeout
        elif kind == STREAM:
            timeout = None  # a stream may run for long: each item's wait is bounded instead
        else:
            timeout = BROADCAST_TIMEOUT if options.broadcast else self.default_timeout
        if kind == BROADCAST and timeout is None:
            raise ValueError("a broadcast needs a timeout: how long to collect replies")
        return kind, timeout

    def _apply(self, options: CallOptions, pending: Pending) -> None:
        """What the options say of a call beyond its request: retries, waiting for a server,
        where its outcome and progress go, a stream's state."""
        pending.broadcast = options.broadcast
        if pending.kind == BROADCAST or pending.kind == STREAM:  # neither is published twice
            pending.value = []
        else:
            pending.retries = (self.default_retries if options.retries is None
                               else options.retries)
        pending.wait_for_ready = options.broadcast or (
            self.default_wait_for_ready if options.wait_for_ready is None
            else options.wait_for_ready)
        pending.on_progress = options.on_progress
        if options.callbacks is not None:
            pending.on_success, pending.on_error = options.callbacks
        if pending.kind == STREAM:
            item_timeout = (options.item_timeout if options.item_timeout is not None
                            else self.default_timeout)
            pending.stream = StreamState(options.window or DEFAULT_STREAM_WINDOW, item_timeout)

    @staticmethod
    def kind_of(options: CallOptions) -> int:
        """How a call with these options is made and awaited.

        Raises:
            TypeError: a cast or broadcast asked for callbacks or a future.
        """
        if options.stream:
            if options.cast or options.broadcast or options.callbacks is not None or options.future:
                raise TypeError("a stream is iterated: no cast, broadcast, callbacks or future")
            return STREAM
        if options.cast:
            if options.callbacks is not None or options.future:
                raise TypeError("a cast has no reply: it takes no callbacks and no future")
            return CAST
        if options.broadcast:
            if options.callbacks is not None or options.future:
                raise TypeError("a broadcast returns its replies: no callbacks and no future")
            return BROADCAST
        if options.future:
            return FUTURE
        if options.callbacks is not None:
            return CALLBACK
        return SYNC

    def routing(self, pending: Pending) -> tuple[str, str]:
        """``(exchange, routing key)`` to publish a request with."""
        if pending.broadcast:
            return protocol.broadcast_exchange(self.server_id), ""
        return "", self.server_id

    # -- is anyone serving? ----------------------------------------------------------------------

    def needs_check(self, pending: Pending) -> bool:
        """Whether to ask the broker if a server consumes before publishing ``pending``: not
        once an earlier copy of it may wait in the queue, which a server will run (it waits
        for its reply instead of failing with ServerUnavailable)."""
        return (not pending.wait_for_ready and not pending.maybe_queued
                and time.monotonic() >= self.available_until)

    def check(self, deadline: float | None) -> Pending:
        """A pending question to the broker: does a server consume the queue?"""
        now = time.monotonic()
        limit = now + AVAILABILITY_CHECK_TIMEOUT
        return Pending(f"{self._prefix}check.{next(self._counter):x}", "(availability check)",
                       CHECK, self.content_type, min(deadline or limit, limit))

    def checked(self, info: QueueInfo | None, deadline: float | None) -> float | None:
        """Take the broker's answer (None: none came, or no such queue: the publish will tell):
        None when the call may go, else the seconds to wait before asking again, while no
        consumer has been counted for :data:`UNAVAILABLE_AFTER` yet.

        Raises:
            ServerUnavailable: the queue exists and no server has consumed it for that long,
                or the call's ``deadline`` (monotonic) comes first.
        """
        now = time.monotonic()
        if info is not None and info.consumers == 0:
            since = self.unconsumed_since
            if since is None:
                since = self.unconsumed_since = now
            wait = min(since + UNAVAILABLE_AFTER - now, RECHECK_EVERY)
            if wait <= 0 or (deadline is not None and now + wait >= deadline):
                raise ServerUnavailable(f"no server is consuming {self.server_id!r} "
                                        f"({info.messages} requests waiting)")
            return wait
        self.unconsumed_since = None
        self.available_until = now + AVAILABILITY_TTL
        return None

    # -- replies ---------------------------------------------------------------------------------

    def outcome(self, msg: Incoming, pending: Pending) -> tuple[bool, Any]:
        """``(True, result)`` or ``(False, exception)`` from a reply to ``pending``."""
        return protocol.decode_reply(msg.body, msg.props.get("content_type"),
                                     pending.content_type, self.accept,
                                     oversize=msg.oversize, limit=self.max_message_size)

    def item(self, msg: Incoming, pending: Pending) -> tuple[bool, Any]:
        """``(True, value)`` of a stream item, or ``(False, exception)`` for one this side
        refuses; the control address a run's first item names is kept, for its credit.

        A first item after items of another run means the stream started again from its
        start: its server lost its connection, and the broker redelivered the request. That
        fails the stream with ServerLost, since the items would repeat; the new run's address
        is kept, so that the stream's cancel stops it."""
        stream = pending.stream
        assert stream is not None
        pending.heard = time.monotonic()
        control = protocol.control_of(msg.props)
        if control is not None and control != pending.control:
            pending.control = control
            if stream.received:
                return False, ServerLost(
                    f"the server running the stream of {pending.method}() was lost after "
                    f"{stream.received} items, and its request started again from the first "
                    "item: call again to restart the stream")
        try:
            content_type = msg.props.get("content_type")
            if msg.oversize:
                raise RPCError(f"stream item of {msg.oversize} bytes exceeds this proxy's "
                               f"limit of {self.max_message_size} bytes")
            if content_type != pending.content_type:
                raise RPCError(f"stream item in content type {content_type!r}, expected "
                               f"{pending.content_type!r}")
            value = protocol.parse_item(serialization.decode(msg.body, content_type, self.accept))
            stream.received += 1
            return True, value
        except (RPCError, ValueError) as exc:
            return False, exc

    def control(self, pending: Pending, kind: str, credit: int = 0) -> ControlMessage:
        """``(exchange, routing key, body, properties)`` of a grant of credit or a cancel for a
        stream: to the server instance that runs it, or to every instance before it is known.
        Both proxies make their cancels here, so this counts them: as sent, also one a lost
        connection then keeps from the broker (a cancel is best effort)."""
        body, props = protocol.control_message(kind, pending.cid, credit)
        if kind == protocol.CANCEL_TYPE and self.metrics is not None and pending.kind != CHECK:
            self.metrics.cancel_sent()
        if pending.control is not None:
            return "", pending.control, body, props
        return protocol.broadcast_exchange(self.server_id), "", body, props

    def owe_cancel(self, message: ControlMessage) -> None:
        """A cancel that a lost connection kept from the broker: it goes out on the next
        connection, so that a server running the call (a paused stream, a long call) stops
        now rather than at its patience's or its deadline's end."""
        self._owed.append(message)

    def send_owed(self, send: Callable[[ControlMessage], None]) -> None:
        """Send the cancels owed through ``send``; the one that fails stays owed, with the rest."""
        owed = self._owed
        while owed:
            message = owed.popleft()
            try:
                send(message)
            except (ConnectionLost, RPCError):
                owed.appendleft(message)
                return

    @staticmethod
    def heard(msg: Incoming, pending: Pending) -> None:
        """The server of ``pending`` said something before its reply: it is alive, and it may
        name its control address."""
        pending.heard = time.monotonic()
        if pending.control is None:
            pending.control = protocol.control_of(msg.props)

    def progress(self, msg: Incoming, pending: Pending) -> protocol.Progress | None:
        """The progress a message reports (None for a malformed one, which is only logged)."""
        self.heard(msg, pending)
        content_type = msg.props.get("content_type")
        try:
            if content_type != pending.content_type:
                raise RPCError(f"progress in content type {content_type!r}")
            report = protocol.parse_progress(serialization.decode(msg.body, content_type,
                                                                  self.accept))
        except (RPCError, ValueError) as exc:
            logger.warning("dropped a progress message for %s(): %s", pending.method, exc)
            return None
        pending.progress = report
        return report

    @staticmethod
    def lost(pending: Pending) -> ServerLost:
        return ServerLost(f"the server running {pending.method}() fell silent: no keep-alive "
                          f"for {protocol.KEEPALIVES_MISSED} intervals of {pending.keepalive} s")

    @staticmethod
    def cancelled(pending: Pending) -> Cancelled:
        return Cancelled(f"the call to {pending.method}() was cancelled")

    def broadcast_reply(self, msg: Incoming, pending: Pending) -> BroadcastReply:
        ok, value = self.outcome(msg, pending)
        server = str(msg.props.get("app_id") or "")
        return BroadcastReply(server, value if ok else None, None if ok else value)

    def dropped(self, cid: Any) -> None:
        """Count a reply that matched no pending call."""
        self.replies_dropped += 1
        if self.metrics is not None:
            self.metrics.dropped_reply()
        logger.debug("dropped a reply with unknown correlation id %r", cid)

    def returned(self, pending: Pending | None, routing_key: str, code: int,
                 text: str) -> tuple[bool, Any]:
        """The outcome of a request the broker returned: nobody is bound to hear it."""
        if pending is None or pending.kind == BROADCAST:
            if pending is None:
                logger.warning("request to %r returned by the broker (%s %s): no server is "
                               "serving it", routing_key or self.server_id, code, text)
            return True, []
        return False, UnknownServer(
            f"no server is serving {routing_key!r}: the broker returned the request "
            f"({code} {text})")

    @staticmethod
    def nacked(pending: Pending) -> Refused:
        return Refused(f"the broker did not accept the request to {pending.method}() "
                       f"(basic.nack)")

    @staticmethod
    def blocked(pending: Pending, reason: str) -> BrokerBlocked:
        return BrokerBlocked(
            f"the broker blocked publishing ({reason}) before accepting the request to "
            f"{pending.method}(); it may still run later, within its deadline")

    def timed_out(self, pending: Pending) -> RPCTimeout:
        """The error of a call whose deadline passed, counted."""
        if self.metrics is not None and pending.kind != CHECK:
            self.metrics.timeout()
        return RPCTimeout(f"no reply to {pending.method}() within the call's timeout")

    # -- retries ---------------------------------------------------------------------------------

    def may_retry(self, pending: Pending, error: BaseException) -> bool:
        """Whether a failed call has a retry left, for an error a retry may cure, in time; if so
        it counts the attempt."""
        if pending.retries <= 0 or isinstance(error, AccessRefused):
            return False
        if not isinstance(error, (ConnectionError, Refused, ServerUnavailable)):
            return False
        if pending.deadline is not None and time.monotonic() >= pending.deadline:
            return False
        pending.retries -= 1
        pending.attempt += 1
        # No server consuming, or a queue refusing publishes (a quorum queue nacks them for
        # seconds after its leader's node stops): both last seconds, not milliseconds.
        pending.unavailable = isinstance(error, (ServerUnavailable, Refused))
        # A copy written before the connection failed or blocked may wait in the queue.
        pending.maybe_queued = pending.maybe_queued or isinstance(
            error, (ConnectionLost, BrokerBlocked))
        logger.info("retrying %s() (attempt %d) after %s: %s", pending.method,
                    pending.attempt + 1, type(error).__name__, error)
        return True

    @staticmethod
    def backoff(pending: Pending) -> float:
        """Seconds before the next attempt, within the call's deadline."""
        state = tenacity.RetryCallState(retry_object=_RETRYING, fn=None, args=(), kwargs={})
        state.attempt_number = pending.attempt
        # Servers take seconds to come back; a broker's hiccup, milliseconds.
        wait = float((_BACKOFF_UNAVAILABLE if pending.unavailable else _BACKOFF)(state))
        if pending.deadline is not None:
            wait = min(wait, max(pending.deadline - time.monotonic(), 0.0))
        return wait

    # -- counting --------------------------------------------------------------------------------

    def record(self, pending: Pending, ok: bool, value: Any) -> None:
        """Count a call once, when metrics are on, with what its caller gets: the proxies call
        this when the call ends, after its last retry, never per attempt. A cast has no outcome
        and is not counted."""
        if self.metrics is not None and pending.kind != CHECK and pending.kind != CAST:
            from ..metrics import proxy_outcome

            self.metrics.call(pending.method, proxy_outcome(None if ok else value),
                              time.perf_counter() - pending.started)

    def record_unmade(self, options: CallOptions, method: str, error: Exception) -> None:
        """Count a call that failed before it had a request (a closed proxy, arguments the
        serializer cannot encode, options that do not go together): as ``error``, and with no
        duration, as nothing was sent."""
        if self.metrics is not None and not options.cast:
            from ..metrics import proxy_outcome

            self.metrics.call(method, proxy_outcome(error), None)

    def record_cancelled(self, pending: Pending) -> None:
        """Count a call its caller cancelled. The proxies call this where a cancel wins its race
        with the call's end (its reply, a timeout, a retry) and then count nothing at that end,
        so the call counts once."""
        if self.metrics is not None:
            self.record(pending, False, self.cancelled(pending))


class ProxySettings:
    """The settings and bookkeeping both proxies show alike, read from their CallMaker."""

    _calls: CallMaker
    _failover: Failover
    _states: CallbackStates
    _table: CallTable
    _reply_to: str
    _socket: socket.socket | None

    def _configure(
        self, url: BrokerURL | None, *, server_id: str, serializer: str, timeout: float | None,
        retries: int, wait_for_ready: bool, keepalive: float | None, failover: FailoverStrategy,
        metrics: bool, heartbeat: float, connect_retry: float, max_message_size: int,
        ssl: dict[str, Any] | None, hostname: str | None, port: int | None,
        username: str | None, password: str | None, vhost: str | None,
    ) -> None:
        """The settings both proxies take, checked and kept (see :class:`rpc.Proxy`)."""
        self._url = resolve_url(
            url, hostname=hostname, port=port, username=username, password=password, vhost=vhost,
        )
        self._calls = CallMaker(
            server_id, serializer=serializer, timeout=timeout, retries=retries,
            wait_for_ready=wait_for_ready, max_message_size=max_message_size, metrics=metrics,
            keepalive=keepalive,
        )
        self._failover = Failover(self._url, failover)
        self._heartbeat = heartbeat
        self._connect_retry = connect_retry
        self._ssl = ssl

    def _open_link(
        self, on_reply: Callable[[Incoming], None], on_return: Callable[[Incoming, int, str], None],
        on_nack: Callable[[Any], None], on_blocked: Callable[[list[Any], str], None],
    ) -> Link:
        """Connect and set up the reply consumer and publisher confirms (this blocks)."""
        conn = open_connection(
            self._failover, heartbeat=self._heartbeat, retry_for=self._connect_retry,
            name=f"rpc-proxy {self.server_id}", ssl=self._ssl,
        )
        try:
            link = open_link(conn, on_reply, on_return, max_body=self._calls.max_message_size)
            self._reply_to = link.reply_queue()
            link.enable_confirms(on_nack, on_blocked)
        except Exception:
            conn.release()
            raise
        sock = getattr(getattr(conn.connection, "transport", None), "sock", None)
        #: The connection's socket (RabbitMQ's): it holds nothing of the proxy's, so the blocking
        #: proxy's pump keeps it alive while the proxy may be collected (rpc.client.proxy._pump).
        self._socket = sock if isinstance(sock, socket.socket) else None
        return link

    @property
    def server_id(self) -> str:
        """The server (request queue) this proxy calls."""
        return self._calls.server_id

    @property
    def content_type(self) -> str:
        """The content type requests are encoded in."""
        return self._calls.content_type

    @property
    def default_timeout(self) -> float | None:
        """Seconds a call waits unless ``set_timeout`` says otherwise (None: for ever)."""
        return self._calls.default_timeout

    @default_timeout.setter
    def default_timeout(self, timeout: float | None) -> None:
        self._calls.default_timeout = check_timeout(timeout)

    @property
    def default_retries(self) -> int:
        """Retries of a call unless ``set_retries`` says otherwise."""
        return self._calls.default_retries

    @property
    def default_wait_for_ready(self) -> bool:
        """Whether requests wait in the queue for a server unless a call says otherwise."""
        return self._calls.default_wait_for_ready

    def _waits_by_default(self) -> bool:
        return self._calls.default_wait_for_ready

    @property
    def max_message_size(self) -> int:
        """Largest reply body accepted, in bytes."""
        return self._calls.max_message_size

    @property
    def replies_dropped(self) -> int:
        """Replies that matched no pending call (late after a timeout, duplicates, forgeries)."""
        return self._calls.replies_dropped

    @property
    def pending_calls(self) -> int:
        """Calls awaiting their reply."""
        return self._table.calls()

    @property
    def node(self) -> str | None:
        """``host:port`` of the broker node this proxy is connected to."""
        return self._failover.node()

    @property
    def checks_availability(self) -> bool:
        """Whether the next call asks the broker first if a server consumes (once a second)."""
        return time.monotonic() >= self._calls.available_until

    def get_callback_state(self, uid: str) -> CallbackState:
        """The state of a callback call.

        Raises:
            KeyError: ``uid`` was not issued by this proxy (or finished over 10,000 calls ago).
        """
        return self._states.get(uid)

    def get_num_waiting_callbacks(self) -> int:
        """How many callback calls have not finished yet."""
        return self._states.waiting()


def closed_error() -> RPCError:
    return RPCError("this proxy is closed")


def batch(calls: Iterable[Sequence[Any]]) -> Iterator[Request]:
    """``(method, args[, kwargs])`` items of :meth:`gather`, as requests."""
    for call in calls:
        yield (call[0], tuple(call[1]) if len(call) > 1 else (),
               dict(call[2]) if len(call) > 2 else {})


def mapped(method: str, iterable: Iterable[Any]) -> Iterator[Request]:
    """The requests of :meth:`map`: each item an ``args`` tuple or a single argument."""
    for args in iterable:
        yield method, args if isinstance(args, tuple) else (args,), {}


def check_concurrency(concurrency: int) -> None:
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
