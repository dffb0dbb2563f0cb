"""The asyncio proxy: :class:`AsyncProxy`, whose remote methods are coroutines.

It is native: its connection is read by the event loop itself (:mod:`rpc.transport.aio`), a
reply resolves the awaiting task's future directly, and no call takes a thread or hops between
threads. Only connecting (py-amqp's handshake and setup) runs on the loop's default executor.
What a call is — the request, reading the reply, retries, the availability check, counting — is
:class:`~rpc.client.calling.CallMaker`'s, shared with the blocking :class:`~rpc.Proxy`, and
the views are the same :class:`~rpc.client.views.CallView`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import warnings
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterable, Sequence
from contextvars import Context
from dataclasses import replace
from typing import Any

from ..core import protocol
from ..core.calls import (
    BROADCAST,
    CALLBACK,
    CAST,
    FUTURE,
    STREAM,
    SYNC,
    CallbackStates,
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
from ..transport.aio import AsyncLink, open_async_link
from ..transport.connect import FailoverStrategy
from ..transport.link import Incoming, Link, QueueInfo
from ..transport.urls import BrokerURL, mask_url
from .calling import (
    ControlMessage,
    ProxySettings,
    Request,
    batch,
    check_concurrency,
    closed_error,
    mapped,
)
from .views import FUTURE_CALL, CallOptions, CallView, ProxyBase, check_timeout

logger = logging.getLogger(__name__)

#: The tasks proxies run on their own (callback calls, reconnections) until they end: held here,
#: not by their proxy, they hold it, so a proxy dropped unclosed is not collected before they end.
_spawned: set[asyncio.Task[Any]] = set()


class AsyncProxy(ProxySettings, ProxyBase):
    """A dynamic client for ``server_id`` whose remote methods are coroutines.

    Example::

        async with AsyncProxy(server_id="calc") as proxy:
            await proxy.add(2, 3)                        # 5
            await proxy.math.mul(2, 4)                   # 8
            await proxy.call("add", 2, 3)                # by name
            await proxy.set_timeout(1).add(2, 3)         # RPCTimeout after 1 s without a reply
            task = proxy.future.add(2, 3)                # an asyncio.Task, sent at the next await
            await proxy.gather([("add", (1, 2)), ("add", (3, 4))])   # [3, 7]

    Construction does not connect: ``async with``, :meth:`connect` or the first call does, off
    the event loop. A proxy belongs to the loop that connected it. Cancelling the task that
    awaits a call forgets the call and cancels it on the server; a reply that still comes is
    dropped (and counted in :attr:`replies_dropped`).

    Close a proxy (``async with``, :meth:`close`). One dropped while connected warns when it is
    collected, as an unclosed asyncio transport does. Like a transport, it is held by its loop
    while the loop watches its socket (RabbitMQ: until the loop closes) or its deadline timer
    (until the timeout of its last calls), and by its callback calls until they end; on other
    transports, once it is collected, its reader thread closes its connection.

    Args:
        url: broker URL; the options are those of :class:`~rpc.Proxy`, with the same meaning.
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
        self._table = CallTable()
        self._states = CallbackStates()
        self._link: AsyncLink | None = None
        self._reply_to = ""
        self._connecting: asyncio.Future[AsyncLink] | None = None
        self._checking: asyncio.Future[QueueInfo | None] | None = None
        self._declared: set[str] = set()
        #: Calls waiting out the backoff before a retry, out of the table: cancel() finds them.
        self._retrying: dict[str, Pending] = {}
        #: Callback calls whose request is not out (yet, or again): their task may not have run,
        #: or be connecting or asking whether a server consumes. True once cancel() found one
        #: there: it is then not published, and ends with rpc.Cancelled.
        self._unsent: dict[str, bool] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._watch: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def connected(self) -> bool:
        """Whether the connection is up (the next call reconnects if it is not)."""
        return self._link is not None and not self._link.closed

    @property
    def tracked(self) -> CallView:
        """A one-call view whose call is iterated for its progress, then awaited::

            call = proxy.tracked.long_job()
            async for report in call:          # rpc.Progress, as reported
                print(report.done, report.total)
            result = await call
        """
        return self._view().tracked

    # -- connecting and closing ------------------------------------------------------------------

    async def connect(self) -> AsyncProxy:
        """Connect now rather than on the first call; returns the proxy.

        Raises:
            rpc.ConnectionError: the broker stayed unreachable for ``connect_retry`` seconds.
        """
        await self._live_link()
        return self

    async def _live_link(self) -> AsyncLink:
        link = self._link
        if link is not None and not link.closed:
            return link
        if self._closed:
            raise closed_error()
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise RPCError("this AsyncProxy belongs to another event loop: make one per loop")
        connecting = self._connecting
        # A finished attempt is not reused: it failed, or its connection has since been lost.
        if connecting is None or connecting.done():
            connecting = self._connecting = asyncio.ensure_future(self._open())
        # Shielded: a caller cancelled while connecting must not orphan the connection.
        return await asyncio.shield(connecting)

    async def _open(self) -> AsyncLink:
        reconnect = self._link is not None
        link = await open_async_link(self._open_blocking, on_lost=self._on_lost)
        if self._closed:  # closed while this connected
            await link.close()
            raise closed_error()
        self._link = link
        self._declared.clear()
        self._calls.available_until = 0.0
        self._calls.send_owed(lambda message: self._publish_control(link, message))
        if reconnect:
            logger.info("proxy for %r reconnected to %s", self.server_id,
                        mask_url(self._failover.current or self._url))
            if self._calls.metrics is not None:
                self._calls.metrics.reconnected()
        return link

    def _open_blocking(self) -> Link:
        """Connect and set up, on the executor; the loop takes the connection over after."""
        return self._open_link(self._on_reply, self._on_return, self._on_nack, self._on_blocked)

    async def close(self) -> None:
        """Fail the calls still pending and close the connection (on the proxy's own loop, when
        another loop's task closes it)."""
        owner = self._loop
        if owner is None or owner is asyncio.get_running_loop():
            await self._close()
        elif owner.is_running():
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._close(), owner))
        else:  # its loop is gone, and the connection with it: nothing is left to do I/O with
            self._closed = True
            self._table.drain()
            self._timer = None

    async def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for timer in (self._timer, self._watch):
            if timer is not None:
                timer.cancel()
        self._fail_all(RPCError("the proxy was closed while the call was pending"))
        connecting = self._connecting
        if connecting is not None and not connecting.done():
            try:
                await asyncio.shield(connecting)
            except Exception:
                pass  # it closes what it opened, seeing the proxy closed
        if self._link is not None:
            await self._link.close()

    async def __aenter__(self) -> AsyncProxy:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        """A proxy dropped while connected warns, as an unclosed asyncio transport does. It
        closes nothing here, where the loop may be gone: a bridge's reader thread closes its
        connection once the bridge is collected (rpc.transport.aio), and RabbitMQ's socket
        closes when collected, as it would behind a transport."""
        if not self.__dict__.get("_closed", True) and self.connected:
            _warn(f"unclosed {self!r}", ResourceWarning, source=self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "connected" if self.connected else "not connected"
        return f"<AsyncProxy server_id={self.server_id!r} {self._masked_url} {state}>"

    # -- making a call ---------------------------------------------------------------------------

    def _invoke(
        self, options: CallOptions, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
    ) -> Any:
        """Make one call as ``options`` say: a coroutine, or a task (future) or uid (callback)
        for a call already on its way."""
        pending = self._prepare(options, method, args, kwargs)
        kind = pending.kind
        if options.tracked and kind == SYNC:
            return TrackedCall(self._call, pending)
        if kind == SYNC or kind == CAST:
            return self._call(pending)
        if kind == BROADCAST:
            return self._broadcast(pending)
        if kind == STREAM:
            return AsyncStream(self, pending)
        if kind == FUTURE:
            return asyncio.ensure_future(self._call(pending))
        self._states.start(pending.cid)
        self._unsent[pending.cid] = False  # cancel() finds it before its task has run
        self._spawn(self._callback(pending))
        return pending.cid

    def _prepare(
        self, options: CallOptions, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
    ) -> Pending:
        """The call's request; a call that fails here (a closed proxy, arguments that cannot be
        encoded) counts too, as every call does once."""
        try:
            if self._closed:
                raise closed_error()
            return self._calls.prepare(options, method, args, kwargs)
        except Exception as exc:
            self._calls.record_unmade(options, method, exc)
            raise

    async def check_availability(self) -> None:
        """Ask the broker now whether a server consumes this proxy's queue (the answer holds
        for a second, and calls in that second skip the question).

        Raises:
            ServerUnavailable: the queue exists and the broker has counted no consumer on it
                for a second (it counts none for a moment while a quorum queue changes leader).
        """
        self._calls.available_until = 0.0
        await self._check(await self._live_link(), None)

    async def _call(self, pending: Pending) -> Any:
        """Publish, await the reply, and retry as the call asked; count the call once, with
        what its caller gets (its task cancelled: ``cancelled``)."""
        loop = asyncio.get_running_loop()
        try:
            if loop is not self._loop and self._loop is not None:
                raise RPCError("this AsyncProxy belongs to another event loop: make one per loop")
            while True:
                waiter = pending.waiter = _Waiter(loop=loop)
                try:
                    if not self._publish_now(pending):
                        await self._publish(pending)
                    if pending.kind == CAST:
                        return None
                    value = await waiter
                    break
                except asyncio.CancelledError:
                    if self._table.take(pending.cid) is not None:
                        self._cancel_on_server(pending)
                    raise
                except Exception as exc:
                    if self._unsent.get(pending.cid):  # cancel() came first: that is the outcome
                        raise self._calls.cancelled(pending) from None
                    if self._closed or not self._calls.may_retry(pending, exc):
                        raise
                await self._back_off(pending)
        except asyncio.CancelledError:
            self._calls.record_cancelled(pending)
            raise
        except Exception as exc:
            self._calls.record(pending, False, exc)
            raise
        self._calls.record(pending, True, value)
        return value

    async def _back_off(self, pending: Pending) -> None:
        """Wait out the backoff before a retry, with the call where :meth:`cancel` finds it; a
        cancel of its task ends it here, telling its server as :meth:`cancel` does (an earlier
        attempt may still run).

        Raises:
            Cancelled: :meth:`cancel` ended the call meanwhile.
        """
        waiter = pending.waiter = asyncio.get_running_loop().create_future()
        self._retrying[pending.cid] = pending
        if pending.kind == CALLBACK:
            self._unsent[pending.cid] = False  # after this, on its way again
        try:
            await asyncio.wait((waiter,), timeout=self._calls.backoff(pending))
        except asyncio.CancelledError:
            if waiter.cancel():  # not ended by cancel() first
                self._cancel_on_server(pending)
            raise
        finally:
            self._retrying.pop(pending.cid, None)  # cancel() may have taken it
        if waiter.done():
            await waiter  # raises the rpc.Cancelled that cancel() set

    def _publish_now(self, pending: Pending) -> bool:
        """Publish without awaiting anything when the connection is up and no availability
        check is due (a coroutine fewer per call); False, having sent nothing, when
        :meth:`_publish` must do it."""
        link = self._link
        if link is None or link.closed or self._calls.needs_check(pending):
            return False
        try:
            self._send(link, pending)
        except ConnectionLost:
            return False  # not written: _publish sends it on a new connection
        return True

    async def _publish(self, pending: Pending) -> None:
        link = self._link
        if link is None or link.closed:
            link = await self._live_link()
        if self._calls.needs_check(pending):
            await self._check(link, pending.deadline)
        try:
            self._send(link, pending)
        except ConnectionLost:
            # The write failed, so the broker has not got the request: send it once more on a
            # new connection (whose reply address differs).
            self._send(await self._live_link(), pending)

    async def _publish_counted(self, pending: Pending) -> None:
        """Publish a broadcast or a stream, which count when they end (:meth:`_complete`), or
        here if they fail before they are on their way."""
        try:
            await self._publish(pending)
        except Exception as exc:
            self._calls.record(pending, False, exc)
            raise

    def _send(self, link: AsyncLink, pending: Pending) -> None:
        """Publish the request and track it.

        Raises:
            Cancelled: cancel() ended this callback call before its request went out.
        """
        if self._unsent and self._unsent.pop(pending.cid, False):
            raise self._calls.cancelled(pending)
        props = pending.props
        track = None
        # A call made while no other is pending (one awaited after another) has no others in
        # its loop pass to share a send with: it goes out at once, costing no callback.
        alone = not self._table
        if pending.kind != CAST:
            props["reply_to"] = self._reply_to
            table = self._table
            table.add(pending, background=True)
            track = pending.cid
            deadline = pending.deadline
            if deadline is not None and (self._timer_at is None or deadline < self._timer_at):
                self._arm_timer(deadline)
        exchange, routing_key = self._calls.routing(pending)
        try:
            if exchange and exchange not in self._declared:
                link.declare_fanout(exchange)
                self._declared.add(exchange)
            if track is None:
                # Nothing would hear of a cast whose write failed after this pass: it goes out
                # now, and a failed write raises here for _publish to send it again.
                link.publish(routing_key, pending.body, props, mandatory=True,
                             exchange=exchange, now=True)
                if link.closed:
                    raise ConnectionLost("the connection failed while the cast was written")
                return
            link.publish(routing_key, pending.body, props, mandatory=True, exchange=exchange,
                         track=track, now=alone)
        except BaseException:
            self._table.take(pending.cid)
            if pending.kind == CALLBACK:
                self._unsent[pending.cid] = False  # not out after all: cancel() finds it again
            raise

    async def _broadcast(self, pending: Pending) -> list[Any]:
        """Publish to every server, and collect what they answer until the timeout."""
        waiter = pending.waiter = asyncio.get_running_loop().create_future()
        await self._publish_counted(pending)
        try:
            return list(await waiter)
        finally:
            self._table.take(pending.cid)

    async def _callback(self, pending: Pending) -> None:
        try:
            value, ok = await self._call(pending), True
        except Exception as exc:
            value, ok = exc, False
        finally:
            self._unsent.pop(pending.cid, None)  # one that failed before it went out
        self._states.processing(pending.cid)
        try:
            function = pending.on_success if ok else pending.on_error
            if function is not None:
                result = function(value)
                if inspect.isawaitable(result):
                    await result
            elif not ok:
                logger.warning("call %s() failed and has no error callback: %r",
                               pending.method, value)
        except Exception:
            logger.exception("a callback raised")
        finally:
            self._states.finish(pending.cid)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        _spawned.add(task)
        task.add_done_callback(_spawned.discard)

    async def _check(self, link: AsyncLink, deadline: float | None) -> None:
        """Fail fast when the queue exists but nobody consumes it; one question at a time
        for every caller, once a second at most, and more while the broker counts no consumer.

        Raises:
            ServerUnavailable: the broker has counted no consumer on the server's queue for
                ``UNAVAILABLE_AFTER``.
        """
        while True:
            checking = self._checking
            if checking is None or checking.done():
                checking = self._checking = asyncio.ensure_future(self._ask(link, deadline))
                # Its callers may all be gone (cancelled, or the proxy closed): nobody else
                # reads it.
                checking.add_done_callback(lambda done: done.cancelled() or done.exception())
            wait = self._calls.checked(await asyncio.shield(checking), deadline)
            if wait is None:
                return
            await asyncio.sleep(wait)

    async def _ask(self, link: AsyncLink, deadline: float | None) -> QueueInfo | None:
        """The broker's count of the server queue's messages and consumers (None: no answer
        in time, or no such queue)."""
        check = self._calls.check(deadline)
        waiter = check.waiter = asyncio.get_running_loop().create_future()
        self._table.add(check)

        def on_info(info: QueueInfo | None) -> None:
            if self._table.take(check.cid) is not None and not waiter.done():
                waiter.set_result(info)

        try:
            link.inspect_queue(self.server_id, on_info)
        except ConnectionLost:
            self._table.take(check.cid)
            return None  # the publish that follows fails the same way, and says so
        assert check.deadline is not None
        try:
            info: QueueInfo | None = await asyncio.wait_for(
                waiter, max(check.deadline - time.monotonic(), 0.0))
        except TimeoutError:
            self._table.take(check.cid)
            return None  # no answer in time: the call goes ahead
        return info

    def _arm_timer(self, deadline: float) -> None:
        """One loop timer for every call, set for the earliest deadline: a call costs no timer
        of its own, and one that is answered in time costs none at all."""
        if self._timer is not None:
            self._timer.cancel()
        loop = self._loop
        assert loop is not None
        self._timer = loop.call_later(max(deadline - time.monotonic(), 0.0), self._on_timer)
        self._timer_at = deadline

    def _cancel_on_server(self, pending: Pending) -> None:
        """Tell the server nobody waits for ``pending`` any more, so it stops or skips it."""
        if pending.kind != CAST and pending.kind != BROADCAST:
            self._control(pending, protocol.CANCEL_TYPE)

    def cancel(self, uid: str) -> bool:
        """Cancel a callback call: its error callback gets rpc.Cancelled, and the server stops
        or skips it; a call waiting to retry is not published again (its server is told too: an
        earlier attempt may still run); one whose request is not out yet is not published.
        False if it is no longer pending."""
        pending = self._table.take(uid) or self._retrying.pop(uid, None)
        if pending is None:
            if self._unsent.get(uid) is not False:
                return False
            self._unsent[uid] = True  # its task ends it with rpc.Cancelled before it publishes
            return True
        self._cancel_on_server(pending)
        self._complete(pending, False, self._calls.cancelled(pending))
        return True

    def _watch_silence(self) -> None:
        """Once a second while any call has heard from its server: fail those gone silent."""
        self._watch = None
        table = self._table
        for pending in table.silent(time.monotonic(), protocol.KEEPALIVES_MISSED):
            self._complete(pending, False, self._calls.lost(pending))
        if table.heard_any() and self._loop is not None and not self._closed:
            self._watch = self._loop.call_later(1.0, self._watch_silence)

    def _heard(self, msg: Incoming, pending: Pending) -> None:
        self._calls.heard(msg, pending)
        if self._watch is None and self._loop is not None:
            self._watch = self._loop.call_later(1.0, self._watch_silence)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        table = self._table
        for pending in table.expired(time.monotonic()):
            if pending.kind == BROADCAST:
                self._complete(pending, True, pending.value)
            else:
                self._complete(pending, False, self._calls.timed_out(pending))
                self._cancel_on_server(pending)
        deadline = table.next_deadline()
        if deadline is not None:
            self._arm_timer(deadline)

    # -- what the connection tells (on the loop) -------------------------------------------------

    def _on_reply(self, msg: Incoming) -> None:
        cid = msg.props.get("correlation_id")
        kind = msg.props.get("type")
        if kind == protocol.ITEM_TYPE:
            self._on_item(cid, msg)
            return
        if kind == protocol.KEEPALIVE_TYPE or kind == protocol.PROGRESS_TYPE:
            self._on_news(cid, kind, msg)
            return
        pending = self._table.take_answered(cid)
        if pending is None:
            self._calls.dropped(cid)
        elif pending.kind == BROADCAST:
            pending.value.append(self._calls.broadcast_reply(msg, pending))
        else:
            if pending.waiter is not None and pending.waiter.cancelled():
                self._calls.dropped(cid)  # its task was cancelled, and has not yet forgotten it
                return
            ok, value = self._calls.outcome(msg, pending)
            if pending.stream is not None:
                pending.stream.answered = True
            self._complete(pending, ok, value)

    def _on_news(self, cid: Any, kind: str, msg: Incoming) -> None:
        """A keep-alive or a progress report: the server of a pending call is alive."""
        pending = self._table.get(cid)
        if pending is None:
            return  # the call is done, or was never ours: nothing waits for news of it
        if kind == protocol.KEEPALIVE_TYPE:
            self._heard(msg, pending)
            return
        report = self._calls.progress(msg, pending)
        if self._watch is None and self._loop is not None:
            self._watch = self._loop.call_later(1.0, self._watch_silence)
        if report is not None and pending.on_progress is not None:
            try:
                result = pending.on_progress(report)
                if inspect.isawaitable(result):
                    self._spawn(result)
            except Exception:
                logger.exception("an on_progress function raised")

    def _on_item(self, cid: Any, msg: Incoming) -> None:
        pending = self._table.get(cid)
        if pending is None or pending.stream is None:
            self._calls.dropped(cid)
            return
        if self._watch is None and self._loop is not None:
            self._watch = self._loop.call_later(1.0, self._watch_silence)
        ok, value = self._calls.item(msg, pending)
        if not ok:
            self._table.take(cid)
            self._complete(pending, False, value)
            return
        pending.stream.items.append(value)
        waiter = pending.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- streams ---------------------------------------------------------------------------------

    async def _start_stream(self, pending: Pending) -> None:
        stream = pending.stream
        assert stream is not None
        try:
            await self._publish_counted(pending)
        except Exception as exc:
            stream.ended, stream.end = True, (False, exc)  # counted: closing it is no cancel
            raise

    async def _next_item(self, pending: Pending) -> Any:
        """The stream's next item, as it comes.

        Raises:
            StopAsyncIteration: the stream ended.
            Exception: the one the handler raised, or RPCTimeout, ConnectionLost, ...
        """
        stream = pending.stream
        assert stream is not None
        while True:
            if stream.items:
                item, grant = stream.take()
                if grant:
                    self._control(pending, protocol.CREDIT_TYPE, grant)
                return item
            if stream.ended:
                ok, value = stream.end
                if ok:
                    raise StopAsyncIteration
                raise value
            waiter = pending.waiter = asyncio.get_running_loop().create_future()
            if stream.item_timeout is None:
                await waiter
                continue
            try:
                await asyncio.wait_for(waiter, stream.item_timeout)
            except TimeoutError:
                if self._table.take(pending.cid) is not None:
                    self._complete(pending, False, self._calls.timed_out(pending))

    def _close_stream(self, pending: Pending) -> None:
        """Stop a stream nobody reads any more: the server closes the generator. One left
        before it ended counts as cancelled (one that ended counted in :meth:`_complete`)."""
        stream = pending.stream
        assert stream is not None
        self._table.take(pending.cid)
        if not stream.ended:
            self._calls.record_cancelled(pending)
            stream.ended, stream.end = True, (True, None)
        if stream.answered or self._link is None:
            return
        stream.answered = True  # one cancel is enough
        self._control(pending, protocol.CANCEL_TYPE)

    def _control(self, pending: Pending, kind: str, credit: int = 0) -> None:
        message = self._calls.control(pending, kind, credit)
        try:
            self._publish_control(self._link, message)
        except ConnectionLost as exc:
            if kind == protocol.CREDIT_TYPE:
                raise
            logger.info("cancel of %s() sent once reconnected: %s", pending.method, exc)
            self._calls.owe_cancel(message)

    def _publish_control(self, link: AsyncLink | None, message: ControlMessage) -> None:
        exchange, routing_key, body, props = message
        if link is None or link.closed:
            raise ConnectionLost("the connection is closed")
        if exchange and exchange not in self._declared:
            link.declare_fanout(exchange)
            self._declared.add(exchange)
        link.publish(routing_key, body, props, exchange=exchange)

    def _on_return(self, msg: Incoming, code: int, text: str) -> None:
        pending = self._table.take(msg.props.get("correlation_id"))
        ok, value = self._calls.returned(pending, msg.routing_key, code, text)
        if pending is not None:
            self._complete(pending, ok, value)

    def _on_nack(self, cid: str) -> None:
        pending = self._table.take(cid)
        if pending is not None:
            self._complete(pending, False, self._calls.nacked(pending))

    def _on_blocked(self, cids: list[str], reason: str) -> None:
        for cid in cids:
            pending = self._table.take(cid)
            if pending is not None:
                self._complete(pending, False, self._calls.blocked(pending, reason))

    def _on_lost(self, exc: ConnectionLost) -> None:
        unwritten = []
        if self._link is not None:
            for cid in self._link.unwritten:
                pending = self._table.take(cid)
                if pending is not None:
                    unwritten.append(pending)
        if not self._closed:
            logger.warning("proxy for %r lost its connection: %s", self.server_id, exc)
            self._spawn(self._reconnect())
        self._fail_all(ConnectionLost(f"connection lost while the call was pending: {exc}"))
        if unwritten:
            self._spawn(self._resend(unwritten))

    async def _resend(self, calls: list[Pending]) -> None:
        """Publish once more, on a new connection, the requests the lost one never wrote (its
        writes go out after the loop pass that made them, so a failed write is heard here)."""
        try:
            link = await self._live_link()
        except Exception as exc:
            link, error = None, exc
        for pending in calls:
            if pending.waiter is not None and pending.waiter.cancelled():
                continue  # its caller is gone
            if link is not None:
                try:
                    self._send(link, pending)
                    continue
                except Exception as exc:
                    error = exc
            self._complete(pending, False, error)

    async def _reconnect(self) -> None:
        """Reconnect in the background after a loss, so the next call finds a connection."""
        try:
            await self._live_link()
        except Exception as exc:
            logger.warning("proxy for %r cannot reconnect yet: %s", self.server_id, exc)

    def _fail_all(self, error: Exception) -> None:
        for pending in self._table.drain():
            self._complete(pending, False, error)

    def _complete(self, pending: Pending, ok: bool, value: Any) -> None:
        """End one attempt of a call. A stream or broadcast counts here; any other call counts
        in :meth:`_call`, once its retries are over."""
        stream = pending.stream
        waiter = pending.waiter
        if stream is not None:
            if not stream.ended:  # else its caller left it, and it counted as cancelled
                self._calls.record(pending, ok, value)
                stream.ended, stream.end = True, (ok, value)
            ok, value = True, None  # the iterator raises the error once it reaches it
        elif pending.kind == BROADCAST:
            if ok:
                pending.value = value
            ok, value = True, pending.value
            self._calls.record(pending, ok, value)
        if waiter is not None and not waiter.done():
            if ok:
                waiter.set_result(value)
            else:
                waiter.set_exception(value)
            if type(waiter) is _Waiter:
                link = self._link
                waiter.wake(link.call_after_read if link is not None else waiter.get_loop().call_soon)

    # -- batches ---------------------------------------------------------------------------------

    async def gather(
        self, calls: Iterable[Sequence[Any]], *, concurrency: int = 50,
        timeout: float | None = None,
    ) -> list[Any]:
        """Run ``(method, args[, kwargs])`` calls with at most ``concurrency`` in flight.

        Returns the results in order, with each failed call's exception in its place (as
        ``asyncio.gather(return_exceptions=True)`` does); ``timeout`` applies to each call. Left
        early (its task cancelled, an exception), it cancels the calls in flight on the server.
        """
        return [r async for r in self._stream(batch(calls), concurrency, timeout,
                                              raise_errors=False)]

    def map(
        self, method: str, iterable: Iterable[Any], *, concurrency: int = 50,
        timeout: float | None = None,
    ) -> AsyncIterator[Any]:
        """Yield ``await method(*args)`` for each ``args`` tuple (or single argument), in order.

        At most ``concurrency`` calls are in flight; the first failure is raised where its
        result would have been yielded, and the calls still in flight are cancelled on the
        server; so are they when the loop is left early, once the generator is closed (at once
        with ``contextlib.aclosing``).
        """
        return self._stream(mapped(method, iterable), concurrency, timeout, raise_errors=True)

    async def _stream(
        self, requests: Iterable[Request], concurrency: int, timeout: float | None, *,
        raise_errors: bool,
    ) -> AsyncIterator[Any]:
        check_concurrency(concurrency)
        options = FUTURE_CALL
        if timeout is not None:
            options = replace(options, timeout=check_timeout(timeout), timeout_set=True)
        window: deque[tuple[asyncio.Task[Any], Pending]] = deque()
        try:
            for method, args, kwargs in requests:
                if len(window) >= concurrency:
                    yield await _outcome(window.popleft()[0], raise_errors)
                pending = self._prepare(options, method, args, kwargs)
                window.append((asyncio.ensure_future(self._call(pending)), pending))
            while window:
                yield await _outcome(window.popleft()[0], raise_errors)
        finally:
            # Abandoned: forgotten and cancelled on the server now, not when each task gets to run.
            for task, pending in window:
                task.cancel()
                if self._table.take(pending.cid) is not None:
                    self._cancel_on_server(pending)


class _Waiter(asyncio.Future[Any]):
    """The future a call's task awaits, which holds back the task's wake-up until :meth:`wake`
    hands it on: to the link, which runs it at the end of the read that brought the reply.

    A plain future's wake-up waits for the loop's next pass; a sequential caller then pays a
    pass per call (a poll, the loop's bookkeeping) before it makes its next request.
    """

    _wake: tuple[Callable[[Any], object], Context | None] | None = None

    def add_done_callback(self, fn: Callable[[Any], object], *,
                          context: Context | None = None) -> None:
        if self._wake is None and not self.done():
            self._wake = (fn, context)  # the awaiting task's: handed on by wake()
        else:
            super().add_done_callback(fn, context=context)

    def remove_done_callback(self, fn: Callable[[Any], object]) -> int:
        removed = super().remove_done_callback(fn)
        if self._wake is not None and self._wake[0] == fn:
            self._wake = None
            removed += 1
        return removed

    def cancel(self, msg: Any | None = None) -> bool:
        if not super().cancel(msg=msg):
            return False
        self.wake(self.get_loop().call_soon)
        return True

    def wake(self, schedule: Callable[..., object]) -> None:
        """Once done: schedule the wake-up held back, as ``schedule(fn, self, context=...)``."""
        wake = self._wake
        if wake is not None:
            self._wake = None
            schedule(wake[0], self, context=wake[1])


class TrackedCall(AsyncIterator[Any]):
    """A call that is iterated for its progress reports and awaited for its result.

    The request goes out at the first ``async for`` step or ``await``; the iteration ends when
    the call does, and ``await`` then gives its result (or raises its error).
    """

    def __init__(self, call: Callable[[Pending], Coroutine[Any, Any, Any]],
                 pending: Pending) -> None:
        self._call = call
        self._pending = pending
        self._task: asyncio.Task[Any] | None = None
        self._reports: deque[Any] = deque()
        self._news: asyncio.Future[None] | None = None
        pending.on_progress = self._heard

    def _heard(self, report: Any) -> None:
        self._reports.append(report)
        if self._news is not None and not self._news.done():
            self._news.set_result(None)

    def _started(self) -> asyncio.Task[Any]:
        if self._task is None:
            self._task = asyncio.ensure_future(self._call(self._pending))
        return self._task

    def __await__(self) -> Generator[Any, None, Any]:
        return self._started().__await__()

    def __aiter__(self) -> TrackedCall:
        return self

    async def __anext__(self) -> Any:
        task = self._started()
        while not self._reports:
            if task.done():
                raise StopAsyncIteration
            self._news = asyncio.get_running_loop().create_future()
            await asyncio.wait({self._news, task}, return_when=asyncio.FIRST_COMPLETED)
        return self._reports.popleft()


class AsyncStream(AsyncIterator[Any]):
    """The items of a streaming call as they come: ``async for row in proxy.stream.export(t)``.

    The request goes out at the first ``__anext__``. The server sends at most one window of
    items ahead, so a slow consumer pauses the generator on the server. An exception the
    handler raised is raised where its items end. Leaving early (``break`` and ``aclose()``,
    ``async with``, cancelling the task, garbage collection) stops the generator on the server.
    """

    def __init__(self, proxy: AsyncProxy, pending: Pending) -> None:
        self._proxy = proxy
        self._pending = pending
        self._started = False
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> Any:
        if self._closed:
            raise StopAsyncIteration
        try:
            if not self._started:
                self._started = True
                self._loop = asyncio.get_running_loop()
                await self._proxy._start_stream(self._pending)
            return await self._proxy._next_item(self._pending)
        except StopAsyncIteration:
            self._closed = True
            raise
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop listening; the server closes the generator (its ``finally`` runs)."""
        if not self._closed:
            self._closed = True
            if self._started:
                self._proxy._close_stream(self._pending)

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        loop = self._loop
        if not self._closed and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.close)  # on the loop, not inside a collection

    def __repr__(self) -> str:
        return f"<AsyncStream {self._pending.method}() {'closed' if self._closed else 'open'}>"


async def _outcome(future: asyncio.Future[Any], raise_errors: bool) -> Any:
    try:
        return await future
    except Exception as exc:
        if raise_errors:
            raise
        return exc


__all__ = ["AsyncProxy", "AsyncStream", "TrackedCall"]
