"""Views of a proxy that carry the modifiers of one call: ``proxy.set_timeout(1).future.add(1, 2)``.

A view is immutable: every modifier returns a new one, so nothing leaks into the next call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ..core import frames

#: Longest timeout accepted: a year, far below what clocks and AMQP expiration can carry.
MAX_TIMEOUT = 365 * 24 * 3600.0

OnSuccess = Callable[[Any], Any]
OnError = Callable[[BaseException], Any]
#: A proxy's one entry point for calls: ``invoke(options, method, args, kwargs)``.
Invoke = Callable[["CallOptions", str, tuple[Any, ...], dict[str, Any]], Any]


def check_timeout(timeout: float | None) -> float | None:
    """A timeout in seconds, or None for no timeout.

    Raises:
        ValueError: not a positive number of seconds below a year.
    """
    if timeout is None:
        return None
    if (not isinstance(timeout, (int, float)) or isinstance(timeout, bool)
            or not 0 < timeout < MAX_TIMEOUT):
        raise ValueError(f"timeout must be a positive number of seconds or None, not {timeout!r}")
    return float(timeout)


@dataclass(frozen=True, slots=True)
class CallOptions:
    """How one call is made."""

    timeout: float | None = None
    timeout_set: bool = False
    callbacks: tuple[OnSuccess | None, OnError | None] | None = None
    future: bool = False
    cast: bool = False
    broadcast: bool = False
    context: tuple[tuple[str, Any], ...] = ()
    #: None: the proxy's own setting.
    retries: int | None = None
    wait_for_ready: bool | None = None
    stream: bool = False
    #: Hears each progress report of the call (protocol v1.1).
    on_progress: Callable[[Any], Any] | None = None
    #: An AsyncProxy call that is awaited for its result and iterated for its progress.
    tracked: bool = False
    #: A stream's items let ahead, and the longest wait for one item (None: no limit).
    window: int | None = None
    item_timeout: float | None = None


def check_retries(retries: int) -> int:
    """A number of retries.

    Raises:
        ValueError: not a whole number from 0 to 100.
    """
    if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= 100:
        raise ValueError(f"retries must be a whole number from 0 to 100, not {retries!r}")
    return retries


class CallView:
    """``proxy.<modifier>``: takes further modifiers, or calls a method with these options.

    Both proxies hand out the same views: a call goes to the proxy's ``invoke``, which returns
    the result (:class:`~rpc.Proxy`) or a coroutine (:class:`~rpc.AsyncProxy`).
    """

    __slots__ = ("_invoke", "_wait_default", "_options")

    def __init__(self, invoke: Invoke, wait_default: Callable[[], bool],
                 options: CallOptions) -> None:
        self._invoke = invoke
        self._wait_default = wait_default
        self._options = options

    def _with(self, **changes: Any) -> CallView:
        return CallView(self._invoke, self._wait_default, replace(self._options, **changes))

    def set_timeout(self, timeout: float | None) -> CallView:
        """This call's timeout in seconds (None: wait for ever)."""
        return self._with(timeout=check_timeout(timeout), timeout_set=True)

    def callback(self, on_success: OnSuccess | None, on_error: OnError | None = None) -> CallView:
        """Return a uid at once; run ``on_success(result)`` or ``on_error(exc)`` later."""
        for fn in (on_success, on_error):
            if fn is not None and not callable(fn):
                raise TypeError(f"callbacks must be callable, not {type(fn).__name__}")
        return self._with(callbacks=(on_success, on_error), future=False)

    def set_retries(self, retries: int) -> CallView:
        """Publish the request again, up to ``retries`` times, when the broker connection failed
        or refused it, or no server was consuming; each retry keeps the request's message id."""
        return self._with(retries=check_retries(retries))

    @property
    def waits_for_ready(self) -> bool:
        """Whether this call's request may wait in the queue for a server."""
        if self._options.wait_for_ready is not None:
            return self._options.wait_for_ready
        return self._wait_default() or self._options.broadcast

    def wait_for_ready(self, wait: bool = True) -> CallView:
        """Let the request wait in the queue for a server, up to its deadline, instead of
        failing with ServerUnavailable when none is consuming."""
        return self._with(wait_for_ready=bool(wait))

    @property
    def future(self) -> CallView:
        """Return a future at once: a ``concurrent.futures.Future`` from :class:`~rpc.Proxy`,
        an ``asyncio.Task`` from :class:`~rpc.AsyncProxy`."""
        return self._with(future=True, callbacks=None)

    def on_progress(self, function: Callable[[Any], Any]) -> CallView:
        """Run ``function(report)`` for each progress report the handler sends (an
        :class:`rpc.Progress`)."""
        if not callable(function):
            raise TypeError(f"on_progress needs a callable, not {type(function).__name__}")
        return self._with(on_progress=function)

    @property
    def tracked(self) -> CallView:
        """On an AsyncProxy: a call to ``async for`` over its progress reports, then ``await``
        for its result."""
        return self._with(tracked=True)

    @property
    def stream(self) -> CallView:
        """Call a generator method and iterate over what it yields as it comes."""
        return self._with(stream=True)

    @property
    def cast(self) -> CallView:
        """Publish without waiting for (or getting) a reply; returns None at once."""
        return self._with(cast=True)

    def with_context(self, **context: Any) -> CallView:
        """Send these values in the ``rpc-context`` header; handlers read ``current_call()``.

        Raises:
            ValueError: a value holds an infinite or NaN float, which RabbitMQ answers by
                closing the connection, or an integer outside 64 bits.
            TypeError: a value holds a type an AMQP header has no encoding for (a set, an
                object), or a map with keys that are not strings.
        """
        for key, value in context.items():
            if not _header_safe(value):
                raise ValueError(f"context value {key!r} holds an infinite or NaN number, "
                                 f"which an AMQP header cannot carry to RabbitMQ")
            try:
                frames.encode_table({key: value})
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"context value {key!r}: {exc}") from None
        return self._with(context=self._options.context + tuple(context.items()))

    def __call__(self, *, timeout: float | None = None, window: int | None = None) -> CallView:
        """``proxy.broadcast(timeout=2)``: how long to collect replies;
        ``proxy.stream(timeout=5, window=100)``: the longest wait for each item, and how many
        items the server may send ahead of the consumer."""
        if self._options.stream:
            if window is not None and (type(window) is not int or not 1 <= window <= 10_000):
                raise ValueError(f"window must be a whole number from 1 to 10000, not {window!r}")
            return self._with(item_timeout=check_timeout(timeout),
                              window=window if window is not None else self._options.window)
        if not self._options.broadcast:
            raise TypeError("only a broadcast view takes a timeout this way: use set_timeout()")
        if window is not None:
            raise TypeError("only a stream view takes a window")
        return self.set_timeout(timeout)

    def __getattr__(self, name: str) -> RemoteMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return RemoteMethod(self, name)

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` by name with these options."""
        return self._invoke(self._options, method, args, kwargs)


def _header_safe(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_header_safe(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_header_safe(v) for v in value)
    return True


class RemoteMethod:
    """``proxy.name`` or ``proxy.instance.method``: call it, or take a further attribute."""

    __slots__ = ("_view", "_name")

    def __init__(self, view: CallView, name: str) -> None:
        self._view = view
        self._name = name

    def __getattr__(self, name: str) -> RemoteMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return RemoteMethod(self._view, f"{self._name}.{name}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        view = self._view  # CallView.call inlined: one layer less on every call
        return view._invoke(view._options, self._name, args, kwargs)

    def __repr__(self) -> str:
        return f"<remote method {self._name!r}>"


#: A proxy keeps the remote methods asked for as its own attributes while it has fewer than
#: this many attributes in all (a program that calls names without end stops adding there).
MAX_ATTRIBUTES = 1024

#: Options of a plain call, and of a call through each one-word view.
PLAIN = CallOptions()
STREAM_CALL = CallOptions(stream=True)
FUTURE_CALL = CallOptions(future=True)
CAST_CALL = CallOptions(cast=True)
BROADCAST_CALL = CallOptions(broadcast=True)


class ProxyBase:
    """The surface both proxies share: remote methods as attributes, ``call`` by name, and the
    one-call views. A proxy supplies how a call is made (:meth:`_invoke`) and its defaults."""

    def _invoke(
        self, options: CallOptions, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
    ) -> Any:
        raise NotImplementedError

    def _view(self, options: CallOptions = PLAIN) -> CallView:
        return CallView(self._invoke, self._waits_by_default, options)

    def _waits_by_default(self) -> bool:
        raise NotImplementedError

    def __getattr__(self, name: str) -> RemoteMethod:
        """``proxy.name``, kept as an attribute of the proxy: a plain view is immutable, so the
        next ``proxy.name`` is an ordinary attribute read instead of a miss and a new view."""
        if name.startswith("_"):
            raise AttributeError(name)
        method = RemoteMethod(self._view(), name)
        attributes = vars(self)
        if len(attributes) < MAX_ATTRIBUTES:
            attributes[name] = method
        return method

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` by name: for names that clash with the proxy's own attributes."""
        return self._invoke(PLAIN, method, args, kwargs)

    def set_timeout(self, timeout: float | None) -> CallView:
        """A one-call view with this timeout: ``proxy.set_timeout(10).add(2, 3)``."""
        return self._view().set_timeout(timeout)

    def set_retries(self, retries: int) -> CallView:
        """A one-call view with this many retries: ``proxy.set_retries(3).add(2, 3)``."""
        return self._view().set_retries(retries)

    def wait_for_ready(self, wait: bool = True) -> CallView:
        """A one-call view whose request waits in the queue for a server, up to its timeout."""
        return self._view().wait_for_ready(wait)

    def callback(self, on_success: OnSuccess | None, on_error: OnError | None = None) -> CallView:
        """A one-call view that returns a uid at once and later runs one of the functions."""
        return self._view().callback(on_success, on_error)

    @property
    def future(self) -> CallView:
        """A one-call view that returns a future at once (see :attr:`CallView.future`)."""
        return self._view(FUTURE_CALL)

    @property
    def cast(self) -> CallView:
        """A one-call view that publishes without a reply and returns None at once."""
        return self._view(CAST_CALL)

    @property
    def stream(self) -> CallView:
        """A view that calls a generator method and iterates over its items as they come:
        ``for row in proxy.stream.export(table)`` (``async for`` on an AsyncProxy).

        ``proxy.stream(timeout=5, window=100)`` bounds the wait for each item and sets how many
        items the server may send ahead of the consumer; ``set_timeout`` bounds the whole
        stream. Leaving the loop early stops the generator on the server.
        """
        return self._view(STREAM_CALL)

    @property
    def broadcast(self) -> CallView:
        """A view that calls every running server of this ``server_id`` and lists the replies.

        ``proxy.broadcast(timeout=2).reload()`` waits 2 s (default 1 s) and returns a
        :class:`~rpc.BroadcastReply` per answer; ``proxy.broadcast.cast.reload()`` waits for
        none.
        """
        return self._view(BROADCAST_CALL)

    def with_context(self, **context: Any) -> CallView:
        """A one-call view sending ``context`` (small values) for ``rpc.current_call()``."""
        return self._view().with_context(**context)

    def on_progress(self, function: Callable[[Any], Any]) -> CallView:
        """A one-call view that runs ``function(report)`` for each progress report (an
        :class:`rpc.Progress`) of a long call:
        ``proxy.on_progress(print).long_job()``."""
        return self._view().on_progress(function)
