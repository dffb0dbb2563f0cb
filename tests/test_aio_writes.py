"""AsyncProxy on RabbitMQ: the writes of one loop pass go out together, and a request or cast
whose write failed goes out again on a new connection."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Coroutine
from typing import Any
from urllib.parse import urlsplit

import pytest
from faults.tcpproxy import TCPProxy

from rpc import Server
from rpc.client.aio import AsyncProxy

WAIT = 15  # seconds: the bound on every wait in this module


def run(scenario: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(scenario, WAIT))


class CountingSocket:
    """A link's socket that counts its sends."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sends = 0

    def send(self, data: Any) -> int:
        self.sends += 1
        return self.sock.send(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


@pytest.fixture
def url(broker_url: str) -> str:
    """RabbitMQ only: the loop drives the socket there (memory:// goes through a bridge)."""
    return broker_url


@pytest.fixture
def recorded() -> list[Any]:
    """What the served ``record`` function was cast."""
    return []


@pytest.fixture
def served(make_server, recorded) -> Server:
    def register(server: Server) -> None:
        server.register_function(lambda a, b: a + b, "add")
        server.register_function(recorded.append, "record")

    return make_server(register=register, concurrency=4)


def test_the_requests_of_one_loop_pass_go_out_in_one_send(url, server_id, served):
    async def scenario() -> tuple[list[int], int]:
        async with AsyncProxy(url, server_id=server_id) as proxy:
            await proxy.add(0, 0)  # the availability check is done: only requests are written
            counting = CountingSocket(proxy._link._sock)  # type: ignore[union-attr]
            proxy._link._sock = counting  # type: ignore[union-attr]
            results = await asyncio.gather(*[proxy.add(i, 1) for i in range(200)])
            return results, counting.sends

    results, sends = run(scenario())
    assert results == [i + 1 for i in range(200)]
    assert sends <= 3  # all 200 in the first pass's send; an ack or heartbeat at most besides


def test_a_request_whose_write_fails_goes_out_again_on_a_new_connection(url, server_id, served):
    parts = urlsplit(url)
    with TCPProxy((parts.hostname or "127.0.0.1", parts.port or 5672)) as tcp:

        async def scenario() -> tuple[int, int]:
            async with AsyncProxy(tcp.url(), server_id=server_id) as proxy:
                assert await proxy.add(1, 1) == 2  # and no availability check for a second
                link = proxy._link
                tcp.reset_all()
                time.sleep(0.3)  # the RST arrives while the loop does not look
                result = await proxy.add(2, 3)  # its write fails before the reader hears
                assert proxy._link is not link
                return result, tcp.accepted

        assert run(scenario()) == (5, 2)


def test_a_cast_whose_write_fails_goes_out_again_on_a_new_connection(
        url, server_id, served, recorded):
    parts = urlsplit(url)
    with TCPProxy((parts.hostname or "127.0.0.1", parts.port or 5672)) as tcp:

        async def scenario() -> int:
            async with AsyncProxy(tcp.url(), server_id=server_id) as proxy:
                assert await proxy.add(1, 1) == 2  # and no availability check for a second
                tcp.reset_all()
                time.sleep(0.3)  # the RST arrives while the loop does not look
                assert await proxy.cast.record("after the reset") is None
                for _ in range(100):  # the cast has no reply to await
                    if recorded:
                        break
                    await asyncio.sleep(0.05)
                return tcp.accepted

        assert run(scenario()) == 2
    assert recorded == ["after the reset"]
