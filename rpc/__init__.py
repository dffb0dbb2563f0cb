"""rpc: remote procedure calls over AMQP (RabbitMQ first), on kombu.

Register functions and instances on a :class:`Server`; call them through a :class:`Proxy`
synchronously, with callbacks, with timeouts or as futures. See README.md and docs/protocol.md.
"""

from __future__ import annotations

import logging

from .calls import CallbackState
from .context import CallInfo, current_call
from .errors import (
    AccessRefused,
    BadRequest,
    BrokerBlocked,
    ConnectionError,
    ConnectionLost,
    InvalidArguments,
    MethodNotFound,
    Refused,
    RemoteError,
    RPCError,
    RPCTimeout,
    SerializationError,
    ServerUnavailable,
    UnknownServer,
    register_exception,
)
from .proxy import BroadcastReply, Proxy
from .serialization import register_serializer
from .server import Server

__version__ = "0.1.0"

__all__ = [
    "AccessRefused",
    "BadRequest",
    "BroadcastReply",
    "BrokerBlocked",
    "CallInfo",
    "CallbackState",
    "ConnectionError",
    "ConnectionLost",
    "InvalidArguments",
    "MethodNotFound",
    "Proxy",
    "RPCError",
    "RPCTimeout",
    "Refused",
    "RemoteError",
    "SerializationError",
    "Server",
    "ServerUnavailable",
    "UnknownServer",
    "__version__",
    "current_call",
    "register_exception",
    "register_serializer",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
