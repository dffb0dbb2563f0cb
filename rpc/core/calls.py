"""Pending calls, the table that correlates replies with them, and callback states: the
bookkeeping both proxies do per call (no I/O)."""

from __future__ import annotations

import heapq
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from enum import IntEnum
from typing import Any

SYNC, FUTURE, CALLBACK, BROADCAST, CAST = 0, 1, 2, 3, 4
#: The proxy's own question to the broker (is anyone consuming?), awaited like a sync call.
CHECK = 5
#: A call answered by a stream of items, then its reply (protocol v1.1).
STREAM = 6
#: Kinds nobody waits for on a thread of their own: the table times them out.
BACKGROUND = frozenset({FUTURE, CALLBACK})


class CallbackState(IntEnum):
    """Where a callback-mode call is: its reply awaited, its function running, or done."""

    WAITING = 0
    PROCESSING = 1
    FINISHED = 2


class Pending:
    """One call awaiting its reply.

    A synchronous caller that is not reading the socket sleeps on ``_signal``, a lock held from
    creation; the reader releases it when the reply is in or when the caller should take over
    reading. Future and callback calls carry their completion target instead.
    """

    __slots__ = (
        "cid", "method", "kind", "content_type", "deadline", "done", "ok", "value",
        "future", "on_success", "on_error", "_signal", "_signalled",
        "body", "props", "broadcast", "wait_for_ready", "retries", "attempt", "unavailable",
        "maybe_queued",
        "started", "waiter", "timed", "stream", "control", "keepalive", "heard", "progress",
        "on_progress",
    )

    def __init__(
        self, cid: str, method: str, kind: int, content_type: str, deadline: float | None,
    ) -> None:
        self.cid = cid
        self.method = method
        self.kind = kind
        self.content_type = content_type
        self.deadline = deadline
        self.done = False
        self.ok = False
        self.value: Any = None
        self.future: CallFuture | None = None
        self.on_success: Callable[[Any], Any] | None = None
        self.on_error: Callable[[BaseException], Any] | None = None
        self._signal: threading.Lock | None = None
        self._signalled = False
        # The request as published, to publish it again on a retry.
        self.body = b""
        self.props: dict[str, Any] = {}
        self.broadcast = False
        self.wait_for_ready = False
        #: Retries left, and how many were made.
        self.retries = 0
        self.attempt = 0
        #: Whether the last attempt found no server consuming (it backs off for longer).
        self.unavailable = False
        #: Whether an earlier attempt may wait in the queue (its connection failed after it was
        #: written): a server will run that copy, so "no server consuming" no longer ends the call.
        self.maybe_queued = False
        self.started = 0.0
        #: What an asyncio caller awaits (an ``asyncio.Future``); the blocking proxy sleeps on
        #: its own signal instead.
        self.waiter: Any = None
        #: Whether the table times this call out (it is not waited on by a thread of its own).
        self.timed = False
        #: A streaming call's items and credit.
        self.stream: StreamState | None = None
        #: The address of the server instance that runs the call, once it has said (v1.1).
        self.control: str | None = None
        #: The keep-alive interval the call asked for, and when the server was last heard.
        self.keepalive: float | None = None
        self.heard: float | None = None
        #: The latest progress the handler reported, and who hears of each.
        self.progress: Any = None
        self.on_progress: Callable[[Any], Any] | None = None

    def silent_after(self, missed: int) -> float | None:
        """When the server counts as gone if nothing more is heard: ``missed`` keep-alive
        intervals after it was last heard (None until it has been heard at all)."""
        if self.heard is None or self.keepalive is None:
            return None
        return self.heard + missed * self.keepalive

    def arm(self) -> None:
        """Prepare a synchronous call to sleep until :meth:`wake` (again, for a retry)."""
        self.done = False
        self._signalled = False
        self._signal = threading.Lock()
        self._signal.acquire()

    def wake(self) -> None:
        """Wake the sleeping caller once (call with the proxy's lock held)."""
        if self._signal is not None and not self._signalled:
            self._signalled = True
            self._signal.release()

    def sleep(self, timeout: float | None) -> None:
        """Sleep until woken or ``timeout``; the caller re-arms under the proxy's lock."""
        assert self._signal is not None
        wait = -1 if timeout is None else min(max(timeout, 0), threading.TIMEOUT_MAX)
        if self._signal.acquire(timeout=wait):
            self._signalled = False


class StreamState:
    """What a streaming call has received and not yet handed out, and the credit it owes.

    Items wait in ``items`` (at most about one window of them: the server sends no more than
    the credit the consumer has granted). ``end`` holds the reply that ends the stream.
    """

    __slots__ = ("items", "window", "item_timeout", "consumed", "received", "ended", "end",
                 "answered")

    def __init__(self, window: int, item_timeout: float | None) -> None:
        self.items: deque[Any] = deque()
        self.window = window
        self.item_timeout = item_timeout
        #: Items handed out since credit was last granted.
        self.consumed = 0
        #: Items received from the server so far.
        self.received = 0
        self.ended = False
        #: ``(ok, value)`` of the reply that ended the stream.
        self.end: tuple[bool, Any] = (True, None)
        #: Whether the server ended it (else it failed here, and the server may run on).
        self.answered = False

    def take(self) -> tuple[Any, int]:
        """The next item, and the credit to grant now (0: none yet): the items consumed, once
        they reach half the window, so the server never waits on a consumer that keeps up."""
        item = self.items.popleft()
        self.consumed += 1
        if self.consumed * 2 >= self.window:
            grant, self.consumed = self.consumed, 0
            return item, grant
        return item, 0


class CallTable:
    """Calls awaiting replies, by correlation id, and the deadlines of those nobody waits on.

    Synchronous callers time themselves out; the calls in the table's timer heap (futures and
    callbacks of the blocking proxy, every call of the asyncio one) are expired by whoever
    drives the table, through :meth:`expired`, so no call needs a timer of its own. Not
    thread-safe: the blocking proxy holds its lock around it, the asyncio proxy runs on one loop.
    """

    __slots__ = ("_calls", "_timers", "background")

    def __init__(self) -> None:
        self._calls: dict[str, Pending] = {}
        self._timers: list[tuple[float, str]] = []
        #: Calls in the table nobody waits on synchronously (futures and callbacks).
        self.background = 0

    def __len__(self) -> int:
        return len(self._calls)

    def add(self, pending: Pending, *, background: bool = False) -> None:
        """Track ``pending``; a background call with a deadline gets a timer."""
        self._calls[pending.cid] = pending
        pending.timed = background
        if background:
            self.background += 1
            if pending.deadline is not None:
                timers = self._timers
                heapq.heappush(timers, (pending.deadline, pending.cid))
                if len(timers) > 2 * len(self._calls) + 256:
                    self._compact()

    def _compact(self) -> None:
        """Drop the timers of calls already answered (they go only lazily, as they come due)."""
        self._timers = [(p.deadline, cid) for cid, p in self._calls.items()
                        if p.timed and p.deadline is not None]
        heapq.heapify(self._timers)

    def get(self, cid: Any) -> Pending | None:
        """The call ``cid`` names, left in the table (a broadcast collects many replies)."""
        return self._calls.get(cid) if type(cid) is str else None

    def take(self, cid: Any) -> Pending | None:
        """Remove the call ``cid`` names, to complete it; None if it is gone (or never was)."""
        pending = self._calls.pop(cid, None) if type(cid) is str else None
        if pending is not None and pending.timed:
            self.background -= 1
        return pending

    def take_answered(self, cid: Any) -> Pending | None:
        """The call a reply names, removed to complete it, but a broadcast left in the table to
        collect more replies; None if there is no such call."""
        pending = self._calls.get(cid) if type(cid) is str else None
        if pending is not None and pending.kind != BROADCAST:
            del self._calls[cid]
            if pending.timed:
                self.background -= 1
        return pending

    def next_deadline(self) -> float | None:
        """The earliest deadline of a call still in the table, or None."""
        timers, calls = self._timers, self._calls
        while timers:
            deadline, cid = timers[0]
            pending = calls.get(cid)
            if pending is not None and pending.timed and pending.deadline == deadline:
                return deadline
            heapq.heappop(timers)  # answered: its timer is stale
        return None

    def expired(self, now: float) -> list[Pending]:
        """Remove and return the background calls whose deadline has passed."""
        expired = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, cid = heapq.heappop(timers)
            pending = self.take(cid)
            if pending is not None:
                expired.append(pending)
        return expired

    def silent(self, now: float, missed: int) -> list[Pending]:
        """Remove and return the calls whose server has been silent for ``missed`` keep-alive
        intervals (a scan: a driver makes it about once a second, only while keep-alives run)."""
        gone = [p for p in self._calls.values()
                if p.heard is not None and p.keepalive is not None
                and now > p.heard + missed * p.keepalive]
        for pending in gone:
            self.take(pending.cid)
        return gone

    def calls(self) -> int:
        """Calls awaiting replies, leaving out the proxy's own questions to the broker."""
        return sum(1 for p in self._calls.values() if p.kind != CHECK)

    def heard_any(self) -> bool:
        """Whether any call in the table has heard from its server (its silence is watched)."""
        return any(p.heard is not None for p in self._calls.values())

    def drain(self) -> list[Pending]:
        """Remove and return every call (the connection is gone, or the proxy closes)."""
        calls = list(self._calls.values())
        self._calls.clear()
        self._timers.clear()
        self.background = 0
        return calls


class CallbackStates:
    """States of callback calls: live ones until finished, then the most recent ``keep``."""

    def __init__(self, keep: int = 10_000) -> None:
        self._keep = keep
        self._live: dict[str, CallbackState] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, uid: str) -> None:
        with self._lock:
            self._live[uid] = CallbackState.WAITING

    def processing(self, uid: str) -> None:
        with self._lock:
            self._live[uid] = CallbackState.PROCESSING

    def finish(self, uid: str) -> None:
        with self._lock:
            self._live.pop(uid, None)
            self._finished[uid] = None
            while len(self._finished) > self._keep:
                self._finished.popitem(last=False)

    def get(self, uid: str) -> CallbackState:
        """The state of ``uid``.

        Raises:
            KeyError: this proxy never issued ``uid`` (or it finished too long ago).
        """
        with self._lock:
            state = self._live.get(uid)
            if state is not None:
                return state
            if uid in self._finished:
                return CallbackState.FINISHED
        raise KeyError(uid)

    def waiting(self) -> int:
        """How many callback calls have not finished."""
        with self._lock:
            return len(self._live)


#: Serialises cancels of call futures (rare), so one notifies waiters once.
_CANCELLING = threading.Lock()


class CallFuture(Future[Any]):
    """A future whose done-callbacks run on the proxy's callback thread, not its I/O thread.

    Results are set by whichever thread reads the reply, so ``result()`` wakes without a hop;
    user code attached with :meth:`add_done_callback` may block or call the proxy safely.
    """

    def __init__(self, dispatch: Callable[[Callable[[], None]], None]) -> None:
        super().__init__()
        self._dispatch = dispatch
        #: Set by the proxy: forgets the pending call when this future is cancelled.
        self.forget: Callable[[], None] | None = None
        #: The latest progress the handler reported (an ``rpc.Progress``), or None.
        self.progress: Any = None
        self._notified = False

    def cancel(self) -> bool:
        """Cancel the call: its pending entry is dropped and a late reply is dropped too.

        ``concurrent.futures.wait()`` and ``as_completed()`` see it done at once: with no
        executor to do it, the cancel itself notifies them.
        """
        with _CANCELLING:
            cancelled = super().cancel()
            first = cancelled and not self._notified
            if first:
                self._notified = True
                super().set_running_or_notify_cancel()
        if first and self.forget is not None:
            self.forget()
        return cancelled

    def set_running_or_notify_cancel(self) -> bool:
        """False once cancelled (the reply that ends the call then goes unheard), else True and
        too late to cancel; unlike ``Future``'s, callable after the cancel notified waiters."""
        with _CANCELLING:
            if self._notified:
                return False
            running = super().set_running_or_notify_cancel()
            self._notified = not running
            return running

    def add_done_callback(self, fn: Callable[[Future[Any]], object]) -> None:
        def run(fut: Future[Any]) -> None:
            self._dispatch(lambda: _call(fn, fut))

        super().add_done_callback(run)


def _call(fn: Callable[[Future[Any]], object], fut: Future[Any]) -> None:
    fn(fut)
