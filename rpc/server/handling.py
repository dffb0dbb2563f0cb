"""One request's way through a server: screen, decode, resolve, run, encode, remember, reply.

:class:`Handler` holds no connection and starts no thread. The I/O thread calls :meth:`screen`
on each delivery; a worker thread calls :meth:`Handler.handle`, which answers a repeat from the
table of completed calls, or decodes the request, runs its handler and replies through the
:class:`~rpc.server.replies.Replier` (the one place that writes). A coroutine handler is handed to
the :class:`~rpc.server.loops.HandlerLoop` instead, and replied to from the loop once it ends.
The decisions (:meth:`Handler.prepare`, :meth:`Handler.finish`) are plain functions of the
request, unit-tested without a broker.

A stream request (protocol v1.1) for a generator handler runs its generator and sends each item
as its caller's credit allows (:mod:`rpc.server.streams`), then the reply that ends the stream. A
plain generator keeps its worker thread for the stream's whole life, paused while the credit is
used up; an async generator runs on the loop like a coroutine handler.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import logging
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any

from ..core import context, dedup, protocol, serialization, tracing
from ..core.context import CallInfo
from ..core.errors import BadRequest, ConnectionLost, SerializationError
from ..transport.link import Incoming
from .failures import LOGGER_NAME, UNDECODABLE, FailureLog, report
from .longcalls import Running
from .loops import HandlerLoop
from .options import ServerOptions
from .registry import Method, Registry
from .replies import Replier
from .status import InFlight, Stats
from .streams import (
    DEFAULT_PATIENCE,
    PATIENCE_INTERVALS,
    Stream,
    StreamAbandoned,
    StreamCancelled,
    StreamExpired,
    Streams,
)

if TYPE_CHECKING:
    from ..metrics import ServerMetrics

logger = logging.getLogger(LOGGER_NAME)

#: The method label of requests refused before their method was known (as rpc.metrics names it).
UNKNOWN_METHOD = "<unknown>"
#: Metric outcomes of the stats keys a finished call counts under.
METRIC_OUTCOME = {
    "calls": "ok", "errors": "error", "expected_errors": "expected_error",
    "bad_requests": "bad_request",
}
#: What :meth:`Handler.screen` says of a delivery no worker should see.
REJECTED, EXPIRED, CANCELLED = "rejected", "expired", "cancelled"
#: Seconds an async generator's stream runs at most without letting the loop's other tasks run.
LOOP_TURN = 0.002
#: Result types that are never awaitable: most results skip inspect.isawaitable's ABC check.
_PLAIN_RESULTS = frozenset({type(None), bool, int, float, str, bytes, list, dict, tuple})


class Call:
    """One request on its way through the server: what is known of it so far."""

    __slots__ = ("msg", "key", "tag", "deadline", "reply_type", "started", "method", "target",
                 "request", "info", "credit", "running")

    def __init__(
        self, msg: Incoming, key: tuple[str, int] | None, tag: int | None, accept: frozenset[str],
        deadline: float | None,
    ) -> None:
        self.msg = msg
        self.deadline = deadline
        #: What identifies a repeat of this request in the completed calls (None: not tracked).
        self.key = key
        #: The delivery tag still to acknowledge (None once acknowledged).
        self.tag = tag
        self.reply_type = protocol.reply_content_type(msg.props.get("content_type"), accept)
        self.started = time.perf_counter()
        self.method: str | None = None
        self.target: Method | None = None
        self.request: protocol.Request | None = None
        self.info: CallInfo | None = None
        #: A stream request's initial credit (None: a plain request).
        self.credit: int | None = None
        #: Its entry in the table of calls running here (None: one no cancel can name).
        self.running: Running | None = None


class Reply:
    """A finished call's encoded reply, and the stats key it counts under."""

    __slots__ = ("body", "content_type", "outcome")

    def __init__(self, body: bytes, content_type: str, outcome: str) -> None:
        self.body = body
        self.content_type = content_type
        self.outcome = outcome


class Handler:
    """Handles the requests of one running server; see the module docstring.

    Args:
        options: the options the server runs with.
        registry: the methods it dispatches to.
        completed: the table of completed calls that answers repeats.
        stats: its counters and handler durations.
        in_flight: the requests of this run not yet done with.
        failures: logs failed calls.
        replier: sends replies and acknowledges requests.
        loop: where coroutine handlers run.
        stopping: set once the server stops; a coroutine cancelled then is not answered.
        metrics: Prometheus metrics, when the server serves them.
        streams: the streams running here (None: a table of the handler's own).
        control_address: this instance's control address for streams (its broadcast queue).
    """

    def __init__(
        self, *, options: ServerOptions, registry: Registry, completed: dedup.CompletedCalls,
        stats: Stats, in_flight: InFlight, failures: FailureLog, replier: Replier, loop: HandlerLoop,
        stopping: threading.Event, metrics: ServerMetrics | None = None,
        streams: Streams | None = None, control_address: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.server_id = options.server_id
        self.accept = options.accept
        self.max_message_size = options.max_message_size
        self.send_tracebacks = options.send_tracebacks
        self.on_error = options.on_error
        self.async_concurrency = options.async_concurrency
        self.registry = registry
        self.completed = completed
        self.stats = stats
        self.counts = stats.counts
        self.in_flight = in_flight
        self.failures = failures
        self.replier = replier
        self.loop = loop
        self.stopping = stopping
        self.metrics = metrics
        self.streams = streams if streams is not None else Streams(options.server_id)
        self.control_address = control_address
        self.spans = tracing.ServerSpans(options.server_id)

    # -- on the I/O thread -------------------------------------------------------------------------

    def screen(self, msg: Incoming) -> str | None:
        """What to do with a delivery before any worker sees it: None to hand it to a worker,
        :data:`REJECTED` (a reply published to the request queue: reject it), :data:`EXPIRED`
        (its deadline has passed) or :data:`CANCELLED` (a stream its caller cancelled before
        it came): acknowledge those unanswered. Counts what it turns away."""
        props = msg.props
        if props.get("type") == protocol.REPLY_TYPE:
            logger.warning("refused a reply published to the request queue %r", self.server_id)
            self.counts["bad_requests"] += 1
            self.observe(UNKNOWN_METHOD, REJECTED)
            return REJECTED
        deadline = protocol.deadline_of(props.get("headers"))
        if deadline is not None and deadline < time.time():
            self.counts["expired"] += 1
            self.observe(UNKNOWN_METHOD, EXPIRED)
            return EXPIRED
        if self.streams.cancels and self.skip(msg):
            self.counts["cancelled"] += 1
            if self.metrics is not None:
                self.metrics.cancelled()
            return CANCELLED
        return None

    def admit(self) -> None:
        """A delivery goes to a worker: it is in flight until :meth:`settle`."""
        self.in_flight.add()
        if self.metrics is not None:
            self.metrics.in_flight(1)

    # -- on a worker thread ------------------------------------------------------------------------

    def settle(self, outcome: str) -> None:
        """A request admitted is done with; count it under ``outcome``."""
        self.in_flight.settle(outcome)
        if self.metrics is not None:
            self.metrics.in_flight(-1)
            if outcome == CANCELLED:
                self.metrics.cancelled()

    def handle(self, msg: Incoming) -> str | None:
        """Run one request (or answer a repeat of one) and reply; returns the stats key, or
        None when a coroutine handler goes on running on the loop (it settles itself).

        Raises:
            ConnectionLost: the reply could not be sent; the broker redelivers the request.
        """
        tag = msg.delivery_tag
        assert tag is not None, "a request is a delivery, which always has a tag"
        props = msg.props
        headers = props.get("headers")
        deadline = protocol.deadline_of(headers)
        if deadline is not None:
            wait = deadline - time.time()
            if wait < 0:  # it waited here past its deadline
                msg.link.ack(tag)
                self.observe(UNKNOWN_METHOD, EXPIRED)
                return EXPIRED
        metrics = self.metrics
        if msg.redelivered:
            self.counts["redelivered"] += 1
            if metrics is not None:
                metrics.redelivered()
        if headers and protocol.STREAM_HEADER in headers:
            return self.stream(msg, tag, deadline)
        if self.streams.cancels and self.skip(msg):  # cancelled while it waited for a worker
            msg.link.ack(tag)
            return CANCELLED
        key = self.repeat_key(msg)
        if key is not None:
            done = self.completed.begin(key, None if deadline is None else wait)
            if done is not None:
                if metrics is not None:
                    metrics.duplicate()
                logger.info("answered a repeat of request %s from the completed calls",
                            props.get("message_id"))
                self.replier.send(msg, tag, done.body, done.content_type)
                return "duplicates"
        call = Call(msg, key, tag, self.accept, deadline)
        running = self.track(call)
        try:
            # Cancelled just now: a cancel stays in streams.cancels for a while, so while that
            # is empty (as nearly always) the flag needs no look.
            if running is not None and self.streams.cancels and running.cancelled.is_set():
                return self.dropped(call)
            try:
                target = self.prepare(call)
            except BaseException as exc:  # a bad request: its error is the reply
                return self.respond(call, self.finish(call, None, exc))
            if target.at_most_once:
                msg.link.ack(tag)
                call.tag = None
            if target.is_async and self.async_concurrency:
                self.loop.submit(self.run_async(call), lambda done: self.after_async(call, done))
                running = None  # after_async() is done with it
                return None
            try:
                result = self.execute(call)
            except BaseException as exc:  # a handler's SystemExit must not end a worker either
                if running is not None and running.cancelled.is_set():
                    return self.dropped(call)
                return self.respond(call, self.finish(call, None, exc))
            if running is not None and running.cancelled.is_set():  # its caller cancelled it
                return self.dropped(call)
            return self.respond(call, self.finish(call, result, None))
        except BaseException:
            if key is not None:
                self.completed.finish(key, None)
            raise
        finally:
            if running is not None and not running.untracked:
                self.streams.untrack(running)

    def track(self, call: Call) -> Running | None:
        """Enter a call in the table of calls running here, where its caller's cancel finds it
        and the keep-alive thread sends its keep-alives (when it asked for them); None for a
        request without a correlation id, which no cancel can name."""
        props = call.msg.props
        correlation_id = props.get("correlation_id")
        if not isinstance(correlation_id, str) or not correlation_id:
            return None
        running = Running(correlation_id, call.msg,
                          protocol.keepalive_interval(props.get("headers")), call.reply_type,
                          self.replier, self.control_address)
        call.running = running
        self.streams.track(running)
        return running

    def dropped(self, call: Call) -> str:
        """A call its caller cancelled: acknowledge its request and send no reply (the caller
        is gone); returns the stats key.

        Raises:
            ConnectionLost: the acknowledgement could not be sent.
        """
        if call.running is not None:
            self.streams.untrack(call.running)
        if call.key is not None:
            self.completed.finish(call.key, None)
            call.key = None
        logger.info("%s: call cancelled by its caller (correlation_id=%s, %.2f ms)",
                    call.method or UNDECODABLE, call.msg.props.get("correlation_id"),
                    (time.perf_counter() - call.started) * 1000)
        if call.tag is not None:
            call.msg.link.ack(call.tag)
            call.tag = None
        return CANCELLED

    def repeat_key(self, msg: Incoming) -> tuple[str, int] | None:
        """What identifies a repeat of this request: its message id and body (None: repeats of
        it are not recognised)."""
        if not self.completed.enabled:
            return None
        message_id = msg.props.get("message_id")
        if not isinstance(message_id, str) or not message_id:
            return None
        return message_id, hash(msg.body)

    def prepare(self, call: Call) -> Method:
        """Decode and check a request, and resolve its method; returns the method.

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
        headers = msg.props.get("headers")
        if target.is_stream or (headers and protocol.STREAM_HEADER in headers):
            call.credit = self.check_stream(msg.props, request.method, target)
        target.check_arguments(request.args, request.kwargs)
        call.request = request
        if self.metrics is not None:
            self.observe_queued(msg.props)
        return target

    @staticmethod
    def check_stream(props: dict[str, Any], method: str, target: Method) -> int | None:
        """A stream request's initial credit (None: a plain request), once it is known that the
        request and its method agree on streaming.

        Raises:
            BadRequest: a plain request for a generator, a stream request for anything else, a
                malformed ``rpc-stream`` header, or a stream nobody can hear or control (no
                reply address or no correlation id).
        """
        credit = protocol.stream_credit(props.get("headers"))
        if credit is None:
            if target.is_stream:
                raise BadRequest(f"{method}() streams its results: call it through "
                                 f"proxy.stream.{method}(...)")
            return None
        if not target.is_stream:
            raise BadRequest(f"{method}() does not stream (it is not a generator): call it "
                             f"as proxy.{method}(...)")
        reply_to = props.get("reply_to")
        if not isinstance(reply_to, str) or not protocol.is_reply_address(reply_to):
            raise BadRequest("a stream request needs a reply address (reply_to)")
        correlation_id = props.get("correlation_id")
        if not isinstance(correlation_id, str) or not correlation_id:
            raise BadRequest("a stream request needs a correlation_id")
        return credit

    def call_info(self, msg: Incoming, method: str, deadline: float | None,
                  running: Running | None = None) -> CallInfo:
        """What ``rpc.current_call()`` tells the handler of this request; with ``running``, its
        cancelled flag, and its progress when the request asked for keep-alives."""
        props = msg.props
        headers = props.get("headers")
        ctx, stack = context.incoming(headers)
        return CallInfo(
            server_id=self.server_id, method=method,
            correlation_id=props.get("correlation_id"), message_id=props.get("message_id"),
            deadline=deadline, redelivered=msg.redelivered,
            user_id=props.get("user_id"), context=ctx, call_stack=stack, headers=headers or {},
            cancelled=running.cancelled if running is not None else context.CancelledFlag(),
            reporter=running.report if running is not None and running.interval else None,
        )

    def info_of(self, call: Call) -> CallInfo:
        """A prepared call's :class:`CallInfo`, made when first asked for (a plain call's
        handler seldom asks: see ``context.enter``)."""
        info = call.info
        if info is None:
            assert call.method is not None
            info = call.info = self.call_info(call.msg, call.method, call.deadline, call.running)
        return info

    def execute(self, call: Call) -> Any:
        """Run a prepared call's handler here, with ``current_call()`` set; a coroutine it
        returns runs on the loop while this thread waits."""
        target, request, method = call.target, call.request, call.method
        assert target is not None and request is not None and method is not None
        token = context.enter(functools.partial(self.info_of, call))
        try:
            span = self.spans.span(call.msg.props.get("headers"), method)
            if span is tracing.NO_SPAN:  # entering a no-op costs two Python calls
                result = target.func(*request.args, **request.kwargs)
                if type(result) not in _PLAIN_RESULTS:
                    result = self.awaited(call, result)
            else:
                with span:
                    result = self.awaited(call, target.func(*request.args, **request.kwargs))
        finally:
            context.leave(token)
        return result

    def awaited(self, call: Call, result: Any) -> Any:
        """A sync handler's result; when it is awaitable, what it gives once run on the loop
        (this thread waits)."""
        if inspect.isawaitable(result):
            return self.loop.run(_awaiting(result, self.info_of(call), call.running))
        return result

    def finish(self, call: Call, result: Any, exc: BaseException | None) -> Reply:
        """Log, count, encode and remember a call's outcome; returns the reply to send."""
        elapsed = time.perf_counter() - call.started
        method, target = call.method, call.target
        prepared = call.request is not None
        if exc is None:
            ok = True
            body = protocol.result_body(result)
            outcome = "calls"
        else:
            ok = False
            info = self.info_of(call) if prepared else None
            body = protocol.error_reply(exc, call.reply_type,
                                        include_traceback=self.send_tracebacks)
            outcome = self.failures.record(exc, call.msg.props, method, target, info, elapsed)
            if info is not None and self.on_error is not None:
                report(self.on_error, exc, info)
        if call.credit is None:  # a stream's life is not a handler duration
            self.stats.latencies.append(elapsed)
        if self.metrics is not None:
            self.observe(method if target is not None and method else UNKNOWN_METHOD,
                         METRIC_OUTCOME[outcome], elapsed if prepared else None)
        payload, reply_type = protocol.encode_reply(body, call.reply_type, ok=ok,
                                                    include_traceback=self.send_tracebacks)
        if ok and logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s ok in %.2f ms", method, elapsed * 1000)
        if not ok and not call.msg.props.get("reply_to"):
            logger.warning("cast %s failed: %s", method or UNDECODABLE, body["error"]["message"])
        if call.key is not None:
            self.completed.finish(call.key, dedup.Completed(payload, reply_type, time.monotonic()))
        return Reply(payload, reply_type, outcome)

    def respond(self, call: Call, reply: Reply) -> str:
        """Send a finished call's reply and acknowledge its request; returns its stats key."""
        if call.running is not None:  # its last progress, and then no keep-alive, before it
            self.streams.untrack(call.running)
        self.replier.send(call.msg, call.tag, reply.body, reply.content_type)
        return reply.outcome

    # -- coroutine handlers, on the loop -----------------------------------------------------------

    async def run_async(self, call: Call) -> Any:
        """A prepared call of an ``async def`` handler, once a slot of the loop is free."""
        target, request, info = call.target, call.request, self.info_of(call)
        assert target is not None and request is not None
        async with self.loop.slots:
            with _awaited_as(info, call.running), self.spans.span(info.headers, info.method):
                return await target.func(*request.args, **request.kwargs)

    def after_async(self, call: Call, done: concurrent.futures.Future[Any]) -> None:
        """Reply to a coroutine handler's call once it has ended (on the loop's thread)."""
        running = call.running
        if running is not None:
            self.streams.untrack(running)
        if running is not None and running.cancelled.is_set():  # its caller cancelled it
            outcome = "requeued"
            try:
                outcome = self.dropped(call)
            except ConnectionLost:
                pass
            except Exception:
                logger.exception("unexpected error acknowledging a cancelled call")
            finally:
                self.settle(outcome)
            return
        if done.cancelled() and self.stopping.is_set():
            # Cut off by a stop whose grace ran out: the broker redelivers it to another server.
            if call.key is not None:
                self.completed.finish(call.key, None)
            self.settle("requeued")
            return
        try:
            error = done.exception()
        except concurrent.futures.CancelledError as cancelled:
            error = cancelled
        try:
            reply = self.finish(call, None if error else done.result(), error)
        except Exception:
            logger.exception("unexpected error replying to a request")
            self.settle("requeued")
            return
        if self.replier.would_wait(call.msg):
            # A probe waits a moment for the broker's verdict: not on the application's loop.
            threading.Thread(target=self.send_settled, args=(call, reply), daemon=True,
                             name=f"rpc-reply-{self.server_id}").start()
        else:
            self.send_settled(call, reply)

    def send_settled(self, call: Call, reply: Reply) -> None:
        """Send a coroutine handler's reply, and settle its request whatever happens."""
        outcome = "requeued"
        try:
            outcome = self.respond(call, reply)
        except ConnectionLost as exc:
            logger.warning("reply to %s not sent, the request will be redelivered: %s",
                           call.msg.props.get("correlation_id"), exc)
        except Exception:
            logger.exception("unexpected error replying to a request")
        finally:
            self.settle(outcome)

    # -- streams -----------------------------------------------------------------------------------

    def stream(self, msg: Incoming, tag: int, deadline: float | None) -> str | None:
        """Run a stream request: its items as the credit allows, then the reply that ends it;
        returns the stats key, or None when an async generator goes on running on the loop.

        A plain generator holds this worker thread for the stream's whole life, paused while
        the credit is used up; an async generator runs on the loop, within
        ``async_concurrency``. Streams are never answered from the completed calls: a repeat
        runs again.

        Raises:
            ConnectionLost: the connection failed; the broker redelivers the request.
        """
        call = Call(msg, None, tag, self.accept, deadline)
        if self.streams.cancels and self.skip(msg):  # cancelled while it waited for a worker
            msg.link.ack(tag)
            return CANCELLED
        running = self.track(call)  # for its keep-alives, while it runs or waits for credit
        try:
            return self.start_stream(call, running)
        except BaseException:
            if running is not None:
                self.streams.untrack(running)
            raise

    def start_stream(self, call: Call, running: Running | None) -> str | None:
        """:meth:`stream`, once the request is entered in the table of calls running here."""
        msg, tag, deadline = call.msg, call.tag, call.deadline
        assert tag is not None
        props = msg.props
        correlation_id = props.get("correlation_id")
        try:
            target = self.prepare(call)
        except BaseException as exc:  # a bad request: its error is the reply
            return self.respond(call, self.finish(call, None, exc))
        assert call.credit is not None and isinstance(correlation_id, str)
        if self.replier.gone(props.get("reply_to")):
            if running is not None:
                self.streams.untrack(running)
            msg.link.ack(tag)
            return "gone_callers"
        interval = running.interval if running is not None else None
        patience = PATIENCE_INTERVALS * interval if interval else DEFAULT_PATIENCE
        stream = self.streams.open(correlation_id, call.credit, deadline, patience)
        if stream is None:  # cancelled since the look above
            if running is not None:
                self.streams.untrack(running)
            msg.link.ack(tag)
            return "cancelled"
        self.counts["streams"] += 1
        if msg.redelivered or target.at_most_once:
            # Redelivered, its items may be what made the broker close the connection (a caller
            # that is gone): acknowledge first, so that it cannot come back for ever.
            msg.link.ack(tag)
            call.tag = None
        if target.is_async:
            # What the stream ended with, kept apart from its task, which a cancel that comes
            # as it ends may still mark cancelled.
            ending: list[str | Reply] = []
            coro = self.run_async_stream(call, stream, ending, slots=self.async_concurrency > 0)
            if self.async_concurrency:
                self.loop.submit(coro, lambda done: self.after_async_stream(call, done, ending))
                return None
            ended = self.loop.run(coro)
            return ended if isinstance(ended, str) else self.respond(call, ended)
        return self.run_stream(call, stream)

    def skip(self, msg: Incoming) -> bool:
        """Whether a request is one its caller cancelled before it ran."""
        correlation_id = msg.props.get("correlation_id")
        if isinstance(correlation_id, str) and self.streams.cancelled(correlation_id):
            logger.info("skipped a request its caller cancelled (correlation_id=%s)",
                        correlation_id)
            return True
        return False

    def run_stream(self, call: Call, stream: Stream) -> str:
        """Run a plain generator's stream on this worker thread; returns the stats key.

        A cancel reaches the generator when it next yields (or at once while it is paused).

        Raises:
            ConnectionLost: the connection failed; the broker redelivers the request.
        """
        target, request, info = call.target, call.request, self.info_of(call)
        assert target is not None and request is not None
        link = call.msg.link
        failure: BaseException | None = None
        stop: StreamCancelled | StreamExpired | None = None
        token = context.enter(info)
        try:
            with self.spans.span(info.headers, info.method):
                items: Generator[Any, Any, Any] | None = None
                try:
                    items = target.func(*request.args, **request.kwargs)
                    assert items is not None
                    while True:
                        if stream.cancelled:
                            raise StreamCancelled()
                        try:
                            item = next(items)
                        except StopIteration:
                            break
                        stream.take(link)
                        self.send_item(call, stream, item)
                except (StreamCancelled, StreamExpired) as exc:
                    stop = exc
                except ConnectionLost as exc:
                    if link.closed:
                        raise
                    failure = exc  # the handler's own (a call it made), not this stream's
                except BaseException as exc:  # raised mid-stream: the error ends the stream
                    failure = exc
                finally:
                    if items is not None:
                        close_items(items)
        finally:
            context.leave(token)
            self.streams.close(stream)
            if call.running is not None:
                self.streams.untrack(call.running)
            self.counts["items"] += stream.sent
        if stop is not None:
            return self.stopped(call, stream, stop)
        return self.respond(call, self.finish(call, None, failure))

    async def run_async_stream(self, call: Call, stream: Stream, ending: list[str | Reply], *,
                               slots: bool) -> str | Reply:
        """Run an async generator's stream as a task on the loop; returns (and appends to
        ``ending``) the stats key of a stream that stopped early, or the reply that ends it.

        A cancel cancels the task, so the generator stops at the ``await`` it is at.

        Raises:
            ConnectionLost: the connection failed; the broker redelivers the request.
        """
        task = asyncio.current_task()
        assert task is not None
        ended: str | Reply
        try:
            stream.attach(task)
            if slots:
                async with self.loop.slots:
                    failure = await self.drive_async(call, stream)
            else:
                failure = await self.drive_async(call, stream)
        except (StreamCancelled, StreamExpired) as stop:
            ended = self.stopped(call, stream, stop)
        except asyncio.CancelledError:
            if not stream.cancelled:
                raise  # the server stops
            task.uncancel()
            ended = self.stopped(call, stream, StreamCancelled())
        else:
            ended = self.finish(call, None, failure)
        finally:
            self.streams.close(stream)
            if call.running is not None:
                self.streams.untrack(call.running)
            self.counts["items"] += stream.sent
        ending.append(ended)
        return ended

    async def drive_async(self, call: Call, stream: Stream) -> BaseException | None:
        """Send an async generator's items as the credit allows; returns what it raised.

        Raises:
            StreamCancelled, StreamExpired, asyncio.CancelledError: the stream stopped early.
            ConnectionLost: the connection failed.
        """
        target, request, info = call.target, call.request, self.info_of(call)
        assert target is not None and request is not None
        link = call.msg.link
        token = context.enter(info)
        try:
            with self.spans.span(info.headers, info.method):
                items: AsyncGenerator[Any, Any] | None = None
                try:
                    items = target.func(*request.args, **request.kwargs)
                    assert items is not None
                    turn = time.monotonic() + LOOP_TURN
                    while True:
                        if stream.cancelled:
                            raise StreamCancelled()
                        try:
                            item = await items.__anext__()
                        except StopAsyncIteration:
                            return None
                        await stream.take_async(link)
                        self.send_item(call, stream, item)
                        if time.monotonic() >= turn:  # a generator that never awaits
                            await asyncio.sleep(0)  # lets the loop's other tasks run
                            turn = time.monotonic() + LOOP_TURN
                except (StreamCancelled, StreamExpired, asyncio.CancelledError):
                    raise
                except ConnectionLost as exc:
                    if link.closed:
                        raise
                    return exc  # the handler's own (a call it made), not this stream's
                except BaseException as exc:  # raised mid-stream: the error ends the stream
                    return exc
                finally:
                    if items is not None:
                        await aclose_items(items)
        finally:
            context.leave(token)

    def after_async_stream(self, call: Call, done: concurrent.futures.Future[Any],
                           ending: list[str | Reply]) -> None:
        """Reply to an async generator's stream once it has ended (on the loop's thread)."""
        if call.running is not None:
            self.streams.untrack(call.running)
        ended: str | Reply
        if ending:
            ended = ending[0]
        elif done.cancelled() and self.stopping.is_set():
            # Cut off by a stop whose grace ran out: the broker redelivers it to another server.
            self.settle("requeued")
            return
        else:
            try:
                error = done.exception()
            except concurrent.futures.CancelledError as cancelled:
                error = cancelled
            if isinstance(error, ConnectionLost):
                logger.warning("stream %s stopped, the request will be redelivered: %s",
                               call.msg.props.get("correlation_id"), error)
                self.settle("requeued")
                return
            try:
                ended = self.finish(call, None, error or SystemError("the stream ended unseen"))
            except Exception:
                logger.exception("unexpected error replying to a request")
                self.settle("requeued")
                return
        if isinstance(ended, str):
            self.settle(ended)
        elif self.replier.would_wait(call.msg):
            # A probe waits a moment for the broker's verdict: not on the application's loop.
            threading.Thread(target=self.send_settled, args=(call, ended), daemon=True,
                             name=f"rpc-reply-{self.server_id}").start()
        else:
            self.send_settled(call, ended)

    def send_item(self, call: Call, stream: Stream, value: Any) -> None:
        """Encode and publish one item; the first carries this instance's control address.

        Raises:
            SerializationError: the item cannot be encoded in the call's content type.
            ConnectionLost: the connection failed.
        """
        try:
            payload = serialization.encode(protocol.item_body(value), call.reply_type)
        except SerializationError as exc:
            raise SerializationError(
                f"cannot encode item {stream.sent + 1} of the stream: {exc}") from None
        control = None if stream.sent else self.control_address()
        self.replier.send_item(call.msg, payload, call.reply_type, control)
        stream.sent += 1

    def stopped(self, call: Call, stream: Stream, stop: StreamCancelled | StreamExpired) -> str:
        """A stream its caller cancelled, or whose deadline passed: its generator is closed;
        acknowledge its request and send nothing more. Returns the stats key.

        Raises:
            ConnectionLost: the acknowledgement could not be sent.
        """
        elapsed = time.perf_counter() - call.started
        if isinstance(stop, StreamCancelled):
            outcome = "cancelled"
            logger.info("%s: stream cancelled by its caller after %d items (correlation_id=%s, "
                        "%.2f ms)", call.method, stream.sent, stream.correlation_id,
                        elapsed * 1000)
        elif isinstance(stop, StreamAbandoned):
            outcome = "gone_callers"
            logger.info("%s: stream abandoned after %d items: its caller granted no credit for "
                        "%.0f s (correlation_id=%s)", call.method, stream.sent, stream.patience,
                        stream.correlation_id)
        else:
            outcome = "expired"
            logger.info("%s: stream abandoned at its deadline after %d items "
                        "(correlation_id=%s, %.2f ms)", call.method, stream.sent,
                        stream.correlation_id, elapsed * 1000)
            self.observe(call.method or UNKNOWN_METHOD, EXPIRED, elapsed)
        if call.tag is not None:
            call.msg.link.ack(call.tag)
            call.tag = None
        return outcome

    # -- metrics -----------------------------------------------------------------------------------

    def observe(self, method: str, outcome: str, duration: float | None = None) -> None:
        if self.metrics is not None:
            self.metrics.call(method, outcome, duration)

    def observe_queued(self, props: dict[str, Any]) -> None:
        """Time from publish to start: the deadline less the timeout the caller gave it."""
        assert self.metrics is not None
        deadline = protocol.deadline_of(props.get("headers"))
        expiration = props.get("expiration")
        if deadline is not None and isinstance(expiration, str) and expiration.isdigit():
            self.metrics.queued(max(time.time() - (deadline - int(expiration) / 1000), 0.0))


def close_items(items: Generator[Any, Any, Any]) -> None:
    """Close a stream's generator (its ``finally`` runs); what that raises is logged."""
    try:
        items.close()
    except Exception:
        logger.exception("closing a stream's generator raised")


async def aclose_items(items: AsyncGenerator[Any, Any]) -> None:
    """Close a stream's async generator (its ``finally`` runs); what that raises is logged."""
    try:
        await items.aclose()
    except Exception:
        logger.exception("closing a stream's generator raised")


async def _awaiting(awaitable: Awaitable[Any], info: CallInfo, running: Running | None) -> Any:
    """Await what a plain function returned on the loop, as the loop's own coroutine calls run."""
    with _awaited_as(info, running):
        return await awaitable


@contextlib.contextmanager
def _awaited_as(info: CallInfo, running: Running | None) -> Iterator[None]:
    """In the task that awaits a handler: ``current_call()`` is ``info``, and the caller's
    cancel (with ``running``) cancels the task."""
    if running is not None:
        task = asyncio.current_task()
        assert task is not None
        running.attach(task)
    token = context.enter(info)
    try:
        yield
    finally:
        context.leave(token)
        if running is not None:
            running.detach()
