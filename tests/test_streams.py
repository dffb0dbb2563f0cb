"""Streams (protocol v1.1): a generator method's items, iterated as they come, under credit."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from rpc import AsyncProxy, BadRequest, RPCTimeout, Server

pytestmark = pytest.mark.integration

WAIT = 20  # seconds: the bound on every wait in this module


class Produced:
    """What the server's generators did, for the tests to watch."""

    def __init__(self) -> None:
        self.count = 0
        self.closed = threading.Event()


@pytest.fixture
def produced() -> Produced:
    return Produced()


@pytest.fixture
def served(make_server: Any, produced: Produced) -> Server:
    def register(server: Server) -> None:
        @server.expose
        def count(n: int) -> Iterator[int]:
            try:
                for i in range(n):
                    produced.count = i + 1
                    yield i
            finally:
                produced.closed.set()

        @server.expose
        def fail_after(n: int) -> Iterator[int]:
            yield from range(n)
            raise KeyError("no more")

        @server.expose
        def slow(n: int, seconds: float) -> Iterator[int]:
            for i in range(n):
                time.sleep(seconds)
                yield i

        @server.expose
        async def acount(n: int) -> AsyncIterator[int]:
            for i in range(n):
                await asyncio.sleep(0)
                yield i

        @server.expose
        def add(a: int, b: int) -> int:
            return a + b

    return make_server(register=register)  # type: ignore[no-any-return]


def wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_stream_yields_every_item_in_order_then_ends(served: Server, make_proxy: Any) -> None:
    assert list(make_proxy().stream.count(250)) == list(range(250))


def test_an_empty_stream_ends_at_once(served: Server, make_proxy: Any) -> None:
    assert list(make_proxy().stream.count(0)) == []


def test_an_exception_mid_stream_is_raised_after_the_items_before_it(
        served: Server, make_proxy: Any) -> None:
    seen = []
    with pytest.raises(KeyError, match="no more"):
        for item in make_proxy().stream.fail_after(3):
            seen.append(item)
    assert seen == [0, 1, 2]


def test_a_slow_consumer_keeps_the_server_at_most_a_window_ahead(
        served: Server, make_proxy: Any, produced: Produced) -> None:
    items = make_proxy().stream(window=10).count(1000)
    for _ in range(5):
        next(items)
    time.sleep(0.5)  # the server has all the time it wants to run ahead: credit holds it
    assert produced.count <= 5 + 10 + 1  # consumed, a window of credit, one waiting for it
    items.close()


def test_leaving_the_loop_early_stops_the_generator_on_the_server(
        served: Server, make_proxy: Any, produced: Produced) -> None:
    for item in make_proxy().stream(window=10).count(1_000_000):
        if item == 3:
            break
    assert produced.closed.wait(2), "the generator's finally did not run"
    assert produced.count < 1_000_000


def test_the_stream_timeout_bounds_the_wait_for_each_item(
        served: Server, make_proxy: Any) -> None:
    items = make_proxy().stream(timeout=0.2).slow(3, 1.0)
    with pytest.raises(RPCTimeout):
        next(items)


def test_the_proxy_calls_on_after_a_stream(served: Server, make_proxy: Any) -> None:
    proxy = make_proxy()
    assert list(proxy.stream.count(5)) == [0, 1, 2, 3, 4]
    assert proxy.add(2, 3) == 5
    assert proxy.pending_calls == 0


def test_a_plain_call_to_a_generator_says_to_use_stream(
        served: Server, make_proxy: Any) -> None:
    with pytest.raises(BadRequest, match="stream"):
        make_proxy().count(3)


def test_a_stream_of_a_plain_method_is_refused(served: Server, make_proxy: Any) -> None:
    with pytest.raises(BadRequest, match="stream"):
        list(make_proxy().stream.add(1, 2))


@pytest.mark.parametrize("serializer", ["json", "pickle"])
def test_a_stream_works_in_every_serializer(
        make_server: Any, make_proxy: Any, serializer: str) -> None:
    def register(server: Server) -> None:
        @server.expose
        def pairs(n: int) -> Iterator[list[int]]:
            for i in range(n):
                yield [i, i * i]

    make_server(register=register, serializer=serializer)
    assert [tuple(p) for p in make_proxy(serializer=serializer).stream.pairs(3)] == [
        (0, 0), (1, 1), (2, 4)]


def test_an_async_generator_streams_to_an_async_proxy(served: Server, url: str,
                                                      server_id: str) -> None:
    async def scenario() -> list[int]:
        async with AsyncProxy(url, server_id=server_id) as proxy:
            return [item async for item in proxy.stream.acount(150)]

    assert asyncio.run(asyncio.wait_for(scenario(), WAIT)) == list(range(150))


def test_leaving_an_async_stream_early_stops_the_generator(
        served: Server, url: str, server_id: str, produced: Produced) -> None:
    async def scenario() -> None:
        async with AsyncProxy(url, server_id=server_id) as proxy:
            async with contextlib.aclosing(proxy.stream(window=10).count(1_000_000)) as items:
                async for item in items:
                    if item == 3:
                        break

    asyncio.run(asyncio.wait_for(scenario(), WAIT))
    assert produced.closed.wait(2), "the generator's finally did not run"


def test_an_async_stream_raises_the_handler_s_exception_after_its_items(
        served: Server, url: str, server_id: str) -> None:
    async def scenario() -> list[int]:
        seen: list[int] = []
        async with AsyncProxy(url, server_id=server_id) as proxy:
            with pytest.raises(KeyError):
                async for item in proxy.stream.fail_after(2):
                    seen.append(item)
        return seen

    assert asyncio.run(asyncio.wait_for(scenario(), WAIT)) == [0, 1]
