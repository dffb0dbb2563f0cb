"""``rpc demo``: every calling style, against a server in this process, with no broker.

kombu's ``memory://`` transport carries the messages, so the demo runs anywhere in a second or
two; against RabbitMQ the same code needs only a different URL.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..client.proxy import Proxy
from ..core.calls import CallbackState
from ..server.server import Server

URL = "memory://"
SERVER_ID = "demo"


class Stats:
    """An instance: each public method is served as ``stats.<name>``."""

    def mean(self, values: list[float]) -> float:
        """Arithmetic mean of the values."""
        return sum(values) / len(values)

    def spread(self, values: list[float]) -> float:
        """Largest minus smallest value."""
        return max(values) - min(values)


def build_server() -> Server:
    """The demo's server: two functions, a slow one, and an instance."""
    server = Server(URL, server_id=SERVER_ID, send_tracebacks=True, concurrency=4)

    @server.expose
    def add(a: float, b: float) -> float:
        """Add two numbers."""
        return a + b

    @server.expose
    def divide(a: float, b: float) -> float:
        """Divide a by b (try b=0 for a remote error)."""
        return a / b

    @server.expose
    def slow_square(x: float, seconds: float = 0.2) -> float:
        """Square x after sleeping, to show timeouts and asynchronous calls."""
        time.sleep(seconds)
        return x * x

    server.register_instance(Stats(), "stats")
    return server


def run(echo: Callable[[str], object] = print) -> None:
    """Start the server, make one call of each style, stop the server."""
    server = build_server()
    server.start()
    try:
        with Proxy(URL, server_id=SERVER_ID, timeout=5) as proxy:
            _tour(proxy, echo)
    finally:
        server.stop(grace=2)


def _tour(proxy: Proxy, echo: Callable[[str], object]) -> None:
    def show(label: str, code: str, outcome: object) -> None:
        echo(f"{label:<18} {code:<44} -> {outcome}")

    echo(f"rpc demo: server {SERVER_ID!r} and a proxy in one process, over {URL} (no broker)\n")
    show("synchronous", "proxy.add(2, 3)", proxy.add(2, 3))
    show("instance method", "proxy.stats.mean([1, 2, 3, 4])", proxy.stats.mean([1, 2, 3, 4]))

    future = proxy.future.slow_square(7)
    show("future", "proxy.future.slow_square(7)", f"{type(future).__name__}, running")
    show("", "future.result()", future.result(timeout=5))

    done = threading.Event()
    results: list[object] = []

    def on_success(value: object) -> None:
        results.append(value)
        done.set()

    uid = proxy.callback(on_success, print).slow_square(9)
    show("callback", "proxy.callback(on_ok, on_err).slow_square(9)", f"uid {uid}")
    show("", "proxy.get_callback_state(uid)", proxy.get_callback_state(uid).name)
    done.wait(5)
    _wait_finished(proxy, uid)
    show("", "on_ok received", results[0] if results else "nothing (timed out)")
    show("", "proxy.get_callback_state(uid)", proxy.get_callback_state(uid).name)

    try:
        proxy.set_timeout(0.1).slow_square(3, seconds=0.5)
    except Exception as exc:
        show("timeout", "proxy.set_timeout(0.1).slow_square(3, 0.5)",
             f"{type(exc).__name__}: {exc}")

    try:
        proxy.divide(1, 0)
    except ZeroDivisionError as exc:
        show("remote error", "proxy.divide(1, 0)", f"{type(exc).__name__}: {exc}")
        tb = getattr(exc, "remote_traceback", "").rstrip().splitlines()
        echo(f"{'':<18} remote traceback, last lines:")
        for line in tb[-3:]:
            echo(f"{'':<18}   {line}")

    names = proxy.call("system.list_methods")
    show("introspection", 'proxy.call("system.list_methods")', ", ".join(names))
    echo("\nRun a real server with: rpc serve examples.calc:server  (see rpc --help)")


def _wait_finished(proxy: Proxy, uid: str) -> None:
    """The callback returned; its state turns FINISHED right after, on the callback thread."""
    deadline = time.monotonic() + 2
    while proxy.get_callback_state(uid) != CallbackState.FINISHED and time.monotonic() < deadline:
        time.sleep(0.01)
