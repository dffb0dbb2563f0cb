"""rpc on kombu's Redis transport, against a redis-server this session starts on loopback.

Redis keeps a queue only while it holds messages: an empty request queue looks like no queue at
all, so a call is published without asking whether its queue exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection
from support import opened_proxies, started_servers

from rpc import AccessRefused, AsyncProxy, ConnectionLost, Proxy, RPCTimeout, Server
from rpc.transport.link import Incoming, open_link

REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def redis_server(port: int, *options: str) -> Iterator[None]:
    """A redis-server on loopback ``port``, keeping nothing on disk, until the block ends."""
    workdir = tempfile.mkdtemp(prefix="rpc-tests-redis-")
    assert REDIS_SERVER is not None
    proc = subprocess.Popen(
        [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", workdir, *options],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail(f"redis-server did not answer on port {port}")
            time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A redis-server of this session's own."""
    if REDIS_SERVER is None:
        message = "redis-server is missing: install it to test the Redis transport"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    port = free_port()
    with redis_server(port):
        yield f"redis://127.0.0.1:{port}/0"


def register(server: Server) -> None:
    @server.expose
    def add(a: int, b: int) -> int:
        return a + b

    @server.expose
    def count(n: int) -> Iterator[int]:
        yield from range(n)


@pytest.fixture
def served(redis_url: str, server_id: str) -> Iterator[str]:
    """A server on Redis: its URL."""
    with started_servers(stop_grace=5) as start:
        start(redis_url, server_id, register=register)
        yield redis_url


def test_a_call_on_redis_returns_its_result_though_its_queue_is_empty(
        served: str, server_id: str) -> None:
    with opened_proxies() as open_proxy:
        proxy = open_proxy(served, server_id, timeout=10)
        assert proxy.add(1, 2) == 3
        assert proxy.add(3, 4) == 7


def test_a_future_and_a_stream_on_redis_get_their_results(served: str, server_id: str) -> None:
    with opened_proxies() as open_proxy:
        proxy = open_proxy(served, server_id, timeout=10)
        assert proxy.future.add(2, 3).result(10) == 5
        assert list(proxy.stream.count(5)) == [0, 1, 2, 3, 4]


def test_a_broadcast_on_redis_hears_every_server(redis_url: str, server_id: str) -> None:
    with started_servers(stop_grace=5) as start, opened_proxies() as open_proxy:
        for _ in range(2):
            start(redis_url, server_id, register=register)
        proxy = open_proxy(redis_url, server_id, timeout=2)
        assert [reply.result for reply in proxy.broadcast.add(1, 1)] == [2, 2]


def test_an_async_proxy_call_on_redis_returns_its_result(served: str, server_id: str) -> None:
    async def scenario() -> Any:
        async with AsyncProxy(served, server_id=server_id, timeout=10) as proxy:
            return await proxy.add(5, 5)

    assert asyncio.run(asyncio.wait_for(scenario(), 20)) == 10


def test_a_call_nobody_serves_on_redis_times_out(redis_url: str, server_id: str) -> None:
    with opened_proxies() as open_proxy:
        proxy = open_proxy(redis_url, server_id, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(RPCTimeout):
            proxy.add(1, 2)
        assert time.monotonic() - started < 5


def test_a_server_on_redis_drops_a_malformed_message_in_its_queue_and_serves_on(
        served: str, server_id: str) -> None:
    redis.Redis.from_url(served).lpush(server_id, b"not a kombu message")
    with opened_proxies() as open_proxy:
        proxy = open_proxy(served, server_id, timeout=5)
        assert proxy.add(1, 2) == 3


def test_a_proxy_on_redis_drops_a_malformed_message_in_its_reply_queue_and_calls_on(
        served: str, server_id: str) -> None:
    with opened_proxies() as open_proxy:
        proxy = open_proxy(served, server_id, timeout=5)
        assert proxy.add(1, 2) == 3
        redis.Redis.from_url(served).lpush(proxy._reply_to, b"not a kombu message")
        assert proxy.add(3, 4) == 7


def test_an_async_proxy_on_redis_drops_a_malformed_message_in_its_reply_queue_and_calls_on(
        served: str, server_id: str) -> None:
    async def scenario() -> list[int]:
        async with AsyncProxy(served, server_id=server_id, timeout=5) as proxy:
            first = await proxy.add(1, 2)
            redis.Redis.from_url(served).lpush(proxy._reply_to, b"not a kombu message")
            return [first, await proxy.add(3, 4)]

    assert asyncio.run(asyncio.wait_for(scenario(), 20)) == [3, 7]


def test_a_server_started_before_redis_waits_for_it_to_come_up(
        redis_url: str, server_id: str) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = Server(url, server_id=server_id, connect_retry=30)
    register(server)
    starting = threading.Thread(target=server.start)
    starting.start()
    try:
        time.sleep(1.0)  # it retries meanwhile
        assert starting.is_alive()
        with redis_server(port):
            starting.join(30)
            assert server.running
            with opened_proxies() as open_proxy:
                assert open_proxy(url, server_id, timeout=10).add(2, 2) == 4
            server.stop(grace=2)
    finally:
        starting.join(30)
        server.stop(grace=0)


def test_a_redis_that_refuses_the_password_is_access_refused_at_once(server_id: str) -> None:
    port = free_port()
    with redis_server(port, "--requirepass", "right"):
        started = time.monotonic()
        with pytest.raises(AccessRefused):
            Proxy(f"redis://:wrong@127.0.0.1:{port}/0", server_id=server_id, connect_retry=30)
        assert time.monotonic() - started < 10


def test_an_ack_after_redis_went_away_is_a_lost_connection(server_id: str) -> None:
    port = free_port()
    got: list[Incoming] = []
    with redis_server(port):
        link = open_link(Connection(f"redis://127.0.0.1:{port}/0"), got.append)
        link.declare_queue(server_id, durable=True)
        link.consume(server_id, prefetch=1)
        link.publish(server_id, b"x", {"content_type": "application/x-msgpack"})
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            link.read(1)
        [msg] = got
    assert msg.delivery_tag is not None
    with pytest.raises(ConnectionLost):  # not redis-py's ConnectionError, which ended a thread
        link.ack(msg.delivery_tag)
    assert link.closed
    with redis_server(port):  # where kombu can put the unacknowledged message back on release
        link.close()
