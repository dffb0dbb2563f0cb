"""A server inside the application's own event loop: ``await server.serve_async()`` and AsyncServer.

The server's coroutine handlers must run as tasks on the application's loop (not on a loop of the
server's own), plain functions on the worker threads, and cancelling the serving task must stop
the server gracefully without blocking that loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import rpc
from rpc import AsyncProxy, Proxy, Server, current_call
from rpc.server import AsyncServer, BaseServer

pytestmark = pytest.mark.integration

WAIT = 20  # seconds: the bound on every wait in this module
#: Nothing listens here.
UNREACHABLE = "amqp://guest:guest@127.0.0.1:1//"


def run(scenario: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(scenario, WAIT * 2))


class Seen:
    """What the handlers saw: the loop and thread they ran on, and the calls running at once."""

    def __init__(self) -> None:
        self.loops: list[asyncio.AbstractEventLoop] = []
        self.threads: list[str] = []
        self.now = 0
        self.most = 0
        self.started = asyncio.Event()


def register(server: BaseServer, seen: Seen) -> None:
    @server.expose
    async def nap(seconds: float) -> str:
        seen.loops.append(asyncio.get_running_loop())
        seen.now += 1
        seen.most = max(seen.most, seen.now)
        seen.started.set()
        try:
            await asyncio.sleep(seconds)
        finally:
            seen.now -= 1
        call = current_call()
        assert call is not None
        return call.method

    @server.expose
    async def whoami() -> dict[str, Any]:
        call = current_call()
        assert call is not None
        return {"method": call.method, "server_id": call.server_id,
                "request_id": call.context.get("request_id")}

    @server.expose
    def add(a: int, b: int) -> int:
        seen.threads.append(threading.current_thread().name)
        return a + b


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"waited {WAIT} s for {what}"
        await asyncio.sleep(0.01)


async def serving(server: Server) -> asyncio.Task[None]:
    """Start ``server.serve_async()`` as a task of the running loop; return once it serves."""
    task = asyncio.create_task(server.serve_async(grace=WAIT))
    await until(lambda: server.running or task.done(), "the server to start")
    if task.done():
        task.result()  # raises what made it fail
    return task


async def cancelled(task: asyncio.Task[None]) -> None:
    """Cancel a serving task and wait for it: it must end in the cancellation."""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_a_server_inside_the_app_loop_answers_plain_and_async_handlers(broker_url, server_id):
    async def scenario() -> None:
        seen = Seen()
        server = Server(broker_url, server_id=server_id)
        register(server, seen)
        task = await serving(server)
        async with AsyncProxy(broker_url, server_id=server_id, timeout=WAIT) as proxy:
            assert await proxy.nap(0.01) == "nap"
            assert await proxy.add(2, 3) == 5
        with Proxy(broker_url, server_id=server_id, timeout=WAIT) as blocking:
            assert await asyncio.to_thread(blocking.add, 4, 5) == 9
        assert seen.loops == [asyncio.get_running_loop()]  # the application's loop
        # Plain functions run off the loop: on a worker, or on the server's I/O thread.
        assert seen.threads and all(name.startswith(("rpc-worker-", "rpc-server-io-"))
                                    for name in seen.threads)
        assert not any(t.name.startswith("rpc-server-loop") for t in threading.enumerate())
        await cancelled(task)
        assert not server.running

    run(scenario())


def test_a_hundred_sleeping_calls_run_at_once_on_the_app_loop(broker_url, server_id):
    async def scenario() -> float:
        seen = Seen()
        server = Server(broker_url, server_id=server_id)
        register(server, seen)
        task = await serving(server)
        with Proxy(broker_url, server_id=server_id, timeout=WAIT) as proxy:
            warm = await asyncio.to_thread(proxy.gather, [("nap", (0.0,))] * 10, concurrency=10)
            assert warm == ["nap"] * 10
            began = time.monotonic()
            results = await asyncio.to_thread(
                proxy.gather, [("nap", (0.1,))] * 100, concurrency=100)
            elapsed = time.monotonic() - began
        await cancelled(task)
        assert results == ["nap"] * 100
        assert seen.most > 50
        return elapsed

    elapsed = run(scenario())
    assert elapsed < 2.0, f"100 calls of 0.1 s took {elapsed:.2f} s: they did not overlap"


def test_async_concurrency_bounds_the_tasks_on_the_app_loop(broker_url, server_id):
    async def scenario() -> None:
        seen = Seen()
        server = Server(broker_url, server_id=server_id, async_concurrency=3)
        register(server, seen)
        task = await serving(server)
        with Proxy(broker_url, server_id=server_id, timeout=WAIT) as proxy:
            await asyncio.to_thread(proxy.gather, [("nap", (0.05,))] * 12, concurrency=12)
        await cancelled(task)
        assert seen.most == 3

    run(scenario())


def test_cancelling_serve_async_stops_the_server_and_lets_a_call_in_flight_finish(
        broker_url, server_id):
    async def scenario() -> None:
        seen = Seen()
        server = Server(broker_url, server_id=server_id)
        register(server, seen)
        task = await serving(server)
        ticks = 0

        async def ticker() -> None:  # shows whether the loop stays free while the server stops
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        with Proxy(broker_url, server_id=server_id, timeout=WAIT) as proxy:
            in_flight = proxy.future.nap(0.5)
            await asyncio.wait_for(seen.started.wait(), WAIT)
            ticking = asyncio.create_task(ticker())
            began = time.monotonic()
            await cancelled(task)
            stopping = time.monotonic() - began
            ticking.cancel()
            assert await asyncio.to_thread(in_flight.result, WAIT) == "nap"
        assert not server.running
        assert stopping >= 0.3, "the stop did not wait for the call in flight"
        assert ticks >= 10, f"the loop ticked {ticks} times in {stopping:.2f} s of stopping"

    run(scenario())


def test_handler_context_is_the_call_in_async_handlers_on_the_app_loop(broker_url, server_id):
    async def scenario() -> None:
        server = Server(broker_url, server_id=server_id)
        register(server, Seen())
        task = await serving(server)
        async with AsyncProxy(broker_url, server_id=server_id, timeout=WAIT) as proxy:
            answers = await asyncio.gather(*(
                proxy.with_context(request_id=f"r-{n}").whoami() for n in range(20)))
        await cancelled(task)
        assert [a["request_id"] for a in answers] == [f"r-{n}" for n in range(20)]
        assert {a["method"] for a in answers} == {"whoami"}
        assert {a["server_id"] for a in answers} == {server_id}
        assert current_call() is None  # nothing leaks into the application's own context

    run(scenario())


def test_serve_async_returns_when_the_server_is_stopped_from_another_thread(broker_url, server_id):
    async def scenario() -> None:
        server = Server(broker_url, server_id=server_id)
        task = await serving(server)
        assert await asyncio.to_thread(server.stop, 5) == 0
        await asyncio.wait_for(task, WAIT)  # returns, not cancelled
        assert not server.running

    run(scenario())


def test_stop_on_the_loop_the_handlers_run_on_is_refused(broker_url, server_id):
    async def scenario() -> None:
        server = Server(broker_url, server_id=server_id)
        task = await serving(server)
        with pytest.raises(RuntimeError, match="serve_async"):
            server.stop()
        assert server.running
        await cancelled(task)

    run(scenario())


def test_serve_async_on_a_running_server_is_a_runtime_error(broker_url, server_id):
    async def scenario() -> None:
        server = Server(broker_url, server_id=server_id)
        task = await serving(server)
        with pytest.raises(RuntimeError, match="already running"):
            await server.serve_async()
        await cancelled(task)

    run(scenario())


def test_serve_async_raises_connection_error_when_the_broker_stays_unreachable():
    async def scenario() -> None:
        server = Server(UNREACHABLE, server_id="never", connect_retry=0.5)
        with pytest.raises(rpc.ConnectionError):
            await server.serve_async()
        assert not server.running

    run(scenario())


def test_cancelling_serve_async_while_it_connects_gives_up_at_once():
    async def scenario() -> float:
        server = Server(UNREACHABLE, server_id="never", connect_retry=WAIT)
        task = asyncio.create_task(server.serve_async())
        await asyncio.sleep(0.3)
        began = time.monotonic()
        await cancelled(task)
        assert not server.running
        return time.monotonic() - began

    assert run(scenario()) < 3.0


def test_settings_of_a_running_server_cannot_change(broker_url, server_id):
    async def scenario() -> None:
        server = Server(broker_url, server_id=server_id)
        task = await serving(server)
        with pytest.raises(RuntimeError):
            server.concurrency = 4
        await cancelled(task)
        server.concurrency = 4  # stopped: for the next start
        assert server.options.concurrency == 4

    run(scenario())


# -- AsyncServer -----------------------------------------------------------------------------------

def test_async_server_serves_within_async_with(broker_url, server_id):
    async def scenario() -> None:
        seen = Seen()
        server = AsyncServer(broker_url, server_id=server_id)
        register(server, seen)
        async with server:
            assert server.running
            async with AsyncProxy(broker_url, server_id=server_id, timeout=WAIT) as proxy:
                assert await proxy.nap(0.01) == "nap"
                assert await proxy.add(1, 2) == 3
            assert server.status()["server_id"] == server_id
        assert not server.running
        assert seen.loops == [asyncio.get_running_loop()]

    run(scenario())


def test_async_server_start_and_stop_return_the_calls_abandoned(broker_url, server_id):
    async def scenario() -> None:
        seen = Seen()
        server = AsyncServer(broker_url, server_id=server_id)
        register(server, seen)
        await server.start()
        with Proxy(broker_url, server_id=server_id, timeout=WAIT) as proxy:
            in_flight = proxy.future.nap(0.3)
            await asyncio.wait_for(seen.started.wait(), WAIT)
            assert await server.stop(grace=WAIT) == 0
            assert await asyncio.to_thread(in_flight.result, WAIT) == "nap"
        assert not server.running
        assert await server.stop() == 0  # stopping again does nothing

    run(scenario())


def test_async_server_serve_returns_once_stopped(broker_url, server_id):
    async def scenario() -> None:
        server = AsyncServer(broker_url, server_id=server_id)
        register(server, Seen())
        serving_task = asyncio.create_task(server.serve())
        await until(lambda: server.running or serving_task.done(), "the server to start")
        async with AsyncProxy(broker_url, server_id=server_id, timeout=WAIT) as proxy:
            assert await proxy.add(2, 2) == 4
        await server.stop(grace=5)
        await asyncio.wait_for(serving_task, WAIT)
        assert not server.running

    run(scenario())


def test_async_server_is_not_a_blocking_server() -> None:
    server = AsyncServer(UNREACHABLE, server_id="x")
    assert isinstance(server, BaseServer) and not isinstance(server, Server)
    assert "AsyncServer" in repr(server)
