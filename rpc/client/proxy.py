"""The blocking proxy: remote methods as attributes, called synchronously, by callback or as
futures.

One proxy owns one connection and is safe to share between threads, with any number of calls in
flight. Its I/O follows a leader/follower scheme: a thread waiting for a reply reads the socket
itself when nobody else is, so a single-threaded caller publishes and reads on its own thread
with no hand-off; other waiters sleep until the reader hands them their reply or the reader's
role. A background thread reads only while future or callback calls are outstanding and nobody
else reads, fires their timeouts, and keeps heartbeats going.

On a cluster the proxy fails the calls pending on a lost connection at once, reconnects to the
next node in the background, and publishes again the calls that asked for retries. What a call
is, apart from this I/O, is :class:`~rpc.client.calling.CallMaker`'s, shared with
:class:`~rpc.AsyncProxy`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

from ..core import protocol
from ..core.calls import (
    BACKGROUND,
    BROADCAST,
    CAST,
    CHECK,
    FUTURE,
    STREAM,
    SYNC,
    CallbackState,
    CallbackStates,
    CallFuture,
    CallTable,
    Pending,
)
from ..core.errors import ConnectionLost, RPCError
from ..defaults import (
    DEFAULT_CONNECT_RETRY,
    DEFAULT_HEARTBEAT,
    DEFAULT_KEEPALIVE,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_TIMEOUT,
)
from ..transport.connect import FailoverStrategy
from ..transport.forks import renew_in_child
from ..transport.link import Incoming, Link, QueueInfo
from ..transport.urls import BrokerURL, mask_url
from .calling import (
    BroadcastReply,
    ControlMessage,
    ProxySettings,
    Request,
    batch,
    check_concurrency,
    closed_error,
    mapped,
)
from .views import CallOptions, CallView, ProxyBase

logger = logging.getLogger(__name__)

#: Seconds a caller whose deadline passed waits for a reader that took its reply to complete it.
COMPLETION_WAIT = 1.0


class Proxy(ProxySettings, ProxyBase):
    """A dynamic client for the server registered as ``server_id``.

    Example::

        with Proxy(server_id="calc") as proxy:
            proxy.add(2, 3)                          # 5
            proxy.math.mul(2, 4)                     # 8
            proxy.set_timeout(10).add(2, 3)          # RPCTimeout after 10 s without a reply
            uid = proxy.callback(print, print).add(2, 4)
            proxy.get_callback_state(uid)            # CallbackState.WAITING, then FINISHED
            proxy.future.add(2, 3).result()          # 5

    Close a proxy (``with``, :meth:`close`). One dropped unclosed is closed once collected, as
    an unclosed socket is, with a ResourceWarning; its future and callback calls still pending
    keep it open until they end.

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
        keepalive: seconds between the keep-alives a server sends while it runs a call; a call
            whose server has been heard and then misses three fails with ServerLost, long
            before its timeout (None asks for none).
        failover: with several broker URLs, the order to try them: ``"round-robin"`` from the
            first, or ``"shuffle"`` to spread clients; a reconnect starts with the next node.
        metrics: record calls, latency, timeouts, cancels sent, dropped replies and reconnects
            in prometheus_client's default registry (``amqp-rpc[metrics]``).
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
        keepalive: float | None = DEFAULT_KEEPALIVE,
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
        self._configure(
            url, server_id=server_id, serializer=serializer, timeout=timeout, retries=retries,
            wait_for_ready=wait_for_ready, keepalive=keepalive, failover=failover,
            metrics=metrics, heartbeat=heartbeat, connect_retry=connect_retry,
            max_message_size=max_message_size, ssl=ssl, hostname=hostname, port=port,
            username=username, password=password, vhost=vhost,
        )
        # Masked once: __repr__ may run in a finalizer at interpreter shutdown, when re cannot.
        self._masked_url = mask_url(self._url)

        self._closed = False
        self._fresh()
        self._link: Link = self._connect()
        self._link_tick = max(min(heartbeat / 4, 1.0), 0.05) if heartbeat else 1.0
        self._start_threads()
        renew_in_child(self, Proxy._forked)

    def _fresh(self) -> None:
        """The locks and the calls of a proxy with nothing pending."""
        self._lock = threading.Lock()
        self._pump_wakeup = threading.Condition(self._lock)
        self._table = CallTable()
        self._sleepers: dict[str, Pending] = {}
        #: Future and callback calls waiting out the backoff before a retry, out of the table:
        #: a cancel finds them here.
        self._retrying: dict[str, Pending] = {}
        self._reader_active = False
        self._states = CallbackStates()
        self._connect_lock = threading.Lock()
        self._declared: set[str] = set()

    def _start_threads(self) -> None:
        # Neither thread holds the proxy while it waits (see __del__): the callback thread holds
        # its queue, the pump a weak reference, and the proxy itself in ``_pinned`` only while
        # future or callback calls are pending, which thus keep it open.
        self._pinned: list[Proxy | None] = [None]
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._callback_thread = threading.Thread(
            target=_run_jobs, args=(self._jobs,), name=f"rpc-proxy-callbacks-{self.server_id}",
            daemon=True,
        )
        self._callback_thread.start()
        self._pump_thread = threading.Thread(
            target=_pump,
            args=(weakref.ref(self), self._pinned, self._pump_wakeup, self._link_tick),
            name=f"rpc-proxy-io-{self.server_id}", daemon=True,
        )
        self._pump_thread.start()

    def _forked(self) -> None:
        """In a child process just forked, where the connection, the threads and the calls
        pending are the parent's: leave the connection to it (closing it here would close it
        there), forget those calls, and connect anew at the next call."""
        if self._closed:
            return
        self._fresh()
        self._calls.forked()
        self._link.abandon()
        self._start_threads()

    # -- the public surface beyond the views -----------------------------------------------------

    def gather(
        self, calls: Iterable[Sequence[Any]], *, concurrency: int = 50, timeout: float | None = None,
    ) -> list[Any]:
        """Run ``(method, args[, kwargs])`` calls with at most ``concurrency`` in flight.

        Returns the results in order, with each failed call's exception in its place (as
        ``asyncio.gather(return_exceptions=True)`` does); ``timeout`` applies to each call. Left
        early (an exception, an interrupt), it cancels the calls in flight on the server.
        """
        return list(self._stream(batch(calls), concurrency, timeout, raise_errors=False))

    def map(
        self, method: str, iterable: Iterable[Any], *, concurrency: int = 50,
        timeout: float | None = None,
    ) -> Iterator[Any]:
        """Yield ``method(*args)`` for each ``args`` tuple (or single argument), in order.

        At most ``concurrency`` calls are in flight; the first failure is raised where its
        result would have been yielded, and the calls still in flight are cancelled on the
        server; so are they when the loop is left early, once the iterator is closed or dropped.
        """
        return self._stream(mapped(method, iterable), concurrency, timeout, raise_errors=True)

    def _stream(
        self, requests: Iterable[Request], concurrency: int, timeout: float | None, *,
        raise_errors: bool,
    ) -> Iterator[Any]:
        check_concurrency(concurrency)
        view = self.set_timeout(timeout).future if timeout is not None else self.future
        window: deque[Future[Any]] = deque()
        try:
            for method, args, kwargs in requests:
                if len(window) >= concurrency:
                    yield _outcome(window.popleft(), raise_errors)
                window.append(view.call(method, *args, **kwargs))
            while window:
                yield _outcome(window.popleft(), raise_errors)
        finally:
            self._abandon(window)

    def _abandon(self, futures: Iterable[Future[Any]]) -> None:
        """Cancel the calls a batch leaves in flight, so their server stops or skips them: at
        once, or on the callback thread if this one may hold the proxy's lock (a garbage
        collection may close the batch's generator on any thread, at any point)."""
        def cancel() -> None:
            for future in futures:
                future.cancel()

        if self._lock.acquire(blocking=False):
            self._lock.release()
            cancel()
        else:
            self._jobs.put(cancel)

    @property
    def connected(self) -> bool:
        """Whether the connection is up (the next call reconnects if it is not)."""
        return not self._link.closed

    def check_availability(self) -> None:
        """Ask the broker now whether a server consumes this proxy's queue (the answer holds
        for a second, and calls in that second skip the question).

        Raises:
            ServerUnavailable: the queue exists and the broker has counted no consumer on it
                for a second (it counts none for a moment while a quorum queue changes leader).
        """
        self._check_available(self._live_link(), None)

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

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        """A proxy dropped unclosed is closed, with a ResourceWarning, as an unclosed socket or
        file is; by its callback thread, not here: a collection may run on any thread, one of
        this proxy's own too (with its lock held), and closing waits for the broker. The job holds
        the proxy until it has run; ``SimpleQueue.put`` is reentrant, so this never blocks."""
        if self.__dict__.get("_closed", True) or "_pump_thread" not in self.__dict__:
            return  # closed, or __init__ failed before it had threads
        self._jobs.put(self.close)
        _warn(f"unclosed {self!r}", ResourceWarning, source=self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Proxy server_id={self.server_id!r} {self._masked_url} {state}>"

    # -- connecting ------------------------------------------------------------------------------

    def _connect(self) -> Link:
        return self._open_link(self._on_reply, self._on_return, self._on_nack, self._on_blocked)

    def _live_link(self) -> Link:
        link = self._link
        if not link.closed:
            return link
        with self._connect_lock:
            if self._closed:
                raise closed_error()
            if self._link.closed:
                self._declared.clear()
                self._calls.available_until = 0.0
                self._link = link = self._connect()
                logger.info("proxy for %r reconnected to %s", self.server_id,
                            mask_url(self._failover.current or self._url))
                self._calls.send_owed(lambda message: self._publish_control(link, message))
                if self._calls.metrics is not None:
                    self._calls.metrics.reconnected()
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
        """Make one call as ``options`` say: the single entry point of every view.

        A call counts once: a synchronous one here, after its retries (interrupted by a
        KeyboardInterrupt, as ``cancelled``: its caller abandoned it); a stream its caller
        leaves in :meth:`_close_stream`; any other when it ends (:meth:`_complete`), or here if
        it fails before it is on its way (a closed proxy, arguments that cannot be encoded, no
        server consuming, no connection)."""
        try:
            if self._closed:
                raise closed_error()
            if options.tracked:
                raise TypeError("tracked calls are AsyncProxy's: here use on_progress(fn) or a "
                                "future's progress")
            pending = self._calls.prepare(options, method, args, kwargs)
        except Exception as exc:
            self._calls.record_unmade(options, method, exc)
            raise
        kind = pending.kind
        try:
            if kind == SYNC or kind == CAST:
                if kind == SYNC:
                    pending.arm()
                self._run_sync(pending)
                if kind == CAST or pending.ok:
                    self._calls.record(pending, True, pending.value)
                    return pending.value
                raise pending.value
            if kind == BROADCAST:
                pending.arm()
                self._send(pending)
                self._wait_or_forget(pending)
                return pending.value
            if kind == STREAM:
                self._send(pending)
                return Stream(self, pending)
            if kind == FUTURE:
                fut = CallFuture(self._jobs.put)
                pending.future = fut
                self._send_async(pending)
                fut.forget = lambda: self._cancel_future(pending)
                return fut
            self._states.start(pending.cid)
            try:
                self._send_async(pending)
            except BaseException:
                self._states.finish(pending.cid)
                raise
            return pending.cid
        except Exception as exc:
            self._calls.record(pending, False, exc)
            raise
        except BaseException:
            # Nothing else counts it: _complete leaves synchronous calls to us, and a broadcast
            # interrupted while it collects is never completed.
            if kind == SYNC or (kind == BROADCAST and not pending.done):
                self._calls.record_cancelled(pending)
            raise

    def _run_sync(self, pending: Pending) -> None:
        """Send a synchronous call (or a cast) and wait for it, retrying as it asked."""
        while True:
            try:
                self._send(pending)
                if pending.kind == CAST:
                    return
                self._wait_or_forget(pending)
                if pending.ok or self._closed or not self._calls.may_retry(pending, pending.value):
                    return
            except Exception as exc:
                if self._closed or not self._calls.may_retry(pending, exc):
                    raise
            time.sleep(self._calls.backoff(pending))
            if pending.kind != CAST:
                pending.arm()

    def _send_async(self, pending: Pending) -> None:
        try:
            self._send(pending)
        except Exception as exc:
            if not self._retry_later(pending, exc):
                raise
        self._kick_pump()

    def _kick_pump(self) -> None:
        """After a future or callback call is sent: the pump reads for it, and holds the proxy
        until no such call is pending."""
        with self._lock:
            self._pinned[0] = self
            if not self._reader_active:
                self._pump_wakeup.notify()

    def _send(self, pending: Pending, *, again: bool = False) -> None:
        """Publish the request and track it: for the first time, or ``again`` for the retry of
        a future or callback call, which moves from ``_retrying`` to the table in one step, so
        a cancel always finds it; a failed publish puts it back for :meth:`_resend` to end."""
        if self._closed:
            raise closed_error()
        kind = pending.kind
        link = self._live_link()
        if self._calls.needs_check(pending):
            self._check_available(link, pending.deadline)
        props = pending.props
        if kind != CAST:
            props["reply_to"] = self._reply_to
            with self._lock:
                if again and self._retrying.pop(pending.cid, None) is None:
                    return  # cancelled on its way, and ended then
                self._table.add(pending, background=kind in BACKGROUND)
        track = pending.cid if kind != CAST else None
        try:
            try:
                self._publish(link, pending, track)
            except ConnectionLost:
                # The write failed, so the broker has not got the request: send it once more
                # on a new connection (whose reply address differs).
                link = self._live_link()
                if kind != CAST:
                    props["reply_to"] = self._reply_to
                self._publish(link, pending, track)
        except BaseException:  # an interrupt mid-write too: nothing will wait for this call
            with self._lock:
                if self._table.take(pending.cid) is not None and again:
                    self._retrying[pending.cid] = pending
            raise

    def _publish(self, link: Link, pending: Pending, track: str | None) -> None:
        exchange, routing_key = self._calls.routing(pending)
        if exchange and exchange not in self._declared:
            link.declare_fanout(exchange)
            self._declared.add(exchange)
        link.publish(routing_key, pending.body, pending.props, mandatory=True,
                     exchange=exchange, track=track)

    def _check_available(self, link: Link, deadline: float | None) -> None:
        """Fail fast when the queue exists but nobody consumes it (one check a second, and
        more while the broker counts no consumer).

        Raises:
            ServerUnavailable: the broker has counted no consumer on the server's queue for
                ``UNAVAILABLE_AFTER``.
        """
        while True:
            wait = self._calls.checked(self._ask_queue(link, deadline), deadline)
            if wait is None:
                return
            time.sleep(wait)

    def _ask_queue(self, link: Link, deadline: float | None) -> QueueInfo | None:
        """The broker's count of the server queue's messages and consumers (None: no answer
        in time, or no such queue)."""
        check = self._calls.check(deadline)
        check.arm()
        with self._lock:
            self._table.add(check)

        def on_info(info: QueueInfo | None) -> None:
            if self._take(check.cid) is not None:
                self._complete(check, True, info)

        try:
            link.inspect_queue(self.server_id, on_info)
        except ConnectionLost:
            self._take(check.cid)
            return None  # the publish that follows fails the same way, and says so
        self._wait_or_forget(check)
        return check.value if check.ok else None

    def _retry_later(self, pending: Pending, error: BaseException) -> bool:
        """Publish a future or callback call again after a backoff, on a timer thread."""
        if self._closed or not self._calls.may_retry(pending, error):
            return False
        with self._lock:
            self._retrying[pending.cid] = pending
        timer = threading.Timer(self._calls.backoff(pending), self._resend, (pending,))
        timer.daemon = True
        timer.start()
        return True

    def _resend(self, pending: Pending) -> None:
        """Publish a call again once its backoff is over. It stays in ``_retrying`` until its
        request is out, so a cancel meanwhile (reconnecting, asking whether a server consumes)
        ends it and nothing is published; whoever takes it from there ends it."""
        with self._lock:
            if pending.cid not in self._retrying:
                return  # cancelled while it waited, and counted then
        if pending.future is not None and pending.future.done():
            if self._take_to_cancel(pending.cid) is not None:
                self._calls.record_cancelled(pending)  # cancelled just as it failed
            return
        error: Exception | None = None
        if pending.deadline is None or time.monotonic() < pending.deadline:
            try:
                self._send(pending, again=True)
            except Exception as exc:
                error = exc
            else:
                self._kick_pump()
                return
        with self._lock:
            if self._retrying.pop(pending.cid, None) is None:
                return  # cancelled meanwhile, and ended then
        self._complete(pending, False, error or self._calls.timed_out(pending))

    def _cancel_future(self, pending: Pending) -> None:
        if self._take_to_cancel(pending.cid) is not None:
            self._cancel_on_server(pending)
            self._calls.record_cancelled(pending)

    def _take_to_cancel(self, cid: str) -> Pending | None:
        """Remove a call its caller cancels: one awaiting its reply, or one waiting to retry,
        whose server is told too (an earlier attempt may still run: a lost connection, a blocked
        broker)."""
        with self._lock:
            return self._table.take(cid) or self._retrying.pop(cid, None)

    def _forget(self, pending: Pending) -> None:
        """Drop a call nobody waits for any more; a reply to it will be dropped and counted."""
        self._take(pending.cid)

    def _wait_or_forget(self, pending: Pending, until: float | None = None) -> None:
        """Wait for ``pending`` to be done, reading the socket while nobody else does, until
        its deadline (or ``until``, when sooner), when it times out. Interrupted (by a
        KeyboardInterrupt), it forgets the call: nobody will collect its reply."""
        try:
            deadline = pending.deadline
            if until is not None and (deadline is None or until < deadline):
                deadline = until
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
                    self._read_until(pending, deadline)
                    if pending.done:  # only its caller re-arms it: no lock needed to see this
                        return
                else:
                    pending.sleep(None if deadline is None else deadline - time.monotonic())
                    with self._lock:
                        self._sleepers.pop(pending.cid, None)
                if not pending.done and deadline is not None and time.monotonic() >= deadline:
                    if not self._expire(pending):
                        self._await_completion(pending)
                    return
        except BaseException:
            self._forget(pending)
            raise

    def _read_until(self, pending: Pending, deadline: float | None) -> None:
        # Reads end at least once a second while keep-alives are watched: the pump may find the
        # call's server silent and fail the call meanwhile.
        slice_ = 1.0 if pending.keepalive is not None else None
        try:
            while not pending.done:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return
                if slice_ is not None and (remaining is None or remaining > slice_):
                    remaining = slice_
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
            if self._table.background:
                self._pump_wakeup.notify()

    def _expire(self, pending: Pending) -> bool:
        """Time ``pending`` out; False if another thread took it from the table first (a
        reader with its reply, or a lost connection), which completes it now."""
        if self._take(pending.cid) is None:
            return pending.done
        if pending.done:
            return True
        if pending.kind == BROADCAST:
            self._complete(pending, True, pending.value)
            return True
        self._complete(pending, False, self._calls.timed_out(pending))
        self._cancel_on_server(pending)
        return True

    def _await_completion(self, pending: Pending) -> None:
        """Wait for the thread that took ``pending`` from the table as its deadline passed to
        complete it: its outcome is the reply that thread read, not a timeout. Bounded, in case
        that thread failed first: the call then times out after all."""
        limit = time.monotonic() + COMPLETION_WAIT
        while not pending.done and time.monotonic() < limit:
            pending.sleep(0.01)
        if not pending.done:
            self._complete(pending, False, self._calls.timed_out(pending))

    def _cancel_on_server(self, pending: Pending) -> None:
        """Tell the server nobody waits for ``pending`` any more, so it stops or skips it."""
        if pending.kind != CHECK:
            self._control(pending, protocol.CANCEL_TYPE)

    def cancel(self, uid: str) -> bool:
        """Cancel a callback call: its error callback gets rpc.Cancelled, and the server stops
        or skips it; a call waiting to retry is not published again. False if it is no longer
        pending."""
        pending = self._take_to_cancel(uid)
        if pending is None:
            return False
        self._cancel_on_server(pending)
        self._complete(pending, False, self._calls.cancelled(pending))
        return True

    # -- replies ---------------------------------------------------------------------------------

    def _on_reply(self, msg: Incoming) -> None:
        cid = msg.props.get("correlation_id")
        kind = msg.props.get("type")
        if kind == protocol.ITEM_TYPE:
            self._on_item(cid, msg)
            return
        if kind == protocol.KEEPALIVE_TYPE or kind == protocol.PROGRESS_TYPE:
            self._on_news(cid, kind, msg)
            return
        with self._lock:
            pending = self._table.take_answered(cid)
        if pending is None:
            self._calls.dropped(cid)
        elif pending.kind == BROADCAST:
            reply = self._calls.broadcast_reply(msg, pending)
            with self._lock:
                if not pending.done:
                    pending.value.append(reply)
        else:
            ok, value = self._calls.outcome(msg, pending)
            if pending.stream is not None:
                pending.stream.answered = True
            self._complete(pending, ok, value)

    def _on_news(self, cid: Any, kind: str, msg: Incoming) -> None:
        """A keep-alive or a progress report: the server of a pending call is alive."""
        with self._lock:
            pending = self._table.get(cid)
        if pending is None:
            return  # the call is done, or was never ours: nothing waits for news of it
        if kind == protocol.KEEPALIVE_TYPE:
            self._calls.heard(msg, pending)
            return
        report = self._calls.progress(msg, pending)
        if report is None:
            return
        if pending.future is not None:
            pending.future.progress = report
        on_progress = pending.on_progress
        if on_progress is not None:
            self._jobs.put(lambda: on_progress(report))

    def _on_item(self, cid: Any, msg: Incoming) -> None:
        with self._lock:
            pending = self._table.get(cid)
        if pending is None or pending.stream is None:
            self._calls.dropped(cid)
            return
        ok, value = self._calls.item(msg, pending)
        if not ok:
            if self._take(cid) is not None:
                self._complete(pending, False, value)
            return
        with self._lock:
            pending.stream.items.append(value)
            pending.done = True
            pending.wake()

    # -- streams ---------------------------------------------------------------------------------

    def _next_item(self, pending: Pending) -> Any:
        """The stream's next item, waited for as a synchronous call waits for its reply.

        Raises:
            StopIteration: the stream ended.
            Exception: the one the handler raised, or RPCTimeout, ConnectionLost, ...
        """
        stream = pending.stream
        assert stream is not None
        while True:
            with self._lock:
                if stream.items:
                    item, grant = stream.take()
                    break
                if stream.ended:
                    ok, value = stream.end
                    if ok:
                        raise StopIteration
                    raise value
                pending.arm()
            until = None
            if stream.item_timeout is not None:
                until = time.monotonic() + stream.item_timeout
            self._wait_or_forget(pending, until)
        if grant:
            self._control(pending, protocol.CREDIT_TYPE, grant)
        return item

    def _close_stream(self, pending: Pending) -> None:
        """Stop a stream nobody reads any more: the server closes the generator. One left
        before it ended counts as cancelled; whichever of this and :meth:`_complete` ends it
        first, under the lock, counts it."""
        stream = pending.stream
        assert stream is not None
        with self._lock:
            self._table.take(pending.cid)
            if stream.answered:
                return
            stream.answered = True  # one cancel is enough
            if not stream.ended:
                self._calls.record_cancelled(pending)
                stream.ended, stream.end = True, (True, None)
        self._control(pending, protocol.CANCEL_TYPE)

    def _control(self, pending: Pending, kind: str, credit: int = 0) -> None:
        message = self._calls.control(pending, kind, credit)
        try:
            link = self._live_link() if kind == protocol.CREDIT_TYPE else self._link
            self._publish_control(link, message)
        except (ConnectionLost, RPCError) as exc:
            if kind == protocol.CREDIT_TYPE:
                raise
            logger.info("cancel of %s() sent once reconnected: %s", pending.method, exc)
            self._calls.owe_cancel(message)
            link = self._link
            if not link.closed:  # reconnected meanwhile, and owed nothing then
                self._calls.send_owed(lambda owed: self._publish_control(link, owed))

    def _publish_control(self, link: Link, message: ControlMessage) -> None:
        exchange, routing_key, body, props = message
        if link.closed:
            raise ConnectionLost("the connection is closed")
        if exchange and exchange not in self._declared:
            link.declare_fanout(exchange)
            self._declared.add(exchange)
        link.publish(routing_key, body, props, exchange=exchange)

    def _on_return(self, msg: Incoming, code: int, text: str) -> None:
        pending = self._take(msg.props.get("correlation_id"))
        ok, value = self._calls.returned(pending, msg.routing_key, code, text)
        if pending is not None:
            self._complete(pending, ok, value)

    def _take(self, cid: Any) -> Pending | None:
        """Remove a pending call to complete it (None if it is already gone)."""
        with self._lock:
            return self._table.take(cid)

    def _on_blocked(self, cids: list[str], reason: str) -> None:
        """The broker blocked publishing: requests not yet confirmed will not be answered soon."""
        for cid in cids:
            pending = self._take(cid)
            if pending is not None:
                self._complete(pending, False, self._calls.blocked(pending, reason))

    def _on_nack(self, cid: str) -> None:
        pending = self._take(cid)
        if pending is not None:
            self._complete(pending, False, self._calls.nacked(pending))

    def _complete(self, pending: Pending, ok: bool, value: Any) -> None:
        kind = pending.kind
        if not ok and kind in BACKGROUND and pending.retries > 0 and self._retry_later(
                pending, value):
            return
        pending.ok, pending.value = ok, value
        fut = pending.future
        if fut is not None and not fut.set_running_or_notify_cancel():
            self._calls.record_cancelled(pending)  # cancelled as it ended: its outcome goes unheard
            return
        # A synchronous call may be retried yet: _invoke counts it. A stream counts below.
        if kind != SYNC and kind != STREAM:
            self._calls.record(pending, ok, value)
        if kind == STREAM:
            stream = pending.stream
            assert stream is not None
            with self._lock:
                if not stream.ended:  # else its caller left it, and it counted as cancelled
                    self._calls.record(pending, ok, value)  # before its reader sees the end
                    stream.ended, stream.end = True, (ok, value)
                pending.done = True
                pending.wake()
        elif kind == SYNC or kind == BROADCAST or kind == CHECK:
            with self._lock:
                pending.done = True
                pending.wake()
        elif kind == FUTURE:
            pending.done = True
            assert fut is not None
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)
        else:
            pending.done = True
            self._jobs.put(lambda: self._run_callback(pending))

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
            pending = self._table.drain()
        for call in pending:
            self._complete(call, False, error)

    # -- the pump thread's turns (see _pump) -----------------------------------------------------

    def _pump_due(self, now: float, next_tick: float) -> tuple[list[Pending], float]:
        """Under the lock: the background calls that expired, and how long the pump may sleep;
        0 when it has work now: those calls, a tick, or reading, which it has just taken on."""
        table = self._table
        expired = table.expired(now)
        if expired or now >= next_tick:
            return expired, 0.0
        if table.background and not self._reader_active:
            self._reader_active = True
            return expired, 0.0
        if not table.background:
            self._pinned[0] = None
        wait = next_tick - now
        timer = table.next_deadline()
        if timer is not None:
            wait = min(wait, timer - now)
        return expired, max(wait, 0.001)

    def _pump_turn(self, expired: list[Pending], now: float, next_tick: float) -> float:
        """The work :meth:`_pump_due` found, outside the lock; returns when the next tick is due.
        Reading, it holds the proxy until the background calls end or a caller reads."""
        if expired:
            for pending in expired:
                self._complete(pending, False, self._calls.timed_out(pending))
                self._cancel_on_server(pending)
            return next_tick
        if now >= next_tick:
            self._tick()
            return now + self._link_tick
        table = self._table
        try:
            while table.background and not self._closed:
                now = time.monotonic()
                timer = table.next_deadline()
                if now >= next_tick or (timer is not None and timer <= now):
                    break
                wait = next_tick - now
                if timer is not None:
                    wait = min(wait, timer - now)
                self._link.read(wait)
                if self._sleepers:
                    break  # let a synchronous caller read for itself
        except ConnectionLost as exc:
            self._connection_lost(exc)
        finally:
            self._release_reader()
        return next_tick

    def _tick(self) -> None:
        """Keep an idle connection alive: read what waits, send a heartbeat when due; fail the
        calls whose server fell silent."""
        with self._lock:
            gone = self._table.silent(time.monotonic(), protocol.KEEPALIVES_MISSED)
        for pending in gone:
            self._complete(pending, False, self._calls.lost(pending))
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


class Stream(Iterator[Any]):
    """The items of a streaming call as they come: ``for row in proxy.stream.export(table)``.

    The server sends at most one window of items ahead of this iterator, so a slow consumer
    pauses the generator on the server. An exception the handler raised is raised where its
    items end. Leaving early (``break``, :meth:`close`, ``with``, garbage collection) stops the
    generator on the server.
    """

    def __init__(self, proxy: Proxy, pending: Pending) -> None:
        self._proxy = proxy
        self._pending = pending
        self._closed = False

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Any:
        if self._closed:
            raise StopIteration
        try:
            return self._proxy._next_item(self._pending)
        except StopIteration:
            self._closed = True
            raise
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop listening; the server closes the generator (its ``finally`` runs)."""
        if not self._closed:
            self._closed = True
            self._proxy._close_stream(self._pending)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not self._closed:  # not here: a collection may run with the proxy's lock held
            self._proxy._jobs.put(self.close)

    def __repr__(self) -> str:
        return f"<Stream {self._pending.method}() {'closed' if self._closed else 'open'}>"


def _run_jobs(jobs: queue.SimpleQueue[Callable[[], None] | None]) -> None:
    """The callback thread: runs jobs until a None. It holds only the queue, and a job (which
    may hold the proxy) only until it has run."""
    while (job := jobs.get()) is not None:
        try:
            job()
        except Exception:
            logger.exception("a callback raised")
        job = None


def _pump(
    ref: weakref.ref[Proxy], pinned: list[Proxy | None], wakeup: threading.Condition,
    link_tick: float,
) -> None:
    """The pump thread: it holds its proxy while it works, and only ``ref`` while it sleeps
    (and ``pinned``, which holds the proxy while it has background calls pending), so a proxy
    nobody else holds is collected, and closed by its finalizer; then this ends.

    While it sleeps it holds the connection's socket instead, which holds nothing of the proxy:
    a collection that finds the proxy unreachable finds its socket reachable, so the socket's
    own finalizer does not drop the connection before the proxy's closes it cleanly."""
    next_tick = time.monotonic() + link_tick
    while True:
        with wakeup:
            while True:
                proxy = ref()
                if proxy is None or proxy._closed:
                    return
                now = time.monotonic()
                expired, wait = proxy._pump_due(now, next_tick)
                if not wait:
                    break
                sock = proxy._socket
                del proxy
                wakeup.wait(wait)
                del sock
        next_tick = proxy._pump_turn(expired, now, next_tick)


def _outcome(fut: Future[Any], raise_errors: bool) -> Any:
    try:
        return fut.result()
    except Exception as exc:
        if raise_errors:
            raise
        return exc


__all__ = ["BroadcastReply", "CallView", "CallbackState", "Proxy", "Stream"]
