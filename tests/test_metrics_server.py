"""Metrics end to end on the real broker: a Server's /metrics and probes, and a Proxy's metrics.

The contract tested here: ``Server(..., metrics_port=P, metrics_host=H)`` serves a
:class:`rpc.metrics.MetricsServer` from start() until stop(), its bound address in
``server.metrics_address``; /readyz is 200 while consuming and 503 while the broker connection is
down. ``Proxy(..., metrics=True)`` records its calls in prometheus_client's default registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import queue
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from faults.tcpproxy import TCPProxy
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from support import started_servers

from rpc import (
    AsyncProxy,
    Cancelled,
    ConnectionError,
    MethodNotFound,
    Proxy,
    RPCError,
    RPCTimeout,
    SerializationError,
    Server,
    ServerUnavailable,
    UnknownServer,
)
from rpc.metrics import MetricsServer

pytestmark = pytest.mark.integration

WAIT = 20.0


def wait_for(predicate: Callable[[], Any], timeout: float = WAIT, message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {message}")
        time.sleep(0.05)
    return value


def get(address: tuple[str, int], path: str) -> tuple[int, str]:
    host, port = address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


def sample(address: tuple[str, int], name: str, **labels: str) -> float:
    """The sum of the scraped samples ``name`` whose labels include ``labels`` (0 if none)."""
    status, body = get(address, "/metrics")
    assert status == 200
    return sum(s.value for family in text_string_to_metric_families(body) for s in family.samples
               if s.name == name and labels.items() <= s.labels.items())


def register(server: Server) -> None:
    @server.expose
    def add(a: int, b: int) -> int:
        return a + b

    @server.expose
    def div(a: int, b: int) -> float:
        return a / b

    @server.expose
    def slow(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @server.expose
    def count(n: int) -> Iterator[int]:
        yield from range(n)

    @server.expose
    def count_then_fail(n: int) -> Iterator[int]:
        yield from range(n)
        raise ValueError("no more")


@pytest.fixture
def servers() -> Iterator[Callable[..., Server]]:
    """Start servers with a metrics endpoint on a free loopback port; each stops after the test."""
    started: list[Server] = []

    def start(url: str, server_id: str, **options: Any) -> Server:
        options.setdefault("heartbeat", 1.0)
        server = Server(url, server_id=server_id, metrics_port=0, metrics_host="127.0.0.1", **options)
        register(server)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(grace=2)


@pytest.fixture
def proxies() -> Iterator[Callable[..., Proxy]]:
    opened: list[Proxy] = []

    def open_proxy(url: str, server_id: str, **options: Any) -> Proxy:
        proxy = Proxy(url, server_id=server_id, **options)
        opened.append(proxy)
        return proxy

    yield open_proxy
    for proxy in opened:
        proxy.close()


def test_scraped_counters_follow_the_calls_and_their_outcomes(servers, proxies, broker_url, server_id):
    server = servers(broker_url, server_id)
    proxy = proxies(broker_url, server_id)
    address = server.metrics_address
    assert address[0] == "127.0.0.1" and address[1] != 0

    assert proxy.add(2, 3) == 5
    assert proxy.add(1, 1) == 2
    with pytest.raises(ZeroDivisionError):
        proxy.div(1, 0)
    with pytest.raises(MethodNotFound):
        proxy.call("no_such_method")

    def calls(**labels: str) -> float:
        return sample(address, "rpc_server_calls_total", server_id=server_id, **labels)

    wait_for(lambda: calls() == 4, message="four calls counted")
    assert calls(method="add", outcome="ok") == 2
    assert calls(method="div", outcome="error") == 1
    assert calls(outcome="bad_request") == 1  # whatever method label an unknown name gets
    assert sample(address, "rpc_server_handler_seconds_count", server_id=server_id, method="add") == 2
    assert sample(address, "rpc_server_handler_seconds_count", server_id=server_id, method="div") == 1
    assert sample(address, "rpc_server_queued_seconds_count", server_id=server_id) >= 3
    assert sample(address, "rpc_server_calls_in_flight", server_id=server_id) == 0
    assert sample(address, "rpc_server_reconnects_total", server_id=server_id) == 0


def test_calls_in_flight_counts_a_running_handler(servers, proxies, broker_url, server_id):
    server = servers(broker_url, server_id)
    future = proxies(broker_url, server_id).future.slow(1.0)
    wait_for(lambda: sample(server.metrics_address, "rpc_server_calls_in_flight", server_id=server_id) == 1,
             message="one call in flight")
    assert future.result(WAIT) == 1.0
    wait_for(lambda: sample(server.metrics_address, "rpc_server_calls_in_flight", server_id=server_id) == 0,
             message="no call in flight")


def test_probes_are_up_while_serving_and_the_endpoint_closes_with_the_server(servers, broker_url, server_id):
    server = servers(broker_url, server_id)
    address = server.metrics_address
    assert get(address, "/healthz") == (200, "ok\n")
    assert get(address, "/readyz")[0] == 200
    assert get(address, "/nope")[0] == 404

    server.stop(grace=2)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5).close()


def test_readiness_follows_the_broker_connection_and_liveness_rides_out_an_outage(
        servers, proxies, broker_url, server_id):
    parts = urlsplit(broker_url)
    with TCPProxy((parts.hostname or "127.0.0.1", parts.port or 5672)) as tcp:
        server = servers(tcp.url(parts.username or "guest", parts.password or "guest"), server_id)
        address = server.metrics_address
        assert get(address, "/readyz")[0] == 200
        assert get(address, "/healthz")[0] == 200

        tcp.refuse()  # reconnecting fails until set_pass(): the server stays disconnected
        assert tcp.reset_all() >= 1
        wait_for(lambda: get(address, "/readyz")[0] == 503, timeout=10, message="/readyz to fail")
        assert get(address, "/healthz")[0] == 200  # alive: reconnecting is no reason to restart

        tcp.set_pass()
        wait_for(lambda: get(address, "/readyz")[0] == 200, message="/readyz to recover")
        assert sample(address, "rpc_server_reconnects_total", server_id=server_id) == 1
        assert proxies(broker_url, server_id).add(2, 2) == 4
        assert get(address, "/healthz")[0] == 200


def test_two_servers_in_one_process_serve_their_own_ports(servers, proxies, broker_url, server_id):
    first = servers(broker_url, server_id)
    second = servers(broker_url, f"{server_id}-2")
    assert first.metrics_address != second.metrics_address
    assert proxies(broker_url, f"{server_id}-2").add(1, 2) == 3

    wait_for(lambda: sample(second.metrics_address, "rpc_server_calls_total",
                            server_id=f"{server_id}-2", outcome="ok") == 1, message="the call counted")
    assert sample(second.metrics_address, "rpc_server_calls_total", server_id=server_id) == 0


def client(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_proxy_with_metrics_records_calls_latency_timeouts_and_dropped_replies(
        servers, proxies, broker_url, server_id, monkeypatch):
    servers(broker_url, server_id, concurrency=2)
    proxy = proxies(broker_url, server_id, metrics=True)
    # A server that never hears the cancel a timeout sends (a v1.0 server, a cancel lost)
    # still replies, late; a v1.1 server that hears it sends no reply at all.
    monkeypatch.setattr(proxy, "_cancel_on_server", lambda pending: None)

    assert proxy.add(2, 3) == 5
    with pytest.raises(ZeroDivisionError):
        proxy.div(1, 0)
    with pytest.raises(RPCTimeout):
        proxy.set_timeout(0.2).slow(0.6)

    assert client("rpc_client_calls_total", server_id=server_id, method="add", outcome="ok") == 1
    assert client("rpc_client_calls_total", server_id=server_id, method="div", outcome="error") == 1
    assert client("rpc_client_calls_total", server_id=server_id, method="slow", outcome="timeout") == 1
    assert client("rpc_client_call_seconds_count", server_id=server_id, method="add") == 1
    assert 0 < client("rpc_client_call_seconds_sum", server_id=server_id, method="add") < 5
    assert client("rpc_client_timeouts_total", server_id=server_id) == 1

    # The late reply is read (and dropped) by the next calls.
    wait_for(lambda: proxy.add(0, 0) == 0 and client("rpc_client_dropped_replies_total",
                                                   server_id=server_id) == 1,
             message="the late reply dropped and counted")
    assert proxy.replies_dropped == 1


def test_a_proxy_with_metrics_counts_an_unknown_server(proxies, broker_url, server_id):
    proxy = proxies(broker_url, f"{server_id}-nobody", metrics=True)
    with pytest.raises(UnknownServer):
        proxy.add(1, 2)
    assert client("rpc_client_calls_total", server_id=f"{server_id}-nobody", method="add",
                  outcome="unknown_server") == 1


# -- cancellations ---------------------------------------------------------------------------------


def cancelled(server: Server, server_id: str) -> float:
    return sample(server.metrics_address, "rpc_server_cancelled_total", server_id=server_id)


def test_a_stream_its_caller_leaves_is_scraped_as_cancelled(servers, proxies, broker_url, server_id):
    server = servers(broker_url, server_id)
    items = proxies(broker_url, server_id).stream(window=10).count(1_000_000)
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    items.close()

    wait_for(lambda: cancelled(server, server_id) == 1, message="the stream counted as cancelled")
    assert server.stats["cancelled"] == 1


def test_a_running_call_its_caller_cancels_is_scraped_as_cancelled_not_as_a_call(
        servers, proxies, broker_url, server_id):
    server = servers(broker_url, server_id)
    address = server.metrics_address
    future = proxies(broker_url, server_id).future.slow(0.5)
    wait_for(lambda: sample(address, "rpc_server_calls_in_flight", server_id=server_id) == 1,
             message="the call to run")
    assert future.cancel()

    wait_for(lambda: cancelled(server, server_id) == 1, message="the call counted as cancelled")
    assert sample(address, "rpc_server_calls_total", server_id=server_id) == 0
    assert sample(address, "rpc_server_calls_in_flight", server_id=server_id) == 0


def test_a_request_cancelled_while_queued_is_scraped_as_cancelled(servers, proxies, broker_url, server_id):
    server = servers(broker_url, server_id, concurrency=1, prefetch=1)
    address = server.metrics_address
    proxy = proxies(broker_url, server_id)
    first = proxy.future.slow(1.0)
    wait_for(lambda: sample(address, "rpc_server_calls_in_flight", server_id=server_id) == 1,
             message="the first call to run")
    queued = proxy.future.add(1, 2)
    assert queued.cancel()
    assert first.result(WAIT) == 1.0

    wait_for(lambda: cancelled(server, server_id) == 1, message="the queued call counted as cancelled")
    assert sample(address, "rpc_server_calls_total", server_id=server_id, method="add") == 0
    assert server.stats["cancelled"] == 1


def test_a_proxy_with_metrics_counts_every_cancel_it_sends(servers, proxies, broker_url, server_id):
    servers(broker_url, server_id, concurrency=2)
    proxy = proxies(broker_url, server_id, metrics=True)
    assert proxy.add(1, 2) == 3
    assert client("rpc_client_cancels_total", server_id=server_id) == 0  # answered: no cancel

    assert proxy.future.slow(0.5).cancel()
    with pytest.raises(RPCTimeout):
        proxy.set_timeout(0.2).slow(0.5)
    items = proxy.stream(window=10).count(1_000_000)
    next(items)
    items.close()

    assert client("rpc_client_cancels_total", server_id=server_id) == 3


def test_an_async_proxy_with_metrics_counts_the_cancel_of_a_cancelled_task(
        servers, broker_url, server_id):
    servers(broker_url, server_id)

    async def scenario() -> None:
        async with AsyncProxy(broker_url, server_id=server_id, metrics=True) as proxy:
            task = asyncio.ensure_future(proxy.slow(0.5))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(asyncio.wait_for(scenario(), WAIT))
    assert client("rpc_client_cancels_total", server_id=server_id) == 1


# -- calls a proxy's caller cancelled --------------------------------------------------------------


def client_outcomes(address: tuple[str, int], server_id: str, method: str) -> dict[str, float]:
    """The proxy calls of ``method`` scraped from ``address``, by outcome (those counted only)."""
    status, body = get(address, "/metrics")
    assert status == 200
    return {s.labels["outcome"]: s.value for family in text_string_to_metric_families(body)
            for s in family.samples if s.name == "rpc_client_calls_total" and s.value
            and s.labels["server_id"] == server_id and s.labels["method"] == method}


def no_cancels(pending: Any) -> None:
    """In place of a proxy's ``_cancel_on_server``: the server never hears the cancel, so its
    reply still comes, late (as from a v1.0 server, or when a cancel is lost)."""


def test_a_cancelled_callback_call_counts_once_as_cancelled(
        servers, proxies, broker_url, server_id, monkeypatch):
    server = servers(broker_url, server_id)
    proxy = proxies(broker_url, server_id, metrics=True)
    monkeypatch.setattr(proxy, "_cancel_on_server", no_cancels)
    errors: queue.SimpleQueue[BaseException] = queue.SimpleQueue()

    uid = proxy.callback(None, errors.put).slow(0.3)
    assert proxy.cancel(uid)
    assert isinstance(errors.get(timeout=WAIT), Cancelled)

    wait_for(lambda: proxy.add(0, 0) == 0 and proxy.replies_dropped == 1, message="the late reply dropped")
    assert client_outcomes(server.metrics_address, server_id, "slow") == {"cancelled": 1}


def test_a_cancelled_future_counts_once_as_cancelled(servers, proxies, broker_url, server_id, monkeypatch):
    server = servers(broker_url, server_id)
    proxy = proxies(broker_url, server_id, metrics=True)
    monkeypatch.setattr(proxy, "_cancel_on_server", no_cancels)

    future = proxy.future.slow(0.3)
    assert future.cancel()
    assert future.cancel()  # True again, and still one cancelled call

    wait_for(lambda: proxy.add(0, 0) == 0 and proxy.replies_dropped == 1, message="the late reply dropped")
    assert client_outcomes(server.metrics_address, server_id, "slow") == {"cancelled": 1}


def test_a_future_cancelled_while_it_waits_to_retry_counts_as_cancelled(proxies, broker_url, server_id):
    stopped = Server(broker_url, server_id=server_id)  # its queue stays, with no consumer
    register(stopped)
    stopped.start()
    stopped.stop()
    proxy = proxies(broker_url, server_id, metrics=True)

    future = proxy.set_retries(1).future.add(1, 2)  # nobody consumes: its retry waits 0.5 s or more
    assert future.cancel()

    with MetricsServer(0, healthy=lambda: True, ready=lambda: True, host="127.0.0.1") as endpoint:
        wait_for(lambda: client_outcomes(endpoint.address, server_id, "add") == {"cancelled": 1},
                 message="the call counted as cancelled")
        time.sleep(0.5)  # nothing more counts it
        assert client_outcomes(endpoint.address, server_id, "add") == {"cancelled": 1}


@pytest.mark.parametrize("start", [
    lambda proxy: asyncio.ensure_future(proxy.slow(0.3)),
    lambda proxy: proxy.future.slow(0.3),
], ids=["coroutine", "future"])
def test_a_cancelled_async_task_counts_once_as_cancelled(
        servers, broker_url, server_id, monkeypatch, start):
    server = servers(broker_url, server_id)

    async def scenario() -> None:
        async with AsyncProxy(broker_url, server_id=server_id, metrics=True) as proxy:
            monkeypatch.setattr(proxy, "_cancel_on_server", no_cancels)
            task = start(proxy)
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            while proxy.replies_dropped < 1:  # the late reply
                await asyncio.sleep(0.05)

    asyncio.run(asyncio.wait_for(scenario(), WAIT))
    assert client_outcomes(server.metrics_address, server_id, "slow") == {"cancelled": 1}


def test_an_async_proxy_cancelled_callback_call_counts_once_as_cancelled(
        servers, broker_url, server_id, monkeypatch):
    server = servers(broker_url, server_id)

    async def scenario() -> None:
        async with AsyncProxy(broker_url, server_id=server_id, metrics=True) as proxy:
            monkeypatch.setattr(proxy, "_cancel_on_server", no_cancels)
            errors: asyncio.Queue[BaseException] = asyncio.Queue()
            uid = proxy.callback(None, errors.put_nowait).slow(0.3)
            await asyncio.sleep(0.1)  # the call goes out
            assert proxy.cancel(uid)
            assert isinstance(await errors.get(), Cancelled)
            while proxy.replies_dropped < 1:  # the late reply
                await asyncio.sleep(0.05)

    asyncio.run(asyncio.wait_for(scenario(), WAIT))
    assert client_outcomes(server.metrics_address, server_id, "slow") == {"cancelled": 1}


def test_an_async_task_cancelled_as_its_proxy_closes_counts_as_cancelled_not_as_an_error(
        servers, broker_url, server_id):
    server = servers(broker_url, server_id)

    async def scenario() -> None:
        proxy = await AsyncProxy(broker_url, server_id=server_id, metrics=True).connect()
        task = asyncio.ensure_future(proxy.slow(0.3))
        await asyncio.sleep(0.1)
        task.cancel()
        await proxy.close()  # fails the pending call before the task hears of its cancel
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(scenario(), WAIT))
    assert client_outcomes(server.metrics_address, server_id, "slow") == {"cancelled": 1}


# -- streams left early, and blocking calls interrupted ---------------------------------------------


def leave_sync_stream(proxy: Proxy, how: str) -> None:
    """Read two items of an endless stream, then leave it as ``how`` says."""
    if how == "with":
        with proxy.stream(window=10).count(1_000_000) as items:
            assert [next(items), next(items)] == [0, 1]
        return
    items = proxy.stream(window=10).count(1_000_000)
    for item in items:
        if item == 1:
            break
    if how == "close":
        items.close()
    else:  # "collected": dropped without a close, as a loop left with break often is
        del items
        gc.collect()


@pytest.mark.parametrize("how", ["close", "with", "collected"])
def test_a_stream_left_early_counts_once_as_cancelled(servers, proxies, broker_url, server_id, how):
    server = servers(broker_url, server_id)
    proxy = proxies(broker_url, server_id, metrics=True)
    leave_sync_stream(proxy, how)

    wait_for(lambda: cancelled(server, server_id) == 1, message="the server to hear the cancel")
    assert proxy.add(0, 0) == 0  # reads whatever the server still sent
    assert client_outcomes(server.metrics_address, server_id, "count") == {"cancelled": 1}


async def leave_async_stream(proxy: AsyncProxy, how: str) -> None:
    """As :func:`leave_sync_stream`, on an AsyncProxy: ``aclose()``, ``async with``, or the
    task reading it cancelled."""
    items = proxy.stream(window=10).count(1_000_000)
    if how == "async with":
        async with items:
            assert [await anext(items), await anext(items)] == [0, 1]
    elif how == "aclose":
        async for item in items:
            if item == 1:
                break
        await items.aclose()
    else:
        async def read_all() -> None:
            async for _ in items:
                await asyncio.sleep(0.01)

        task = asyncio.ensure_future(read_all())
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("how", ["aclose", "async with", "task cancelled"])
def test_an_async_stream_left_early_counts_once_as_cancelled(servers, broker_url, server_id, how):
    server = servers(broker_url, server_id)

    async def scenario() -> None:
        async with AsyncProxy(broker_url, server_id=server_id, metrics=True) as proxy:
            await leave_async_stream(proxy, how)
            while cancelled(server, server_id) < 1:  # the server heard the cancel
                await asyncio.sleep(0.05)
            assert await proxy.add(0, 0) == 0  # whatever the server still sent is read

    asyncio.run(asyncio.wait_for(scenario(), WAIT))
    assert client_outcomes(server.metrics_address, server_id, "count") == {"cancelled": 1}


def read_stream(kind: str, url: str, server_id: str, method: str, n: int) -> object:
    """Read a stream of ``method(n)`` to its end with a proxy with metrics, close it as a ``with``
    block does, and return its items, or the error it ended with."""
    if kind == "sync":
        with Proxy(url, server_id=server_id, metrics=True, timeout=WAIT) as proxy:
            items = proxy.stream.call(method, n)
            try:
                with items:
                    return list(items)
            except Exception as exc:
                return exc
            finally:
                assert proxy.add(0, 0) == 0  # whatever the server still sent is read

    async def scenario() -> object:
        async with AsyncProxy(url, server_id=server_id, metrics=True, timeout=WAIT) as proxy:
            items = proxy.stream.call(method, n)
            try:
                async with items:
                    return [item async for item in items]
            except Exception as exc:
                return exc
            finally:
                assert await proxy.add(0, 0) == 0

    return asyncio.run(asyncio.wait_for(scenario(), WAIT))


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_stream_read_to_its_end_counts_once_as_ok(servers, broker_url, server_id, kind):
    server = servers(broker_url, server_id)
    assert read_stream(kind, broker_url, server_id, "count", 3) == [0, 1, 2]
    assert client_outcomes(server.metrics_address, server_id, "count") == {"ok": 1}
    assert cancelled(server, server_id) == 0


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_stream_that_raises_counts_once_as_an_error(servers, broker_url, server_id, kind):
    server = servers(broker_url, server_id)
    assert isinstance(read_stream(kind, broker_url, server_id, "count_then_fail", 3), ValueError)
    assert client_outcomes(server.metrics_address, server_id, "count_then_fail") == {"error": 1}


@contextlib.contextmanager
def interrupted_after(seconds: float) -> Iterator[None]:
    """Expect the block to end in the KeyboardInterrupt that Ctrl-C ``seconds`` in raises."""
    timer = threading.Timer(seconds, signal.pthread_kill,
                            (threading.main_thread().ident, signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        timer.cancel()


def test_a_blocking_call_interrupted_counts_once_as_cancelled(servers, proxies, broker_url, server_id):
    server = servers(broker_url, server_id)
    proxy = proxies(broker_url, server_id, metrics=True)
    with interrupted_after(0.3):
        proxy.set_timeout(WAIT).slow(0.6)

    assert proxy.pending_calls == 0  # forgotten: its reply, when it comes, is dropped
    wait_for(lambda: proxy.add(0, 0) == 0 and proxy.replies_dropped == 1, message="the late reply dropped")
    assert client_outcomes(server.metrics_address, server_id, "slow") == {"cancelled": 1}


def test_a_broadcast_interrupted_while_it_collects_counts_once_as_cancelled(
        servers, proxies, broker_url, server_id):
    server = servers(broker_url, server_id)
    proxy = proxies(broker_url, server_id, metrics=True)
    with interrupted_after(0.3):
        proxy.broadcast(timeout=WAIT).add(1, 2)

    assert proxy.pending_calls == 0
    assert client_outcomes(server.metrics_address, server_id, "add") == {"cancelled": 1}

# -- every call counts once, with what its caller gets ---------------------------------------------

#: (proxy, mode): how a test makes its call.
SYNC_MODES = [("sync", "call"), ("sync", "future"), ("sync", "callback")]
ASYNC_MODES = [("async", "coroutine"), ("async", "task"), ("async", "callback")]
MODE_IDS = lambda mode: "-".join(mode)  # noqa: E731


@pytest.fixture
def endpoint() -> Iterator[tuple[str, int]]:
    """The address of a /metrics endpoint of this process's default registry, where proxies count."""
    with MetricsServer(0, healthy=lambda: True, ready=lambda: True, host="127.0.0.1") as server:
        yield server.address


@pytest.fixture
def unserved(broker_url: str, server_id: str) -> None:
    """The server's queue with nobody consuming it: a call fails its availability check."""
    stopped = Server(broker_url, server_id=server_id)
    stopped.start()
    stopped.stop()


def sync_call(proxy: Proxy, mode: str, method: str, *args: Any) -> object:
    """What the caller of ``method(*args)`` made in ``mode`` gets: its result, or its error."""
    try:
        if mode == "call":
            return proxy.call(method, *args)
        if mode == "future":
            return proxy.future.call(method, *args).result(WAIT)
        outcomes: queue.SimpleQueue[object] = queue.SimpleQueue()
        proxy.callback(outcomes.put, outcomes.put).call(method, *args)
        return outcomes.get(timeout=WAIT)
    except Exception as exc:
        return exc


async def async_call(proxy: AsyncProxy, mode: str, method: str, *args: Any) -> object:
    """As :func:`sync_call`, on an AsyncProxy: awaited, as a task, or by callback."""
    try:
        if mode == "coroutine":
            return await proxy.call(method, *args)
        if mode == "task":
            return await proxy.future.call(method, *args)
        outcomes: asyncio.Queue[object] = asyncio.Queue()
        proxy.callback(outcomes.put_nowait, outcomes.put_nowait).call(method, *args)
        return await outcomes.get()
    except Exception as exc:
        return exc


def call_once(mode: tuple[str, str], url: str, server_id: str, method: str, *args: Any,
              closed: bool = False, meanwhile: Callable[[], object] = lambda: None,
              **options: Any) -> object:
    """Open a proxy with metrics on ``url`` (close it first if ``closed``; run ``meanwhile``
    once it is connected), make one call in ``mode``, and return what its caller got."""
    kind, how = mode
    if kind == "sync":
        proxy = Proxy(url, server_id=server_id, metrics=True, timeout=WAIT, **options)
        try:
            if closed:
                proxy.close()
            meanwhile()
            return sync_call(proxy, how, method, *args)
        finally:
            proxy.close()

    async def scenario() -> object:
        proxy = await AsyncProxy(url, server_id=server_id, metrics=True, timeout=WAIT,
                                 **options).connect()
        try:
            if closed:
                await proxy.close()
            await asyncio.to_thread(meanwhile)
            return await async_call(proxy, how, method, *args)
        finally:
            await proxy.close()

    return asyncio.run(asyncio.wait_for(scenario(), WAIT))


@pytest.mark.parametrize("mode", SYNC_MODES + ASYNC_MODES, ids=MODE_IDS)
def test_a_call_to_a_queue_nobody_consumes_counts_once_as_unknown_server(
        mode, unserved, endpoint, broker_url, server_id):
    assert isinstance(call_once(mode, broker_url, server_id, "add", 1, 2), ServerUnavailable)
    assert client_outcomes(endpoint, server_id, "add") == {"unknown_server": 1}


@pytest.mark.parametrize("mode", SYNC_MODES + ASYNC_MODES, ids=MODE_IDS)
def test_a_call_on_a_closed_proxy_counts_once_as_an_error(mode, endpoint, broker_url, server_id):
    assert isinstance(call_once(mode, broker_url, server_id, "add", 1, 2, closed=True), RPCError)
    assert client_outcomes(endpoint, server_id, "add") == {"error": 1}


@pytest.mark.parametrize("mode", SYNC_MODES + ASYNC_MODES, ids=MODE_IDS)
def test_a_call_whose_arguments_cannot_be_encoded_counts_once_as_an_error(
        mode, endpoint, broker_url, server_id):
    assert isinstance(call_once(mode, broker_url, server_id, "add", object(), 2), SerializationError)
    assert client_outcomes(endpoint, server_id, "add") == {"error": 1}


@pytest.mark.parametrize("mode", SYNC_MODES + ASYNC_MODES, ids=MODE_IDS)
def test_a_call_that_cannot_reach_the_broker_counts_once_as_a_connection_error(
        mode, endpoint, broker_url, server_id):
    parts = urlsplit(broker_url)
    with TCPProxy((parts.hostname or "127.0.0.1", parts.port or 5672)) as tcp:
        def broker_gone() -> None:
            tcp.refuse()
            assert tcp.reset_all() >= 1

        outcome = call_once(mode, tcp.url(parts.username or "guest", parts.password or "guest"),
                            server_id, "add", 1, 2, meanwhile=broker_gone, connect_retry=0.3)
    assert isinstance(outcome, ConnectionError)
    assert client_outcomes(endpoint, server_id, "add") == {"connection_error": 1}


@pytest.mark.parametrize("mode", [("sync", "call"), *ASYNC_MODES], ids=MODE_IDS)
def test_a_call_that_runs_out_of_retries_counts_once_with_its_last_error(
        mode, unserved, endpoint, broker_url, server_id):
    outcome = call_once(mode, broker_url, server_id, "add", 1, 2, retries=1)  # waits 0.5 s or more
    assert isinstance(outcome, ServerUnavailable)
    assert client_outcomes(endpoint, server_id, "add") == {"unknown_server": 1}


@pytest.mark.parametrize("mode", [("sync", "call"), *ASYNC_MODES], ids=MODE_IDS)
def test_a_retried_call_counts_once_with_its_final_outcome(mode, endpoint, broker_url, server_id):
    parts = urlsplit(broker_url)
    runs: list[int] = []
    with TCPProxy((parts.hostname or "127.0.0.1", parts.port or 5672)) as tcp, \
            started_servers(stop_grace=5) as start:
        def work(x: int) -> int:
            runs.append(x)
            if len(runs) == 1:
                tcp.reset_all()  # the caller's connection drops while this runs; the server's stays
                time.sleep(0.3)
            return x * 2

        start(broker_url, server_id, concurrency=2,
              register=lambda server: server.register_function(work, "work"))
        outcome = call_once(mode, tcp.url(parts.username or "guest", parts.password or "guest"),
                            server_id, "work", 21, retries=3)
    assert outcome == 42
    assert runs == [21]
    assert client_outcomes(endpoint, server_id, "work") == {"ok": 1}


def test_an_async_callback_call_cancelled_at_once_is_cancelled(servers, broker_url, server_id):
    server = servers(broker_url, server_id)

    async def scenario() -> None:
        async with AsyncProxy(broker_url, server_id=server_id, metrics=True) as proxy:
            errors: asyncio.Queue[BaseException] = asyncio.Queue()
            uid = proxy.callback(None, errors.put_nowait).add(1, 2)
            assert proxy.cancel(uid)
            assert not proxy.cancel(uid)  # cancelled already
            assert isinstance(await errors.get(), Cancelled)
            await asyncio.sleep(0.3)  # time for a request that went out after all to be served

    asyncio.run(asyncio.wait_for(scenario(), WAIT))
    address = server.metrics_address
    assert client_outcomes(address, server_id, "add") == {"cancelled": 1}
    assert sample(address, "rpc_server_calls_total", server_id=server_id) == 0  # nothing published
    assert cancelled(server, server_id) == 0


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_callback_call_cancelled_as_its_retry_goes_out_is_not_published(
        kind, unserved, endpoint, broker_url, server_id, monkeypatch):
    """The retry is held in its availability check (a server consumes by then), where a cancel
    ends it: the error callback gets rpc.Cancelled, and the request is never published."""
    runs: list[int] = []
    held, release = threading.Event(), threading.Event()
    with started_servers(stop_grace=5) as start:
        def serve() -> None:
            start(broker_url, server_id,
                  register=lambda server: server.register_function(lambda a, b: runs.append(a), "add"))

        if kind == "sync":
            with Proxy(broker_url, server_id=server_id, metrics=True, timeout=WAIT) as proxy:
                check = proxy._check_available
                checks: list[object] = []

                def held_check(*args: Any) -> None:
                    checks.append(args)
                    if len(checks) > 1:  # the retry's
                        held.set()
                        release.wait(WAIT)
                    check(*args)

                monkeypatch.setattr(proxy, "_check_available", held_check)
                errors: queue.SimpleQueue[object] = queue.SimpleQueue()
                uid = proxy.set_retries(1).callback(None, errors.put).add(1, 2)
                serve()
                assert held.wait(WAIT)
                assert proxy.cancel(uid)
                release.set()
                assert isinstance(errors.get(timeout=WAIT), Cancelled)
                time.sleep(0.3)  # time for a request that went out after all to be served
        else:
            async def scenario() -> None:
                async with AsyncProxy(broker_url, server_id=server_id, metrics=True,
                                      timeout=WAIT) as proxy:
                    ask = proxy._check
                    asked: list[object] = []

                    unavailable = asyncio.Event()

                    async def held_check(*args: Any) -> None:
                        asked.append(args)
                        if len(asked) > 1:  # the retry's
                            held.set()
                            await asyncio.to_thread(release.wait, WAIT)
                        try:
                            await ask(*args)
                        finally:
                            unavailable.set()

                    monkeypatch.setattr(proxy, "_check", held_check)
                    errors: asyncio.Queue[object] = asyncio.Queue()
                    uid = proxy.set_retries(1).callback(None, errors.put_nowait).add(1, 2)
                    await unavailable.wait()  # the first try failed: no server yet
                    await asyncio.to_thread(serve)
                    assert await asyncio.to_thread(held.wait, WAIT)
                    assert proxy.cancel(uid)
                    release.set()
                    assert isinstance(await errors.get(), Cancelled)
                    await asyncio.sleep(0.3)

            asyncio.run(asyncio.wait_for(scenario(), WAIT))
        assert runs == []
    assert client_outcomes(endpoint, server_id, "add") == {"cancelled": 1}
