"""asyncio: :class:`AsyncProxy`, a :class:`~rpc.Proxy` whose calls are awaited.

It wraps a synchronous proxy and starts each call as one of its futures: the proxy's own I/O
thread reads the reply and hands it to the event loop with ``call_soon_threadsafe``, so no call
takes a thread of its own and no call blocks the loop. Publishing a request is one socket write
on the loop's thread; connecting, reconnecting and closing run in the loop's default executor.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
from collections.abc import Callable
from typing import Any

from .errors import RPCError
from .proxy import Proxy

#: Turns the synchronous proxy into the view one call is made through (its timeout, ...).
_View = Callable[[Any], Any]


def _plain(proxy: Proxy) -> Any:
    return proxy


class AsyncProxy:
    """A dynamic client for ``server_id`` whose remote methods are coroutines.

    Example::

        async with AsyncProxy(server_id="calc") as proxy:
            await proxy.add(2, 3)                        # 5
            await proxy.math.mul(2, 4)                   # 8
            await proxy.call("add", 2, 3)                # by name
            await proxy.set_timeout(1).add(2, 3)         # RPCTimeout after 1 s without a reply

    Construction does not connect: ``async with``, :meth:`connect` or the first call does, off
    the event loop. Cancelling the task that awaits a call forgets the call; its late reply is
    dropped (and counted in :attr:`replies_dropped`).

    Args:
        url: broker URL, as for :class:`~rpc.Proxy`.
        options: the keyword options of :class:`~rpc.Proxy` (``server_id``, ``serializer``,
            ``timeout``, ``heartbeat``, ``connect_retry``, the URL in pieces).

    Raises:
        TypeError: an option :class:`~rpc.Proxy` does not take.
    """

    def __init__(self, url: str | None = None, **options: Any) -> None:
        inspect.signature(Proxy).bind(url, **options)  # a misspelt option fails here, not later
        self._url = url
        self._options = options
        self._sync: Proxy | None = None
        self._connecting: asyncio.Future[Proxy] | None = None
        self._closed = False

    # -- connecting and closing ------------------------------------------------------------------

    async def connect(self) -> AsyncProxy:
        """Connect now rather than on the first call; returns the proxy.

        Raises:
            rpc.ConnectionError: the broker stayed unreachable for ``connect_retry`` seconds.
        """
        await self._ready()
        return self

    async def _ready(self) -> Proxy:
        if self._closed:
            raise RPCError("this proxy is closed")
        if self._sync is not None:
            return self._sync
        connecting = self._connecting
        # a failed attempt is not cached: the next call tries again
        if connecting is None or (connecting.done() and connecting.exception() is not None):
            loop = asyncio.get_running_loop()
            connecting = self._connecting = loop.run_in_executor(None, self._open)
        # shielded: a caller cancelled while connecting must not orphan the connection
        return await asyncio.shield(connecting)

    def _open(self) -> Proxy:
        proxy = Proxy(self._url, **self._options)
        if self._closed:  # closed while this connected
            proxy.close()
            raise RPCError("this proxy is closed")
        self._sync = proxy
        return proxy

    async def close(self) -> None:
        """Fail the calls still pending and close the connection, off the event loop."""
        if self._closed:
            return
        self._closed = True
        connecting = self._connecting
        if self._sync is None and connecting is not None:
            try:
                await asyncio.shield(connecting)
            except Exception:
                return
        if self._sync is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._sync.close)

    async def __aenter__(self) -> AsyncProxy:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- calling ---------------------------------------------------------------------------------

    def __getattr__(self, name: str) -> _AsyncMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return _AsyncMethod(_AsyncCall(self, _plain), name)

    async def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` by name: for names that clash with the proxy's own attributes."""
        return await _AsyncCall(self, _plain).call(method, *args, **kwargs)

    def set_timeout(self, timeout: float | None) -> _AsyncCall:
        """A one-call view with this timeout: ``await proxy.set_timeout(10).add(2, 3)``."""
        return _AsyncCall(self, _plain).set_timeout(timeout)

    @property
    def pending_calls(self) -> int:
        """Calls awaiting their reply."""
        return 0 if self._sync is None else self._sync.pending_calls

    @property
    def replies_dropped(self) -> int:
        """Replies that matched no pending call (late after a timeout or a cancellation, ...)."""
        return 0 if self._sync is None else self._sync.replies_dropped

    def __repr__(self) -> str:
        inner = "not connected" if self._sync is None else repr(self._sync)
        return f"<AsyncProxy {'closed' if self._closed else inner}>"


class _AsyncCall:
    """The modifiers of one call; each returns a new view."""

    __slots__ = ("_proxy", "_view")

    def __init__(self, proxy: AsyncProxy, view: _View) -> None:
        self._proxy = proxy
        self._view = view

    def set_timeout(self, timeout: float | None) -> _AsyncCall:
        view = self._view
        return _AsyncCall(self._proxy, lambda sync: view(sync).set_timeout(timeout))

    def __getattr__(self, name: str) -> _AsyncMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return _AsyncMethod(self, name)

    async def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        sync = await self._proxy._ready()
        start = self._view(sync).future.call
        if _link_down(sync):  # reconnecting may take seconds: not on the loop
            loop = asyncio.get_running_loop()
            future = await loop.run_in_executor(None, lambda: start(method, *args, **kwargs))
        else:
            future = start(method, *args, **kwargs)
        return await _result(future)


class _AsyncMethod:
    """``proxy.name`` or ``proxy.instance.method``: await its call, or take a further attribute."""

    __slots__ = ("_call", "_name")

    def __init__(self, call: _AsyncCall, name: str) -> None:
        self._call = call
        self._name = name

    def __getattr__(self, name: str) -> _AsyncMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return _AsyncMethod(self._call, f"{self._name}.{name}")

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call.call(self._name, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<remote coroutine {self._name!r}>"


def _link_down(proxy: Proxy) -> bool:
    return proxy._link.closed


async def _result(future: concurrent.futures.Future[Any]) -> Any:
    """Await a proxy future; cancelling the awaiting task cancels it, which forgets the call."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[Any] = loop.create_future()

    def resolved(done: concurrent.futures.Future[Any]) -> None:
        try:
            loop.call_soon_threadsafe(_copy, done, waiter)
        except RuntimeError:  # the loop is closed: nobody awaits the result any more
            pass

    # The base class's method runs ``resolved`` on the thread that sets the result, skipping
    # the hop through the proxy's callback thread: ``resolved`` only schedules, it never blocks.
    concurrent.futures.Future.add_done_callback(future, resolved)
    try:
        return await waiter
    except asyncio.CancelledError:
        future.cancel()
        raise


def _copy(source: concurrent.futures.Future[Any], waiter: asyncio.Future[Any]) -> None:
    if waiter.done():
        return
    if source.cancelled():
        waiter.cancel()
        return
    exc = source.exception()
    if exc is not None:
        waiter.set_exception(exc)
    else:
        waiter.set_result(source.result())


__all__ = ["AsyncProxy"]
