"""rpc: remote procedure calls over AMQP (RabbitMQ first), on kombu.

Register functions and instances on a :class:`Server`; call them through a :class:`Proxy`
synchronously, with callbacks, with timeouts or as futures, or await them on an
:class:`AsyncProxy`; :class:`AsyncServer` serves inside an application's event loop. See
README.md and docs/protocol.md.
"""

from __future__ import annotations

import logging

from .client import AsyncProxy, BroadcastReply, Proxy
from .core.calls import CallbackState
from .core.context import CallInfo, current_call
from .core.errors import (
    AccessRefused,
    BadRequest,
    BrokerBlocked,
    Cancelled,
    ConnectionError,
    ConnectionLost,
    InvalidArguments,
    MethodNotFound,
    Refused,
    RemoteError,
    RPCError,
    RPCTimeout,
    SerializationError,
    ServerLost,
    ServerUnavailable,
    UnknownServer,
    register_exception,
)
from .core.protocol import Progress
from .core.serialization import register_serializer
from .server import AsyncServer, Server

__version__ = "0.1.0"

__all__ = [
    "AccessRefused",
    "AsyncProxy",
    "AsyncServer",
    "BadRequest",
    "BroadcastReply",
    "BrokerBlocked",
    "Cancelled",
    "CallInfo",
    "CallbackState",
    "ConnectionError",
    "ConnectionLost",
    "InvalidArguments",
    "MethodNotFound",
    "Progress",
    "Proxy",
    "RPCError",
    "RPCTimeout",
    "Refused",
    "RemoteError",
    "SerializationError",
    "Server",
    "ServerLost",
    "ServerUnavailable",
    "UnknownServer",
    "__version__",
    "current_call",
    "register_exception",
    "register_serializer",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
