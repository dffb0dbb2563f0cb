"""The event loop ``async def`` handlers run on: the server's own, or the application's.

A :class:`HandlerLoop` is either a loop on a thread the server starts when a coroutine first
needs one (``Server.start()``), or the application's running loop (``Server.serve_async()``,
``AsyncServer``), on which the coroutines become tasks like any other. Either way a worker thread
hands a coroutine over and goes back to the queue at once; at most ``concurrency`` of them run at
a time, bounded by a semaphore taken on the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")

#: Seconds :meth:`HandlerLoop.close` lets the coroutines cancelled before it run their cleanup.
CANCEL_WAIT = 2.0

Done = Callable[["concurrent.futures.Future[Any]"], None]


class HandlerLoop:
    """Runs coroutines for a server's workers, on its own loop or on ``loop`` (the application's).

    Args:
        name: names the loop's thread, when the server owns it.
        concurrency: coroutines running at once (at least one).
        loop: the application's running loop; None starts one of the server's own on first use.
    """

    def __init__(self, name: str, concurrency: int,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.name = name
        #: Taken by each coroutine handler while it runs: ``concurrency`` run at once.
        self.slots = asyncio.Semaphore(max(concurrency, 1))
        #: Whether the loop is the server's own (started here, stopped by :meth:`close`).
        self.owned = loop is None
        self._loop = loop
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._running: set[concurrent.futures.Future[Any]] = set()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop, started now if it is the server's own and not running yet."""
        loop = self._loop
        if loop is not None:
            return loop
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, daemon=True, name=self.name)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def on_loop_thread(self) -> bool:
        """Whether the calling thread is the one running the loop."""
        loop = self._loop
        if loop is None:
            return False
        try:
            return asyncio.get_running_loop() is loop
        except RuntimeError:
            return False

    def submit(self, coro: Coroutine[Any, Any, Any], done: Done) -> None:
        """Run ``coro`` as a task on the loop; ``done(future)`` runs on the loop's thread once it
        ends. Callable from any thread but the loop's own."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        with self._lock:
            self._running.add(future)
        future.add_done_callback(self._forget)
        future.add_done_callback(done)

    def run(self, awaitable: Coroutine[Any, Any, _T]) -> _T:
        """Run ``awaitable`` on the loop and wait for its result, from a worker thread."""
        return asyncio.run_coroutine_threadsafe(awaitable, self.loop).result()

    def cancel_running(self) -> int:
        """Cancel the coroutines still running; returns how many there were."""
        with self._lock:
            running = list(self._running)
        for future in running:
            future.cancel()
        return len(running)

    def close(self) -> None:
        """Stop the server's own loop and its thread, once its tasks have ended (those
        :meth:`cancel_running` cancelled run their cleanup; up to :data:`CANCEL_WAIT` s). The
        application's loop is left alone."""
        with self._lock:
            loop, thread = self._loop, self._thread
            if not self.owned or loop is None:
                return
            self._loop = self._thread = None
        # The coroutines cancel_running() cancelled run their cleanup (``finally``, ``async
        # with``) first, as asyncio.run() lets them: a loop stopped at once never ends them.
        ended = asyncio.run_coroutine_threadsafe(_others_ended(CANCEL_WAIT), loop)
        try:
            ended.result(CANCEL_WAIT + 1)
        except concurrent.futures.TimeoutError:
            pass
        loop.call_soon_threadsafe(loop.stop)
        assert thread is not None
        thread.join(timeout=5)
        if not thread.is_alive():
            loop.close()

    def _forget(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._running.discard(future)


async def _others_ended(timeout: float) -> None:
    """Wait up to ``timeout`` s for the loop's other tasks to end."""
    others = asyncio.all_tasks() - {asyncio.current_task()}
    if others:
        await asyncio.wait(others, timeout=timeout)
