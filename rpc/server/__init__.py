"""The server: registered methods, their lifecycle, and the handling of each request."""

from .options import ServerOptions
from .server import BaseServer, Server

__all__ = ["BaseServer", "Server", "ServerOptions"]
