"""Built-in ``system.*`` methods every server answers unless turned off (XML-RPC tradition)."""

from __future__ import annotations

import inspect
import os
import socket
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import BaseServer


class SystemMethods:
    """Introspection of one server: registered as its ``system`` instance."""

    def __init__(self, server: BaseServer) -> None:
        self._server = server
        self._started = time.time()

    def list_methods(self) -> list[str]:
        """Names of every method this server answers, sorted."""
        return self._server.registry.names()

    def method_help(self, name: str) -> str:
        """The docstring of ``name`` (empty when it has none)."""
        return inspect.getdoc(self._server.registry.resolve(name).func) or ""

    def method_signature(self, name: str) -> str:
        """The signature of ``name``, such as ``(a, b=2)``; empty when it cannot be read."""
        signature = self._server.registry.resolve(name).signature
        return "" if signature is None else str(signature)

    def ping(self) -> dict[str, Any]:
        """Who answered: server id, host, pid and uptime in seconds."""
        return {
            "server_id": self._server.server_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "uptime": round(time.time() - self._started, 3),
        }

    def stats(self) -> dict[str, Any]:
        """This server's health and load: the same figures as ``Server.status()``.

        server_id, host, pid, uptime (s), node (the broker host:port it is connected to),
        calls, errors, in_flight, p50_ms, p99_ms and queue_depth (None when unknown).
        ``in_flight`` leaves out this very call.
        """
        status = self._server.status()
        if isinstance(status.get("in_flight"), int):
            status["in_flight"] = max(status["in_flight"] - 1, 0)
        return status
