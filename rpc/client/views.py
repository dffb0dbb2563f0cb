"""Views of a proxy that carry the modifiers of one call: ``proxy.set_timeout(1).future.add(1, 2)``.

A view is immutable: every modifier returns a new one, so nothing leaks into the next call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .proxy import Proxy

#: Longest timeout accepted: a year, far below what clocks and AMQP expiration can carry.
MAX_TIMEOUT = 365 * 24 * 3600.0

OnSuccess = Callable[[Any], Any]
OnError = Callable[[BaseException], Any]


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


def check_retries(retries: int) -> int:
    """A number of retries.

    Raises:
        ValueError: not a whole number from 0 to 100.
    """
    if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= 100:
        raise ValueError(f"retries must be a whole number from 0 to 100, not {retries!r}")
    return retries


class CallView:
    """``proxy.<modifier>``: takes further modifiers, or calls a method with these options."""

    __slots__ = ("_proxy", "_options")

    def __init__(self, proxy: Proxy, options: CallOptions) -> None:
        self._proxy = proxy
        self._options = options

    def _with(self, **changes: Any) -> CallView:
        return CallView(self._proxy, replace(self._options, **changes))

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
        return self._proxy.default_wait_for_ready or self._options.broadcast

    def wait_for_ready(self, wait: bool = True) -> CallView:
        """Let the request wait in the queue for a server, up to its deadline, instead of
        failing with ServerUnavailable when none is consuming."""
        return self._with(wait_for_ready=bool(wait))

    @property
    def future(self) -> CallView:
        """Return a ``concurrent.futures.Future``."""
        return self._with(future=True, callbacks=None)

    @property
    def cast(self) -> CallView:
        """Publish without waiting for (or getting) a reply; returns None at once."""
        return self._with(cast=True)

    def with_context(self, **context: Any) -> CallView:
        """Send these values in the ``rpc-context`` header; handlers read ``current_call()``.

        Raises:
            ValueError: a value holds an infinite or NaN float, which RabbitMQ answers by
                closing the connection.
        """
        for key, value in context.items():
            if not _header_safe(value):
                raise ValueError(f"context value {key!r} holds an infinite or NaN number, "
                                 f"which an AMQP header cannot carry to RabbitMQ")
        return self._with(context=self._options.context + tuple(context.items()))

    def __call__(self, *, timeout: float | None) -> CallView:
        """``proxy.broadcast(timeout=2)``: how long to collect replies."""
        if not self._options.broadcast:
            raise TypeError("only a broadcast view takes a timeout this way: use set_timeout()")
        return self.set_timeout(timeout)

    def __getattr__(self, name: str) -> RemoteMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return RemoteMethod(self, name)

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` by name with these options."""
        return self._proxy._invoke(self._options, method, args, kwargs)


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
        return self._view.call(self._name, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<remote method {self._name!r}>"
