"""What a handler can know about the call it is running, and context that travels with calls.

A proxy used inside a handler propagates the handler's context and extends its call stack, so a
chain of services can be traced back to the call that started it (as nameko's call id stack).
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import Cancelled

#: What publishes a handler's progress report: ``(done, total, message)``.
ProgressReporter = Callable[[float, "float | None", str], None]

#: Header carrying the caller's context: a table of small values.
CONTEXT_HEADER = "rpc-context"
#: Header carrying the ids of the calls that led to this one, outermost first.
CALL_STACK_HEADER = "rpc-call-stack"
#: Longest call stack kept; deeper chains keep their most recent entries.
MAX_CALL_STACK = 64

#: Guards the lazy creation of a :class:`CancelledFlag`'s condition.
_CONDITION_LOCK = threading.Lock()


class CancelledFlag(threading.Event):
    """A :class:`threading.Event` that builds its condition only when set or waited on.

    Every call a server runs has one, and few are ever cancelled or waited on: building the
    condition of a plain Event cost a server more than any other single step of a call.
    """

    def __init__(self) -> None:  # no super().__init__(): that builds the condition
        self._flag = False
        self._cond: threading.Condition | None = None

    def _condition(self) -> threading.Condition:
        cond = self._cond
        if cond is None:
            with _CONDITION_LOCK:
                cond = self._cond
                if cond is None:
                    cond = self._cond = threading.Condition(threading.Lock())
        return cond

    def set(self) -> None:
        cond = self._condition()
        with cond:
            self._flag = True
            cond.notify_all()

    def clear(self) -> None:
        with self._condition():
            self._flag = False

    def wait(self, timeout: float | None = None) -> bool:
        if self._flag:
            return True
        cond = self._condition()
        with cond:
            if not self._flag:
                cond.wait(timeout)
            return self._flag


@dataclass(frozen=True, slots=True)
class CallInfo:
    """The call a handler is running: returned by :func:`current_call`."""

    server_id: str
    method: str
    correlation_id: str | None
    message_id: str | None
    deadline: float | None
    redelivered: bool
    user_id: str | None
    context: dict[str, Any] = field(default_factory=dict)
    call_stack: tuple[str, ...] = ()
    #: Every header of the request (trace context, the caller's own headers).
    headers: dict[str, Any] = field(default_factory=dict)
    #: Set when the caller cancels the call (protocol v1.1): a long handler may watch it.
    cancelled: threading.Event = field(default_factory=CancelledFlag, compare=False)
    #: Publishes progress to the caller; None when the request asked for no keep-alives (the
    #: server wires it in; ``progress()`` is then a no-op).
    reporter: ProgressReporter | None = field(default=None, compare=False, repr=False)

    def check_cancelled(self) -> None:
        """Raise :class:`rpc.Cancelled` if the caller has cancelled this call.

        Raises:
            rpc.Cancelled: the caller cancelled.
        """
        if self.cancelled.is_set():
            raise Cancelled(f"{self.method}() was cancelled by its caller")

    def progress(self, done: float, total: float | None = None, message: str = "") -> None:
        """Tell the caller how far the call has got (at most ten reports a second reach it;
        the latest goes before the reply). A no-op when the caller asked for no keep-alives."""
        if self.reporter is not None:
            self.reporter(done, total, message)

    @property
    def call_id(self) -> str:
        """This call's entry in the call stacks of the calls it makes."""
        return f"{self.server_id}.{self.method}.{self.correlation_id or '-'}"


class _Current:
    """The running handler's call: its :class:`CallInfo`, or how to make it on first use. Most
    handlers never ask, and building the info cost a server more than any other single step of
    a plain call."""

    __slots__ = ("info", "make")

    def __init__(self, info: CallInfo | None, make: Callable[[], CallInfo] | None) -> None:
        self.info = info
        self.make = make

    def get(self) -> CallInfo:
        info = self.info
        if info is None:
            assert self.make is not None
            info = self.info = self.make()
        return info


_current: contextvars.ContextVar[_Current | None] = contextvars.ContextVar(
    "rpc_current_call", default=None
)


def current_call() -> CallInfo | None:
    """The call the running handler serves, or None outside a handler."""
    current = _current.get()
    return None if current is None else current.get()


def enter(info: CallInfo | Callable[[], CallInfo]) -> contextvars.Token[_Current | None]:
    """Make ``info`` the current call (on the worker that runs it); given a function, the info
    is what it returns, made when first asked for."""
    if isinstance(info, CallInfo):
        return _current.set(_Current(info, None))
    return _current.set(_Current(None, info))


def leave(token: contextvars.Token[_Current | None]) -> None:
    _current.reset(token)


def outgoing_headers(explicit: dict[str, Any] | None) -> dict[str, Any]:
    """Context headers for a call made now: the current call's context, then ``explicit``."""
    current = _current.get()
    parent = None if current is None else current.get()
    headers: dict[str, Any] = {}
    context = dict(parent.context) if parent is not None else {}
    if explicit:
        context.update(explicit)
    if context:
        headers[CONTEXT_HEADER] = context
    if parent is not None:
        headers[CALL_STACK_HEADER] = [*parent.call_stack, parent.call_id][-MAX_CALL_STACK:]
    return headers


def incoming(headers: dict[str, Any] | None) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The context and call stack a request carries; malformed values count as absent."""
    if not headers:
        return {}, ()
    context = headers.get(CONTEXT_HEADER)
    stack = headers.get(CALL_STACK_HEADER)
    return (
        dict(context) if isinstance(context, dict) else {},
        tuple(str(s) for s in stack[-MAX_CALL_STACK:]) if isinstance(stack, list) else (),
    )
