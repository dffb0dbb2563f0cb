"""Pending calls and callback states: the bookkeeping a proxy does per call (no I/O)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from enum import IntEnum
from typing import Any

SYNC, FUTURE, CALLBACK, BROADCAST, CAST = 0, 1, 2, 3, 4
#: The proxy's own question to the broker (is anyone consuming?), awaited like a sync call.
CHECK = 5


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
        "started",
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
        self.future: Future[Any] | None = None
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
        self.started = 0.0

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

    def cancel(self) -> bool:
        """Cancel the call: its pending entry is dropped and a late reply is dropped too."""
        cancelled = super().cancel()
        if cancelled and self.forget is not None:
            self.forget()
        return cancelled

    def add_done_callback(self, fn: Callable[[Future[Any]], object]) -> None:
        def run(fut: Future[Any]) -> None:
            self._dispatch(lambda: _call(fn, fut))

        super().add_done_callback(run)


def _call(fn: Callable[[Future[Any]], object], fut: Future[Any]) -> None:
    fn(fut)
