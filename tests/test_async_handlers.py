"""``async def`` handlers run concurrently on the server's event loop, not a worker thread each."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from rpc import Proxy, Server, current_call

pytestmark = pytest.mark.integration

WAIT = 20


@pytest.fixture
def url(broker_url: str) -> str:
    """The real broker, for conftest's make_server."""
    return broker_url


@pytest.fixture
def start(make_server):
    def make(**options) -> Server:
        state = {"now": 0, "most": 0}
        lock = threading.Lock()

        def register(server: Server) -> None:
            @server.expose
            async def nap(seconds: float) -> str:
                with lock:
                    state["now"] += 1
                    state["most"] = max(state["most"], state["now"])
                try:
                    await asyncio.sleep(seconds)
                finally:
                    with lock:
                        state["now"] -= 1
                return current_call().method

            @server.expose
            def plain(x: int) -> int:
                return x + 1

            server.state = state  # type: ignore[attr-defined]

        return make_server(register=register, **options)

    return make


@pytest.fixture
def proxy(broker_url: str, server_id: str):
    with Proxy(broker_url, server_id=server_id, timeout=WAIT) as proxy:
        yield proxy


def test_a_hundred_sleeping_calls_run_at_once_on_a_default_server(start, proxy):
    start()
    began = time.monotonic()
    results = proxy.gather([("nap", (0.1,))] * 100, concurrency=100)
    elapsed = time.monotonic() - began
    assert results == ["nap"] * 100
    assert elapsed < 3.0, f"100 calls of 0.1 s took {elapsed:.2f} s: they did not overlap"


def test_async_concurrency_bounds_the_calls_running_at_once(start, proxy):
    server = start(async_concurrency=3)
    proxy.gather([("nap", (0.05,))] * 12, concurrency=12)
    assert server.state["most"] == 3


def test_async_concurrency_zero_runs_coroutines_on_the_worker_threads(start, proxy):
    server = start(async_concurrency=0)
    began = time.monotonic()
    proxy.gather([("nap", (0.1,))] * 4, concurrency=4)
    assert time.monotonic() - began >= 0.4
    assert server.state["most"] == 1


def test_plain_functions_answer_while_coroutines_await(start, proxy):
    start()
    sleeping = [proxy.future.nap(1.0) for _ in range(20)]
    began = time.monotonic()
    assert proxy.plain(1) == 2
    assert time.monotonic() - began < 0.5
    assert [f.result(WAIT) for f in sleeping] == ["nap"] * 20


def test_the_prefetch_makes_room_for_the_coroutines(start):
    server = start()
    assert server.prefetch_count == 4 * 1 + 100


def test_a_server_without_coroutines_keeps_its_prefetch(broker_url, server_id):
    server = Server(broker_url, server_id=server_id, concurrency=2)
    server.register_function(lambda: 1, "one")
    assert server.prefetch_count == 8


def test_stop_waits_for_coroutines_in_flight(start, proxy):
    server = start()
    futures = [proxy.future.nap(0.5) for _ in range(5)]
    deadline = time.monotonic() + WAIT
    while server.state["now"] < 5:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert server.stop(grace=5) == 0
    assert [f.result(WAIT) for f in futures] == ["nap"] * 5


def test_coroutines_cut_off_by_the_grace_run_their_finally_before_stop_returns(start, proxy):
    server = start()
    for _ in range(3):
        proxy.cast.nap(30)
    deadline = time.monotonic() + WAIT
    while server.state["now"] < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert server.stop(grace=0.2) == 3
    assert server.state["now"] == 0  # each nap's finally ran
