"""Long calls (protocol v1.1): a running call's cancel, keep-alives and progress.

A :class:`Running` is one call (plain or stream) that runs here and that its caller can cancel:
the :class:`~rpc.server.streams.Streams` table holds them by correlation id, next to the streams,
and the I/O thread's cancels set their flag (and cancel an ``async def`` handler's task). For a
request that asked for keep-alives (``rpc-keepalive``), one :class:`Keepalives` thread per server
scans the calls in flight four times a second and publishes a keep-alive for each that has run
longer than its interval, every interval, until its reply; it also sends the progress reports
a handler made while throttled.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core import protocol, serialization
from ..core.context import CancelledFlag
from ..transport.link import Incoming
from .failures import LOGGER_NAME

if TYPE_CHECKING:
    from .replies import Replier
    from .streams import Streams

logger = logging.getLogger(LOGGER_NAME)

#: Seconds between two scans of the calls in flight for keep-alives.
SCAN_INTERVAL = 0.25
#: Shortest time between two progress reports of one call, in seconds (ten a second).
PROGRESS_INTERVAL = 0.1
#: When a call that asked for no keep-alives sends its first.
_NEVER = float("inf")


class Running:
    """One call running here: its cancelled flag, its task (an ``async def`` handler), and its
    keep-alives and progress when its request asked for keep-alives.

    Args:
        correlation_id: the call's correlation id, which a cancel names.
        msg: its request.
        interval: the keep-alive interval it asked for (None: no keep-alives, no progress).
        content_type: the content type of its replies (and progress).
        replier: publishes keep-alives and progress.
        control: this instance's control address, when known.
    """

    __slots__ = ("correlation_id", "msg", "interval", "content_type", "cancelled", "_replier",
                 "_control", "_lock", "_loop", "_task", "_next", "_done", "_last_progress",
                 "_pending", "untracked")

    def __init__(self, correlation_id: str, msg: Incoming, interval: float | None,
                 content_type: str, replier: Replier | None,
                 control: Callable[[], str | None]) -> None:
        self.correlation_id = correlation_id
        self.msg = msg
        self.interval = interval
        self.content_type = content_type
        #: Set once the caller cancels (it is the handler's ``current_call().cancelled``).
        self.cancelled = CancelledFlag()
        self._replier = replier
        self._control = control
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._next = time.monotonic() + interval if interval is not None else _NEVER
        self._done = False
        #: Set once out of the table of calls running here (see Streams.untrack).
        self.untracked = False
        self._last_progress = 0.0
        self._pending: bytes | None = None

    # -- cancelling --------------------------------------------------------------------------------

    def cancel(self) -> None:
        """The caller cancelled (on the I/O thread): set the flag, cancel the task if any."""
        with self._lock:
            if self.cancelled.is_set():
                return
            self.cancelled.set()
            loop, task = self._loop, self._task
        if loop is not None and task is not None:
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop is closed
                pass

    def attach(self, task: asyncio.Task[Any]) -> None:
        """The call runs as ``task`` (on its loop): a cancel cancels it; one that came already
        cancels it now."""
        with self._lock:
            self._loop, self._task = task.get_loop(), task
            cancelled = self.cancelled.is_set()
        if cancelled:
            task.cancel()

    def detach(self) -> None:
        """The task has ended: a cancel from now on only sets the flag."""
        with self._lock:
            self._loop = self._task = None

    # -- keep-alives and progress ------------------------------------------------------------------

    def report(self, done: float, total: float | None, message: str) -> None:
        """A handler's progress: sent at once, or kept to send when the throttle allows (on the
        handler's thread)."""
        payload = serialization.encode(protocol.progress_body(done, total, str(message)),
                                       self.content_type)
        with self._lock:
            if self._done:
                return
            now = time.monotonic()
            if now - self._last_progress >= PROGRESS_INTERVAL:
                self._pending = None
                self._last_progress = now
                self._send_progress(payload)
            else:
                self._pending = payload

    def tick(self, now: float) -> None:
        """Send what is due (on the keep-alive thread): a keep-alive, a throttled report."""
        with self._lock:
            if self._done:
                return
            if self._pending is not None and now - self._last_progress >= PROGRESS_INTERVAL:
                payload, self._pending = self._pending, None
                self._last_progress = now
                self._send_progress(payload)
            if now >= self._next:
                assert self.interval is not None
                self._next = now + self.interval
                control = self._control()
                if control is not None and self._replier is not None:
                    props = protocol.keepalive_properties(
                        self.msg.props.get("correlation_id"), self._replier.identity, control)
                    self._publish(b"", props)

    def finish(self) -> None:
        """The reply is next (or none comes): send the last report kept, then nothing more."""
        if self.interval is None:  # no reports nor keep-alives: nothing to send, no lock to take
            self._done = True
            return
        with self._lock:
            if self._done:
                return
            self._done = True
            if self._pending is not None:
                payload, self._pending = self._pending, None
                self._send_progress(payload)

    def _send_progress(self, payload: bytes) -> None:
        control = self._control()
        if control is None or self._replier is None:
            return
        props = protocol.progress_properties(self.msg.props.get("correlation_id"),
                                             self.content_type, self._replier.identity, control)
        self._publish(payload, props)

    def _publish(self, payload: bytes, props: dict[str, Any]) -> None:
        assert self._replier is not None
        try:
            self._replier.send_notice(self.msg, payload, props)
        except Exception as exc:  # a courtesy: the reply (or the redelivery) says the rest
            logger.debug("keep-alive or progress for %s not sent: %s", self.correlation_id, exc)


class Keepalives:
    """The one thread of a server that sends the keep-alives (and throttled progress) of the
    calls in flight.

    Args:
        streams: the table of the calls running here.
        name: the thread's name.
    """

    def __init__(self, streams: Streams, name: str) -> None:
        self.streams = streams
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def run(self) -> None:
        while not self._stop.wait(SCAN_INTERVAL):
            now = time.monotonic()
            for running in self.streams.running():
                if running.interval is not None:
                    try:
                        running.tick(now)
                    except Exception:
                        logger.exception("sending a keep-alive failed")
