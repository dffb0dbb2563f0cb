"""The exception tree and the mapping between exceptions and the wire's error envelope.

::

    RPCError
    ├── ConnectionError        also builtins.ConnectionError: broker unreachable or refused
    │   ├── AccessRefused      refused credentials, vhost or permission
    │   ├── ConnectionLost     the connection dropped while the call was pending
    │   │   └── ServerLost     the server running a long call stopped sending keep-alives
    │   └── BrokerBlocked      the broker blocks publishing (a resource alarm)
    ├── Refused                the broker nacked the request (publisher confirms)
    ├── Cancelled              the call was cancelled (also a concurrent.futures.CancelledError)
    ├── RPCTimeout             also builtins.TimeoutError: no reply within the call's timeout
    ├── UnknownServer          the broker returned the request: no queue for that server_id
    │   └── ServerUnavailable  the queue exists but no server consumes it
    ├── RemoteError            the remote side raised a type this side will not rebuild
    ├── MethodNotFound         (remote) unknown, private or unreachable method name
    ├── InvalidArguments       (remote) arguments do not bind to the signature; also a TypeError
    ├── BadRequest             (remote) undecodable, malformed or refused request; also a ValueError
    └── SerializationError     a value could not be encoded; also a ValueError

Rebuilding an exception from the wire never imports anything: a ``type`` is looked up among the
builtin ``Exception`` subclasses, the framework's own errors and the classes registered with
:func:`register_exception`, and nothing else.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import traceback
from typing import Any, TypeVar

#: Longest message and traceback text kept from a remote error; longer text is cut.
MAX_MESSAGE_CHARS = 8_192
MAX_TRACEBACK_CHARS = 32_768

_E = TypeVar("_E", bound=type[BaseException])


class RPCError(Exception):
    """Base class of every error this package raises."""


class ConnectionError(RPCError, builtins.ConnectionError):  # noqa: A001 - the public name is deliberate
    """The broker could not be reached, refused the credentials, or the connection failed."""


class AccessRefused(ConnectionError):
    """The broker refused the credentials, the vhost or a permission: retrying will not help."""


class ConnectionLost(ConnectionError):
    """The connection dropped while the call was pending; its reply can never arrive."""

    def __init__(self, *args: object, code: int | None = None) -> None:
        super().__init__(*args)
        #: The AMQP reply code when the broker closed the connection or channel, else None.
        self.code = code


class ServerLost(ConnectionLost):
    """The server running a long call fell silent: its keep-alives stopped (protocol v1.1); or
    the server running a stream lost its connection, and the stream started again elsewhere."""


class Cancelled(RPCError, concurrent.futures.CancelledError):
    """The call was cancelled: by its caller, or a handler's ``check_cancelled()`` found it so."""


class BrokerBlocked(ConnectionError):
    """The broker has blocked publishing (a memory or disk alarm); the request was not sent."""


class Refused(RPCError):
    """The broker did not accept the request (a negative publisher confirm)."""


class RPCTimeout(RPCError, TimeoutError):
    """No reply arrived within the call's timeout."""


class UnknownServer(RPCError):
    """The broker returned the request as unroutable: no server has declared that server_id."""


class ServerUnavailable(UnknownServer):
    """The server's queue exists but no server consumes it (all stopped, or restarting).

    Raised at once unless the call asked to wait (``wait_for_ready``); the request was not sent.
    """


class MethodNotFound(RPCError):
    """The server has no public method of that name."""


class InvalidArguments(RPCError, TypeError):
    """The arguments do not bind to the method's signature (checked before the call)."""


class BadRequest(RPCError, ValueError):
    """The request could not be decoded, had the wrong shape, or used a refused content type."""


class SerializationError(RPCError, ValueError):
    """A value (arguments, result or error) could not be encoded with the chosen serializer."""


class RemoteError(RPCError):
    """The remote side raised an exception of a type this side does not rebuild.

    Attributes:
        remote_type: the type as named on the wire (``"module.QualName"`` or a builtin name).
        remote_args: the exception's arguments as sent.
        remote_traceback: the server's formatted traceback, empty unless the server sends them.
    """

    def __init__(
        self,
        remote_type: str,
        message: str,
        remote_args: list[Any] | tuple[Any, ...] = (),
        remote_traceback: str = "",
    ) -> None:
        super().__init__(f"{remote_type}: {message}" if message else remote_type)
        self.remote_type = remote_type
        self.remote_message = message
        self.remote_args = tuple(remote_args)
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            type(self),
            (self.remote_type, self.remote_message, self.remote_args, self.remote_traceback),
            self.__dict__,
        )


_FRAMEWORK_ERRORS: dict[str, type[BaseException]] = {
    f"rpc.{cls.__name__}": cls
    for cls in (
        RPCError,
        ConnectionError,
        AccessRefused,
        ConnectionLost,
        ServerLost,
        Cancelled,
        BrokerBlocked,
        Refused,
        RPCTimeout,
        UnknownServer,
        ServerUnavailable,
        MethodNotFound,
        InvalidArguments,
        BadRequest,
        SerializationError,
    )
}
_REGISTERED: dict[str, type[BaseException]] = {}


def register_exception(cls: _E) -> _E:
    """Let ``cls`` come back from a server as itself under JSON and msgpack.

    Register the class on both sides; it is matched by its ``module.QualName`` and rebuilt as
    ``cls(*args)``. Usable as a class decorator.

    Raises:
        TypeError: if ``cls`` is not an ``Exception`` subclass.
    """
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        raise TypeError(f"register_exception() takes an Exception subclass, not {cls!r}")
    _REGISTERED[type_name(cls)] = cls
    return cls


def type_name(cls: type[BaseException]) -> str:
    """Name a type on the wire: bare for builtins, ``rpc.X`` for ours, ``module.QualName`` else."""
    module = cls.__module__
    if module == "builtins":
        return cls.__qualname__
    if module.startswith("rpc.") and (cls in _FRAMEWORK_ERRORS.values() or cls is RemoteError):
        return f"rpc.{cls.__qualname__}"
    return f"{module}.{cls.__qualname__}"


def _lookup(name: str) -> type[BaseException] | None:
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in _FRAMEWORK_ERRORS:
        return _FRAMEWORK_ERRORS[name]
    if "." not in name:
        candidate = getattr(builtins, name, None)
        if isinstance(candidate, type) and issubclass(candidate, Exception):
            return candidate
    return None


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"... [{len(text) - limit} characters cut]"


def error_payload(exc: BaseException, *, include_traceback: bool) -> dict[str, Any]:
    """Describe ``exc`` as the ``error`` member of a reply body (without encoding it)."""
    tb = ""
    if include_traceback:
        tb = _clip("".join(traceback.format_exception(exc)), MAX_TRACEBACK_CHARS)
    try:
        message = str(exc)
    except Exception:
        message = f"<{type(exc).__name__}.__str__ failed>"
    return {
        "type": type_name(type(exc)),
        "message": _clip(message, MAX_MESSAGE_CHARS),
        "args": list(exc.args),
        "traceback": tb,
    }


def safe_args(args: list[Any]) -> list[Any]:
    """Fall back to ``repr`` for each argument a plain serializer could not carry."""
    return [a if isinstance(a, (str, int, float, bool, type(None))) else repr(a) for a in args]


def rebuild_exception(error: Any) -> Exception:
    """Turn the ``error`` member of a reply into an exception to raise on the calling side.

    A malformed member becomes a :class:`RemoteError`: the caller always gets an ``Exception``,
    never ``SystemExit`` or ``KeyboardInterrupt``.
    """
    if isinstance(error, BaseException):
        return _rebuild_instance(error)
    if not isinstance(error, dict):
        return RemoteError("rpc.MalformedReply", _clip(repr(error), MAX_MESSAGE_CHARS))
    name = error.get("type")
    name = name if isinstance(name, str) else "unknown"
    message = error.get("message")
    message = _clip(message, MAX_MESSAGE_CHARS) if isinstance(message, str) else ""
    args = error.get("args")
    args = list(args) if isinstance(args, (list, tuple)) else [message]
    tb = error.get("traceback")
    tb = _clip(tb, MAX_TRACEBACK_CHARS) if isinstance(tb, str) else ""
    instance = error.get("instance")
    if isinstance(instance, Exception):
        return _attach_traceback(instance, tb)
    cls = _lookup(name)
    exc: Exception
    if cls is None:
        exc = RemoteError(name, message, args, tb)
    else:
        try:
            built = cls(*(_clip(a, MAX_MESSAGE_CHARS) if isinstance(a, str) else a for a in args))
        except Exception:
            built = RemoteError(name, message, args, tb)
        exc = built if isinstance(built, Exception) else RemoteError(name, message, args, tb)
    return _attach_traceback(exc, tb)


def _rebuild_instance(exc: BaseException) -> Exception:
    if isinstance(exc, Exception):
        return exc
    return RemoteError(type_name(type(exc)), _clip(str(exc), MAX_MESSAGE_CHARS), exc.args)


def _attach_traceback(exc: Exception, tb: str) -> Exception:
    exc.remote_traceback = tb  # type: ignore[attr-defined]
    if tb:
        exc.add_note("Remote traceback (most recent call last):\n" + tb)
    return exc
