"""The server: registered methods, their lifecycle, and the handling of each request.

:class:`Server` serves from threads of its own (``start()``/``serve()``) or from an asyncio
application's loop (``await serve_async()``); :class:`AsyncServer` is the same server with an
awaited lifecycle (``async with``, ``await start()``, ``await stop()``, ``await serve()``).
"""

from .options import ServerOptions
from .server import AsyncServer, BaseServer, Server

__all__ = ["AsyncServer", "BaseServer", "Server", "ServerOptions"]
