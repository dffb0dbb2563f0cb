"""A Proxy dropped without close() is freed: its finalizer closes it, as an unclosed socket or
file is closed, with a ResourceWarning; its threads end and its connection closes. An AsyncProxy
dropped unclosed warns as an asyncio transport does; on kombu transports its bridge thread ends
and closes its connection."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import subprocess
import sys
import textwrap
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest
from kombu import Connection
from support import started_servers, wait_for

from rpc import AsyncProxy, Proxy, Server

pytestmark = pytest.mark.integration

WAIT = 10


class Held:
    """A method that holds its call until :attr:`gate` opens, and its own start."""

    def __init__(self) -> None:
        self.entered, self.gate = threading.Event(), threading.Event()

    def register(self, server: Server) -> None:
        def held(value: int) -> int:
            self.entered.set()
            self.gate.wait(WAIT)
            return value

        server.register_function(held, "held")


def services(server: Server) -> None:
    server.register_function(lambda a, b: a + b, "add")


@pytest.fixture(autouse=True, scope="module")
def collected_here() -> Iterator[None]:
    """What these tests drop is collected before the module ends. Collected later, inside the
    ``ast.parse`` of pytest's rewrite of a module imported at the session's end, it made
    CPython 3.11.7 fail with "AST constructor recursion depth mismatch" (an INTERNALERROR, and
    exit 1, after every test passed: seen with tests/test_link_close.py run after this)."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


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
    held = Held()
    with started_servers(stop_grace=5) as start:
        start(broker_url, server_id, register=held.register)
        proxy = Proxy(broker_url, server_id=server_id)
        proxy.callback(lambda r: (got.append(r), done.set()),
                       lambda e: (got.append(e), done.set())).held(7)
        ref = weakref.ref(proxy)
        del proxy
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
            assert ref() is not None  # the pending call holds it
            held.gate.set()
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


def test_an_open_proxy_on_the_memory_transport_keeps_no_reply_it_has_read(memory_server):
    with Proxy("memory://", server_id=memory_server) as proxy:
        assert [proxy.add(i, 1) for i in range(20)] == list(range(1, 21))
        assert proxy._link._messages == {}  # type: ignore[attr-defined]


# -- AsyncProxy: a warning as from an unclosed asyncio transport; memory://'s bridge thread ends --


def run(scenario: Callable[[], Any]) -> Any:
    return asyncio.run(asyncio.wait_for(scenario(), WAIT))


async def connected_async_proxy(server_id: str, **options: Any) -> AsyncProxy:
    proxy = AsyncProxy("memory://", server_id=server_id, **options)
    assert await proxy.add(1, 2) == 3
    return proxy


async def collected_async(ref: weakref.ref[Any]) -> list[warnings.WarningMessage]:
    """Collect, with the loop running, until ``ref`` is dead; yields the ResourceWarnings. A
    thread that just handed the loop a reply may hold it (the message names its link) for a
    moment more: one collection may come too soon."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        deadline = time.monotonic() + WAIT
        while gc.collect() >= 0 and ref() is not None:
            assert time.monotonic() < deadline, "the dropped proxy was not collected"
            await asyncio.sleep(0.01)
    return [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_a_dropped_async_proxy_on_the_memory_transport_is_collected_and_ends_its_bridge_thread(
        memory_server):
    async def scenario() -> threading.Thread:
        proxy = await connected_async_proxy(memory_server, timeout=None)  # no timer holds it
        bridge = proxy._link._reader  # type: ignore[union-attr]
        ref = weakref.ref(proxy)
        del proxy
        await collected_async(ref)  # while its loop runs
        return bridge

    bridge = run(scenario)
    bridge.join(WAIT)
    assert not bridge.is_alive()


def test_a_dropped_async_proxy_on_the_memory_transport_releases_its_connection(memory_server):
    async def scenario() -> Any:
        proxy = await connected_async_proxy(memory_server, timeout=None)
        conn = proxy._link._link._conn  # type: ignore[union-attr]
        assert conn.connected
        ref = weakref.ref(proxy)
        del proxy
        await collected_async(ref)
        return conn

    conn = run(scenario)
    wait_for(lambda: not conn.connected, timeout=WAIT, interval=0.05,
             message="the async proxy's kombu connection to be released")


def test_a_dropped_async_proxy_warns_that_it_was_not_closed(memory_server):
    async def scenario() -> list[warnings.WarningMessage]:
        proxy = await connected_async_proxy(memory_server, timeout=None)
        ref = weakref.ref(proxy)
        del proxy
        return await collected_async(ref)

    caught = run(scenario)
    assert [str(w.message) for w in caught] == [
        f"unclosed <AsyncProxy server_id={memory_server!r} memory:// connected>"]
    assert type(caught[0].source) is AsyncProxy


def test_a_closed_async_proxy_does_not_warn(memory_server):
    async def scenario() -> list[warnings.WarningMessage]:
        proxy = await connected_async_proxy(memory_server, timeout=None)
        await proxy.close()
        ref = weakref.ref(proxy)
        del proxy
        return await collected_async(ref)

    assert run(scenario) == []


def test_a_dropped_async_proxy_runs_its_pending_callbacks_before_it_is_collected(server_id):
    held = Held()

    async def scenario() -> list[Any]:
        got: list[Any] = []
        done = asyncio.Event()
        proxy = AsyncProxy("memory://", server_id=server_id, timeout=None)
        await proxy.connect()
        proxy.callback(lambda r: (got.append(r), done.set()),
                       lambda e: (got.append(e), done.set())).held(7)
        await asyncio.get_running_loop().run_in_executor(None, held.entered.wait, WAIT)
        ref = weakref.ref(proxy)
        del proxy
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
            assert ref() is not None  # the pending call holds it
        held.gate.set()
        await done.wait()
        await collected_async(ref)
        return got

    with started_servers(stop_grace=5) as start:
        start("memory://", server_id, register=held.register)
        assert run(scenario) == [7]


def test_an_async_proxy_left_open_when_its_loop_closed_is_collected_and_ends_its_bridge_thread(
        memory_server):
    async def scenario() -> tuple[weakref.ref[AsyncProxy], threading.Thread]:
        proxy = await connected_async_proxy(memory_server)  # its call's timer holds it meanwhile
        return weakref.ref(proxy), proxy._link._reader  # type: ignore[union-attr]

    ref, bridge = run(scenario)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        wait_for(lambda: gc.collect() >= 0 and ref() is None, timeout=WAIT, interval=0.01,
                 message="the proxy to be collected once its loop closed")
    bridge.join(WAIT)
    assert not bridge.is_alive()


def test_an_async_proxy_held_open_past_its_loop_ends_its_bridge_thread_quietly_on_a_message(
        memory_server, monkeypatch):
    unhandled: list[Any] = []
    monkeypatch.setattr(threading, "excepthook", unhandled.append)

    async def scenario() -> AsyncProxy:
        return await connected_async_proxy(memory_server, timeout=None)

    proxy = run(scenario)  # its loop is closed now, and the proxy still open
    bridge = proxy._link._reader  # type: ignore[union-attr]
    own = proxy._link._link._conn  # type: ignore[union-attr]
    with Connection("memory://") as conn:  # a late message for it: nowhere left to deliver it
        conn.Producer().publish(b"late", routing_key=proxy._reply_to)
    bridge.join(WAIT)
    assert not bridge.is_alive()
    assert unhandled == []
    assert not own.connected  # released by the thread: nobody else can any more


def test_an_async_proxy_left_open_at_interpreter_exit_warns_without_an_error():
    script = textwrap.dedent("""
        import asyncio
        import rpc

        async def main():
            global proxy
            proxy = await rpc.AsyncProxy("memory://", server_id="exit").connect()

        asyncio.run(main())
    """)
    result = subprocess.run([sys.executable, "-W", "always::ResourceWarning", "-c", script],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "unclosed <AsyncProxy server_id='exit' memory:// connected>" in result.stderr
    assert "Exception ignored" not in result.stderr and "Traceback" not in result.stderr
