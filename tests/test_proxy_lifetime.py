"""A Proxy dropped without close() is freed: its finalizer closes it, as an unclosed socket or
file is closed, with a ResourceWarning; its threads end and its connection closes."""

from __future__ import annotations

import contextlib
import gc
import subprocess
import sys
import textwrap
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest
from support import started_servers, wait_for

from rpc import Proxy, Server

pytestmark = pytest.mark.integration

WAIT = 10


def services(server: Server) -> None:
    server.register_function(lambda a, b: a + b, "add")


@pytest.fixture
def open_proxy(broker_url: str, server_id: str) -> Iterator[Callable[[], Proxy]]:
    """Open proxies to a running server; the test drops them instead of closing them."""
    with started_servers(stop_grace=5) as start:
        start(broker_url, server_id, register=services)
        yield lambda: Proxy(broker_url, server_id=server_id)


def proxy_threads(server_id: str) -> list[str]:
    return [t.name for t in threading.enumerate()
            if t.name in (f"rpc-proxy-io-{server_id}", f"rpc-proxy-callbacks-{server_id}")]


def connected(local_port: int) -> bool:
    """Whether this process still has a TCP connection from ``local_port``."""
    return any(c.laddr and c.laddr.port == local_port
               for c in psutil.Process().net_connections("tcp"))


@contextlib.contextmanager
def collected() -> Iterator[list[warnings.WarningMessage]]:
    """A collection at the end of the block (which drops a proxy), and none before it; yields
    the ResourceWarnings it gives."""
    gc.disable()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            found: list[warnings.WarningMessage] = []
            yield found
            gc.collect()
        found.extend(w for w in caught if issubclass(w.category, ResourceWarning))
    finally:
        gc.enable()


def test_a_dropped_proxy_closes_its_connection_and_threads(open_proxy, server_id):
    proxy = open_proxy()
    assert proxy.add(1, 2) == 3
    port = proxy._link._sock.getsockname()[1]  # type: ignore[attr-defined]
    assert len(proxy_threads(server_id)) == 2 and connected(port)
    ref = weakref.ref(proxy)
    with collected():
        del proxy
    assert ref() is None
    wait_for(lambda: not proxy_threads(server_id), timeout=WAIT, interval=0.05,
             message="the proxy's threads to end")
    wait_for(lambda: not connected(port), timeout=WAIT, interval=0.05,
             message="the proxy's connection to close")


def test_a_dropped_proxy_warns_that_it_was_not_closed(open_proxy, server_id):
    proxy = open_proxy()
    with collected() as caught:
        del proxy
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith(f"unclosed <Proxy server_id={server_id!r} amqp://guest:**@")
    assert message.endswith(" open>")
    assert type(caught[0].source) is Proxy


def test_a_closed_proxy_does_not_warn(open_proxy):
    proxy = open_proxy()
    assert proxy.add(1, 2) == 3
    proxy.close()
    ref = weakref.ref(proxy)
    with collected() as caught:
        del proxy
    assert ref() is None and caught == []


def test_a_dropped_proxy_closes_its_connection_before_its_socket_is_collected(
        open_proxy, server_id):
    proxy = open_proxy()
    gate = threading.Event()
    proxy._jobs.put(lambda: gate.wait(WAIT))  # the close waits on the callback thread meanwhile
    try:
        with collected() as caught:
            del proxy
    finally:
        gate.set()
    # The socket outlived the collection, so it did not warn; the proxy's close closed it.
    assert [str(w.message).split(" ", 2)[:2] for w in caught] == [["unclosed", "<Proxy"]]
    wait_for(lambda: not proxy_threads(server_id), timeout=WAIT, interval=0.05,
             message="the proxy's threads to end")


def test_a_dropped_proxy_runs_its_pending_callbacks_before_it_closes(
        broker_url, server_id):
    got: list[Any] = []
    done = threading.Event()
    gate = threading.Event()

    def held(value: int) -> int:
        gate.wait(WAIT)
        return value

    with started_servers(stop_grace=5) as start:
        start(broker_url, server_id, register=lambda s: s.register_function(held, "held"))
        proxy = Proxy(broker_url, server_id=server_id)
        proxy.callback(lambda r: (got.append(r), done.set()),
                       lambda e: (got.append(e), done.set())).held(7)
        ref = weakref.ref(proxy)
        del proxy
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
            assert ref() is not None  # the pending call holds it
            gate.set()
            assert done.wait(WAIT)
            assert got == [7]
            wait_for(lambda: gc.collect() >= 0 and ref() is None, timeout=WAIT, interval=0.05,
                     message="the proxy to be collected once its call ended")
        wait_for(lambda: not proxy_threads(server_id), timeout=WAIT, interval=0.05,
                 message="the proxy's threads to end")


def test_a_proxy_collected_on_its_own_callback_thread_closes_itself(open_proxy, server_id):
    proxy = open_proxy()
    dropped, collected = threading.Event(), threading.Event()

    def collect() -> None:
        dropped.wait(WAIT)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
        collected.set()

    ref = weakref.ref(proxy)
    gc.disable()  # the collection happens there, not on this thread
    try:
        proxy._jobs.put(collect)
        del proxy
        dropped.set()
        assert collected.wait(WAIT)
    finally:
        gc.enable()
    assert ref() is None
    wait_for(lambda: not proxy_threads(server_id), timeout=WAIT, interval=0.05,
             message="the proxy's threads to end")


def test_a_proxy_left_open_at_interpreter_exit_warns_without_an_error(broker_url, server_id):
    script = textwrap.dedent(f"""
        import rpc
        proxy = rpc.Proxy({broker_url!r}, server_id={server_id!r})
    """)
    result = subprocess.run([sys.executable, "-W", "always::ResourceWarning", "-c", script],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "unclosed <Proxy" in result.stderr
    assert "Exception ignored" not in result.stderr and "Traceback" not in result.stderr


# -- kombu transports (memory://), whose consumers stay reachable while their channel is open --


@pytest.fixture
def memory_server(server_id: str) -> Iterator[str]:
    """A server on memory:// in this process; yields its id."""
    with started_servers(stop_grace=5) as start:
        start("memory://", server_id, register=services)
        yield server_id


def test_a_dropped_proxy_on_the_memory_transport_is_collected_and_its_threads_end(memory_server):
    proxy = Proxy("memory://", server_id=memory_server)
    assert proxy.add(1, 2) == 3
    ref = weakref.ref(proxy)
    with collected():
        del proxy
    assert ref() is None
    wait_for(lambda: not proxy_threads(memory_server), timeout=WAIT, interval=0.05,
             message="the proxy's threads to end")


def test_a_dropped_proxy_on_the_memory_transport_releases_its_connection(memory_server):
    proxy = Proxy("memory://", server_id=memory_server)
    assert proxy.add(1, 2) == 3
    conn = proxy._link._conn  # type: ignore[attr-defined]
    assert conn.connected
    with collected():
        del proxy
    wait_for(lambda: not conn.connected, timeout=WAIT, interval=0.05,
             message="the proxy's kombu connection to be released")
