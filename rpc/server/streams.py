"""Streams (protocol v1.1): a generator handler's items under its caller's credit, and the control
messages that grant more credit or cancel a stream (no I/O of its own).

A :class:`Stream` is one running stream: the credit its caller has granted and not yet used, and
whether the caller cancelled it. The thread that runs the generator takes one unit of credit
before each item it sends (:meth:`Stream.take`, or :meth:`Stream.take_async` on the event loop)
and waits while there is none, up to the call's deadline; the I/O thread adds credit and cancels
through :class:`Streams`, the table of the streams running here, which also remembers for a while
the cancels of calls not (yet) running here, so that their requests are skipped when they come.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from typing import Any

from ..core import protocol
from ..core.errors import BadRequest, ConnectionLost
from ..core.ratelimit import RepeatLimiter
from ..transport.link import Incoming, Link
from .failures import LOGGER_NAME
from .longcalls import Running

logger = logging.getLogger(LOGGER_NAME)

#: Seconds a cancel for a call not running here is remembered, to skip its request later.
CANCEL_TTL = 300.0
#: Cancels remembered at most; the oldest are forgotten first.
MAX_CANCELS = 10_000
#: Longest single wait for credit, in seconds: a paused stream looks at its connection (closed
#: by a stop or a loss) at least this often.
WAIT_SLICE = 1.0
#: Seconds a stream whose request asked for no keep-alives waits for credit before it is
#: abandoned (one that asked waits ten of its intervals).
DEFAULT_PATIENCE = 60.0
#: Keep-alive intervals a stream waits for credit before it is abandoned.
PATIENCE_INTERVALS = 10


class StreamCancelled(Exception):
    """The caller cancelled the stream: close the generator, acknowledge, send nothing more."""


class StreamExpired(Exception):
    """The stream's deadline passed: close the generator, acknowledge, send nothing more."""


class StreamAbandoned(StreamExpired):
    """The stream waited for credit longer than its patience: its caller is presumably gone."""


class Stream:
    """One running stream's credit and state, shared by what runs it and the I/O thread.

    Args:
        correlation_id: the call's correlation id, which control messages name.
        credit: the initial credit (the request's ``rpc-stream`` header).
        deadline: the call's deadline (epoch seconds), or None.
        patience: seconds the stream may wait for credit at one time before it is abandoned.
    """

    __slots__ = ("correlation_id", "deadline", "patience", "cancelled", "sent", "_credit",
                 "_cond", "_loop", "_task", "_event", "_paused_since")

    def __init__(self, correlation_id: str, credit: int, deadline: float | None,
                 patience: float = DEFAULT_PATIENCE) -> None:
        self.correlation_id = correlation_id
        self.deadline = deadline
        self.patience = patience
        self._paused_since: float | None = None
        #: Set once the caller has cancelled.
        self.cancelled = False
        #: Items sent so far.
        self.sent = 0
        self._credit = credit
        self._cond = threading.Condition(threading.Lock())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._event: asyncio.Event | None = None

    @property
    def credit(self) -> int:
        """Items the stream may still send before it hears from its caller again."""
        with self._cond:
            return self._credit

    # -- from the I/O thread -----------------------------------------------------------------------

    def grant(self, credit: int) -> None:
        """The caller granted ``credit`` more items."""
        with self._cond:
            self._credit += credit
            self._cond.notify_all()
        self._wake_loop(cancel=False)

    def cancel(self) -> None:
        """The caller stopped listening: wake the stream, and cancel its task on the loop (so an
        async generator stops at the ``await`` it is at)."""
        with self._cond:
            if self.cancelled:
                return  # the task is cancelled once only
            self.cancelled = True
            self._cond.notify_all()
        self._wake_loop(cancel=True)

    def wake(self) -> None:
        """Make a paused stream look at its connection now (the server stops)."""
        with self._cond:
            self._cond.notify_all()
        self._wake_loop(cancel=False)

    def _wake_loop(self, *, cancel: bool) -> None:
        with self._cond:
            loop, task, event = self._loop, self._task, self._event
        if loop is None:
            return
        try:
            if cancel and task is not None:
                loop.call_soon_threadsafe(task.cancel)
            elif event is not None:
                loop.call_soon_threadsafe(event.set)
        except RuntimeError:  # the loop is closed: nothing runs there any more
            pass

    # -- from what runs the generator --------------------------------------------------------------

    def take(self, link: Link) -> None:
        """Wait for one unit of credit and use it (on the worker thread).

        Raises:
            StreamCancelled: the caller cancelled.
            StreamExpired: the deadline passed first (StreamAbandoned: the caller granted no
                credit for longer than the stream's patience).
            ConnectionLost: the connection closed while waiting.
        """
        with self._cond:
            while True:
                wait = self._check(link)
                if wait is None:
                    return
                self._cond.wait(wait)

    def attach(self, task: asyncio.Task[Any]) -> None:
        """The stream runs as ``task`` on the running loop: grants and cancels reach it there.

        Raises:
            StreamCancelled: the caller cancelled already.
        """
        with self._cond:
            self._loop = task.get_loop()
            self._task = task
            self._event = asyncio.Event()
            if self.cancelled:
                raise StreamCancelled()

    async def take_async(self, link: Link) -> None:
        """Wait for one unit of credit and use it (in the task :meth:`attach` named).

        Raises:
            StreamCancelled, StreamExpired, ConnectionLost: as :meth:`take`.
        """
        event = self._event
        assert event is not None, "attach() first"
        while True:
            with self._cond:
                wait = self._check(link)
                if wait is None:
                    return
                event.clear()  # a grant from now on sets it again
            try:
                await asyncio.wait_for(event.wait(), wait)
            except TimeoutError:
                pass

    def _check(self, link: Link) -> float | None:
        """With the lock held: use one unit of credit (None), or how long to wait for one."""
        if self.cancelled:
            raise StreamCancelled()
        wait = WAIT_SLICE
        if self.deadline is not None:
            left = self.deadline - time.time()
            if left <= 0:
                raise StreamExpired()
            wait = min(left, WAIT_SLICE)
        if self._credit > 0:
            self._credit -= 1
            self._paused_since = None
            return None
        if link.closed:
            raise ConnectionLost("the connection closed while the stream waited for credit")
        now = time.monotonic()
        if self._paused_since is None:
            self._paused_since = now
        left = self._paused_since + self.patience - now
        if left <= 0:
            raise StreamAbandoned()
        return min(wait, left)


class Streams:
    """The streams running on one server, and the cancels of calls not running here.

    Args:
        server_id: the server's id, for the log.
        ttl: seconds a cancel for a call not running here is remembered.
        size: cancels remembered at most.
        limiter: rate-limits the warnings about malformed control messages.
    """

    def __init__(self, server_id: str, *, ttl: float = CANCEL_TTL, size: int = MAX_CANCELS,
                 limiter: RepeatLimiter | None = None) -> None:
        self.server_id = server_id
        self.ttl = ttl
        self.size = size
        self.limiter = limiter if limiter is not None else RepeatLimiter()
        self._lock = threading.Lock()
        self._live: dict[str, Stream] = {}
        # the calls running here that a cancel can reach, by correlation id
        self._calls: dict[str, Running] = {}
        #: Correlation id -> when its cancel is forgotten (time.monotonic()), oldest first. While
        #: it is empty no request is one to skip, which a caller may test before :meth:`cancelled`.
        self.cancels: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            return len(self._live)

    def open(self, correlation_id: str, credit: int, deadline: float | None,
             patience: float = DEFAULT_PATIENCE) -> Stream | None:
        """A new running stream; None when its caller cancelled it already."""
        with self._lock:
            if self._cancelled(correlation_id):
                return None
            stream = self._live[correlation_id] = Stream(correlation_id, credit, deadline,
                                                         patience)
            return stream

    def track(self, running: Running) -> bool:
        """A call starts running here; False (and its flag set) when its caller cancelled it
        already."""
        with self._lock:
            if self.cancels and self._cancelled(running.correlation_id):
                running.cancelled.set()
                return False
            self._calls[running.correlation_id] = running
            return True

    def untrack(self, running: Running) -> None:
        """A call is done with: no keep-alive or cancel reaches it from now on."""
        if running.untracked:
            return
        running.untracked = True
        running.finish()
        with self._lock:
            if self._calls.get(running.correlation_id) is running:
                del self._calls[running.correlation_id]

    def running(self) -> list[Running]:
        """The calls running here now."""
        with self._lock:
            return list(self._calls.values())

    def close(self, stream: Stream) -> None:
        """A stream is done with: grants for it are ignored from now on."""
        with self._lock:
            if self._live.get(stream.correlation_id) is stream:
                del self._live[stream.correlation_id]

    def cancelled(self, correlation_id: str) -> bool:
        """Whether the call's caller cancelled it (a request to skip)."""
        if not self.cancels:  # the usual case, without the lock
            return False
        with self._lock:
            return self._cancelled(correlation_id)

    def wake_all(self) -> None:
        """Make every paused stream look at its connection now."""
        with self._lock:
            live = list(self._live.values())
        for stream in live:
            stream.wake()

    # -- on the I/O thread -------------------------------------------------------------------------

    def control(self, msg: Incoming) -> None:
        """A grant of credit or a cancel, read from the broadcast queue: acknowledge it, then
        apply it to the stream it names. A malformed one is logged (rate-limited) and dropped.

        Raises:
            ConnectionLost: the acknowledgement could not be sent.
        """
        if msg.delivery_tag is not None:
            msg.link.ack(msg.delivery_tag)
        props = msg.props
        kind = props.get("type")
        correlation_id = props.get("correlation_id")
        try:
            credit = protocol.parse_control(kind, msg.body)
            if not isinstance(correlation_id, str) or not correlation_id:
                raise BadRequest("control message without a correlation_id")
        except BadRequest as exc:
            self.refused(kind, exc)
            return
        if kind == protocol.CANCEL_TYPE:
            self.cancel(correlation_id)
        else:
            self.grant(correlation_id, credit)

    def grant(self, correlation_id: str, credit: int) -> None:
        """Add credit to the stream ``correlation_id``; a grant for a stream that has ended (or
        never ran here) is ignored."""
        with self._lock:
            stream = self._live.get(correlation_id)
        if stream is not None:
            stream.grant(credit)

    def cancel(self, correlation_id: str) -> None:
        """Stop the stream or call ``correlation_id``, and remember the cancel, so that its request is
        skipped should it come (later, or again)."""
        now = time.monotonic()
        with self._lock:
            stream = self._live.get(correlation_id)
            running = self._calls.get(correlation_id)
            cancels = self.cancels
            cancels[correlation_id] = now + self.ttl
            cancels.move_to_end(correlation_id)
            while cancels and (len(cancels) > self.size or next(iter(cancels.values())) <= now):
                cancels.popitem(last=False)
        if stream is not None:
            stream.cancel()
        if running is not None:
            running.cancel()

    def refused(self, kind: Any, exc: BadRequest) -> None:
        """Log a malformed control message, at most a few a minute of each kind."""
        if not logger.isEnabledFor(logging.WARNING):
            return
        suppressed = self.limiter.allow(("control", str(kind)[:40]))
        if suppressed is None:
            return
        more = f" ({suppressed} more like it suppressed)" if suppressed else ""
        logger.warning("server %r dropped a control message: %s%s", self.server_id, exc, more)

    def _cancelled(self, correlation_id: str) -> bool:
        until = self.cancels.get(correlation_id)
        if until is None:
            return False
        if until <= time.monotonic():
            del self.cancels[correlation_id]
            return False
        return True
