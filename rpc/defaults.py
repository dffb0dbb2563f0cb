"""Defaults shared across layers, in one place: each is used by more than one module, or by the
library and the command alike."""

#: Largest message body a server or proxy accepts unless told otherwise (RabbitMQ 4 uses 16 MiB).
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
#: AMQP heartbeat interval, in seconds.
DEFAULT_HEARTBEAT = 10.0
#: Seconds a proxy keeps retrying an unreachable broker (a caller should hear soon).
DEFAULT_CONNECT_RETRY = 3.0
#: Seconds a server keeps retrying at start (it has nothing better to do).
SERVER_CONNECT_RETRY = 10.0
#: Seconds a stopping server lets calls in flight finish.
DEFAULT_GRACE = 30.0
#: Seconds a call waits for its reply unless told otherwise (oslo.messaging's default).
DEFAULT_TIMEOUT = 60.0
#: Seconds a broadcast collects replies unless told otherwise.
BROADCAST_TIMEOUT = 1.0
#: ``async def`` handler calls a server runs at once on its event loop.
DEFAULT_ASYNC_CONCURRENCY = 100
#: Stream items a caller lets a server send ahead of what it has consumed (protocol v1.1).
DEFAULT_STREAM_WINDOW = 100
#: Seconds between the keep-alives a long call's server sends; three missed fail the call.
DEFAULT_KEEPALIVE = 5.0
