"""asyncio: :class:`AsyncProxy`, a :class:`~rpc.Proxy` whose calls are awaited.

It wraps a synchronous proxy and starts each call as one of its futures: the proxy's own I/O
thread reads the reply and hands it to the event loop with ``call_soon_threadsafe``, so no call
takes a thread of its own and no call blocks the loop. Publishing a request is one socket write
on the loop's thread; connecting, reconnecting, closing and broadcasts (which wait out their
timeout) run on the loop's default executor.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Any

from ..core.errors import RPCError
from .proxy import Proxy
from .views import check_retries, check_timeout

#: Turns the synchronous proxy into the view one call is made through (its timeout, ...).
_View = Callable[[Any], Any]
#: One call of a batch: method, positional and keyword arguments.
_Request = tuple[str, tuple[Any, ...], dict[str, Any]]


def _plain(proxy: Proxy) -> Any:
    return proxy


def _broadcast(proxy: Proxy) -> Any:
    return proxy.broadcast


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
        self._checking: asyncio.Future[None] | None = None
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
            await asyncio.to_thread(self._sync.close)

    async def __aenter__(self) -> AsyncProxy:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- calling ---------------------------------------------------------------------------------

    def __getattr__(self, name: str) -> _AsyncMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return _AsyncMethod(self._view(), name)

    def _view(self) -> _AsyncCall:
        return _AsyncCall(self, _plain)

    async def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` by name: for names that clash with the proxy's own attributes."""
        return await self._view().call(method, *args, **kwargs)

    def set_timeout(self, timeout: float | None) -> _AsyncCall:
        """A one-call view with this timeout: ``await proxy.set_timeout(10).add(2, 3)``."""
        return self._view().set_timeout(timeout)

    def set_retries(self, retries: int) -> _AsyncCall:
        """A one-call view with this many retries (see :class:`rpc.Proxy`)."""
        return self._view().set_retries(retries)

    def wait_for_ready(self, wait: bool = True) -> _AsyncCall:
        """A one-call view whose request waits in the queue for a server, up to its timeout."""
        return self._view().wait_for_ready(wait)

    @property
    def cast(self) -> _AsyncCall:
        """A one-call view that publishes without a reply: ``await`` returns None at once."""
        return self._view().cast

    @property
    def broadcast(self) -> _AsyncCall:
        """A view that calls every running server of this ``server_id``.

        ``await proxy.broadcast(timeout=2).reload()`` returns a :class:`~rpc.BroadcastReply`
        per answer within 2 s (default 1 s); ``await proxy.broadcast.cast.reload()`` returns
        None at once. A broadcast waits out its timeout on the loop's default executor.
        """
        return _AsyncCall(self, _broadcast, broadcast=True)

    def with_context(self, **context: Any) -> _AsyncCall:
        """A one-call view sending ``context`` (small values) for ``rpc.current_call()``."""
        return self._view().with_context(**context)

    async def gather(
        self, calls: Iterable[Sequence[Any]], *, concurrency: int = 50,
        timeout: float | None = None,
    ) -> list[Any]:
        """Run ``(method, args[, kwargs])`` calls with at most ``concurrency`` in flight.

        Returns the results in order, with each failed call's exception in its place (as
        ``asyncio.gather(return_exceptions=True)`` does); ``timeout`` applies to each call.
        """
        requests = ((c[0], tuple(c[1]) if len(c) > 1 else (), dict(c[2]) if len(c) > 2 else {})
                    for c in calls)
        return [r async for r in self._stream(requests, concurrency, timeout, raise_errors=False)]

    def map(
        self, method: str, iterable: Iterable[Any], *, concurrency: int = 50,
        timeout: float | None = None,
    ) -> AsyncIterator[Any]:
        """Yield ``await method(*args)`` for each ``args`` tuple (or single argument), in order.

        At most ``concurrency`` calls are in flight; the first failure is raised where its
        result would have been yielded. Leaving the loop early cancels the calls in flight once
        the generator is closed (at once with ``contextlib.aclosing``).
        """
        requests: Iterator[_Request] = (
            (method, args if isinstance(args, tuple) else (args,), {}) for args in iterable)
        return self._stream(requests, concurrency, timeout, raise_errors=True)

    async def _stream(
        self, requests: Iterable[_Request], concurrency: int,
        timeout: float | None, *, raise_errors: bool,
    ) -> AsyncIterator[Any]:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        view = self.set_timeout(timeout) if timeout is not None else self._view()
        window: deque[concurrent.futures.Future[Any]] = deque()
        try:
            for method, args, kwargs in requests:
                if len(window) >= concurrency:
                    yield await _outcome(window.popleft(), raise_errors)
                window.append(await view.start(method, args, kwargs))
            while window:
                yield await _outcome(window.popleft(), raise_errors)
        finally:
            for future in window:
                future.cancel()

    async def _checked(self, sync: Proxy) -> None:
        """Whether a server consumes, asked off the loop by one caller while the rest await it."""
        checking = self._checking
        if checking is None or checking.done():
            checking = self._checking = asyncio.get_running_loop().run_in_executor(
                None, sync.check_availability)
        await asyncio.shield(checking)

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
    """The modifiers of one call, kept as the steps that build the synchronous proxy's view."""

    __slots__ = ("_proxy", "_view", "_broadcast", "_cast")

    def __init__(
        self, proxy: AsyncProxy, view: _View, *, broadcast: bool = False, cast: bool = False,
    ) -> None:
        self._proxy = proxy
        self._view = view
        self._broadcast = broadcast
        self._cast = cast

    def _then(self, step: _View, *, cast: bool = False) -> _AsyncCall:
        view = self._view
        return _AsyncCall(self._proxy, lambda sync: step(view(sync)),
                          broadcast=self._broadcast, cast=self._cast or cast)

    def set_timeout(self, timeout: float | None) -> _AsyncCall:
        check_timeout(timeout)
        return self._then(lambda view: view.set_timeout(timeout))

    def set_retries(self, retries: int) -> _AsyncCall:
        check_retries(retries)
        return self._then(lambda view: view.set_retries(retries))

    def wait_for_ready(self, wait: bool = True) -> _AsyncCall:
        return self._then(lambda view: view.wait_for_ready(wait))

    @property
    def cast(self) -> _AsyncCall:
        return self._then(lambda view: view.cast, cast=True)

    def with_context(self, **context: Any) -> _AsyncCall:
        return self._then(lambda view: view.with_context(**context))

    def __call__(self, *, timeout: float | None) -> _AsyncCall:
        """``proxy.broadcast(timeout=2)``: how long to collect replies."""
        if not self._broadcast:
            raise TypeError("only a broadcast view takes a timeout this way: use set_timeout()")
        return self.set_timeout(timeout)

    def __getattr__(self, name: str) -> _AsyncMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return _AsyncMethod(self, name)

    async def _checked(self, sync: Proxy) -> None:
        if sync.checks_availability and not self._view(sync).waits_for_ready:
            await self._proxy._checked(sync)

    async def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        if self._broadcast:  # it waits out its timeout: not on the loop
            view = self._view(await self._proxy._ready())
            return await asyncio.to_thread(view.call, method, *args, **kwargs)
        if self._cast:
            sync = await self._proxy._ready()
            await self._checked(sync)
            return await _publish(sync, self._view(sync).call, method, args, kwargs)
        return await _result(await self.start(method, args, kwargs))

    async def start(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
    ) -> concurrent.futures.Future[Any]:
        """Publish the request; the future it returns is resolved by the proxy's I/O thread."""
        sync = await self._proxy._ready()
        await self._checked(sync)
        future: concurrent.futures.Future[Any] = await _publish(
            sync, self._view(sync).future.call, method, args, kwargs)
        return future


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


async def _publish(
    sync: Proxy, start: Callable[..., Any], method: str, args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """``start(method, *args, **kwargs)``: one socket write, made on the loop's thread unless
    the connection is down, when the reconnect it implies runs on the default executor."""
    if not sync.connected:
        return await asyncio.to_thread(start, method, *args, **kwargs)
    return start(method, *args, **kwargs)


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


async def _outcome(future: concurrent.futures.Future[Any], raise_errors: bool) -> Any:
    try:
        return await _result(future)
    except Exception as exc:
        if raise_errors:
            raise
        return exc


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
