"""Helpers the conftest files share: bounded polling, and servers and proxies that a test opens
and its teardown stops, so that no test leaves a consumer or a connection behind.

Imported as ``from support import ...`` (``tests/`` is on ``sys.path``, as for ``cli_support``);
each suite keeps its own defaults (heartbeat, wait bound, polling interval) in its conftest.
"""

from __future__ import annotations

import base64
import contextlib
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rpc import Proxy, Server


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float,
             message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy, and return that; fail the test
    after ``timeout`` s, so that what never happens fails the test instead of hanging it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


@contextlib.contextmanager
def started_servers(*, stop_grace: float, ignore_stop_errors: bool = False,
                    **defaults: Any) -> Iterator[Callable[..., Server]]:
    """Yield ``start(url, server_id, *, register=None, **options)``, which starts a Server with
    ``defaults`` under ``options`` (``register(server)`` exposes its functions first); on exit
    each one is stopped with ``stop_grace``. ``ignore_stop_errors``: for servers whose broker
    node a test took down, which may not stop cleanly."""
    started: list[Server] = []

    def start(url: Any, server_id: str, *, register: Callable[[Server], Any] | None = None,
              **options: Any) -> Server:
        server = Server(url, server_id=server_id, **{**defaults, **options})
        if register is not None:
            register(server)
        server.start()
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            with contextlib.suppress(Exception) if ignore_stop_errors else contextlib.nullcontext():
                server.stop(grace=stop_grace)


@contextlib.contextmanager
def opened_proxies(*, ignore_close_errors: bool = False,
                   **defaults: Any) -> Iterator[Callable[..., Proxy]]:
    """Yield ``open_proxy(url, server_id, **options)``, which opens a Proxy with ``defaults``
    under ``options``; on exit each one is closed (``ignore_close_errors`` as for servers)."""
    opened: list[Proxy] = []

    def open_proxy(url: Any, server_id: str, **options: Any) -> Proxy:
        proxy = Proxy(url, server_id=server_id, **{**defaults, **options})
        opened.append(proxy)
        return proxy

    try:
        yield open_proxy
    finally:
        for proxy in opened:
            with contextlib.suppress(Exception) if ignore_close_errors else contextlib.nullcontext():
                proxy.close()


def pid_address(node: str, ident: int, creation: int) -> str:
    """A direct reply-to address as RabbitMQ writes one: the pid of a channel of ``node``
    (in its lifetime ``creation``), then a key."""
    term = (bytes([131, 88, 118]) + struct.pack(">H", len(node)) + node.encode()
            + struct.pack(">III", ident, 0, creation))
    return f"amq.rabbitmq.reply-to.{base64.b64encode(term).decode()}.key"


class Gate:
    """A handler, :meth:`hold`, that notes its argument and returns it once the test opens the
    gate (or ``wait`` seconds pass): calls that stay running while a test fills a queue."""

    def __init__(self, wait: float) -> None:
        self.started: list[Any] = []
        self._open = threading.Event()
        self._wait = wait

    def hold(self, n: Any) -> Any:
        self.started.append(n)
        self._open.wait(self._wait)
        return n

    def open(self) -> None:
        self._open.set()
