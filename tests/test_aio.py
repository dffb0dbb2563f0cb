"""AsyncProxy: awaited calls on RabbitMQ and memory://, timeouts, cancellation, the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Coroutine
from typing import Any

import pytest

import rpc
import rpc.client.calling
from rpc import (
    BroadcastReply,
    ConnectionError,
    RPCError,
    RPCTimeout,
    Server,
    UnknownServer,
    current_call,
)
from rpc.client.aio import AsyncProxy

WAIT = 10  # seconds: the bound on every wait in this module


def run(scenario: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(scenario, WAIT))


class Math:
    def mul(self, a, b):
        return a * b


class Gates(dict[str, threading.Event]):
    """Events the served ``hold(key)`` waits on: the test decides when a reply is sent."""

    def __missing__(self, key: str) -> threading.Event:
        return self.setdefault(key, threading.Event())


def services(server: Server, gates: Gates, notes: list[Any]) -> None:
    server.register_function(lambda a, b: a + b, "add")
    server.register_instance(Math(), "math")

    @server.expose
    def sleep(seconds):
        time.sleep(seconds)
        return seconds

    @server.expose
    def fail(message):
        raise ValueError(message)

    @server.expose
    def hold(key):
        gates[key].wait(WAIT)
        return key

    @server.expose
    def note(value):
        notes.append(value)

    @server.expose
    def context():
        return current_call().context


@pytest.fixture
def gates() -> Gates:
    return Gates()


@pytest.fixture
def notes() -> list[Any]:
    """What the served ``note(value)`` was called with."""
    return []


@pytest.fixture
def served(make_server, gates, notes) -> Server:
    return make_server(register=lambda server: services(server, gates, notes), concurrency=4)


@pytest.fixture
def connect(url, server_id, served):
    """``async with connect() as proxy``: an AsyncProxy to the served functions."""
    return lambda **options: AsyncProxy(url, server_id=server_id, **options)


async def until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


# -- calls ---------------------------------------------------------------------------------------

def test_awaiting_a_remote_function_returns_its_result(connect):
    async def scenario():
        async with connect() as proxy:
            return await proxy.add(2, 3)

    assert run(scenario()) == 5


def test_instance_methods_are_reached_by_dotted_attributes(connect):
    async def scenario():
        async with connect() as proxy:
            return await proxy.math.mul(2, 4)

    assert run(scenario()) == 8


def test_call_reaches_a_method_by_name(connect):
    async def scenario():
        async with connect() as proxy:
            return await proxy.call("math.mul", 3, b=5)

    assert run(scenario()) == 15


def test_remote_exception_is_raised_at_the_await(connect):
    async def scenario():
        async with connect() as proxy:
            await proxy.fail("boom")

    with pytest.raises(ValueError, match="boom"):
        run(scenario())


def test_call_to_an_undeclared_server_raises_unknown_server(url):
    async def scenario():
        async with AsyncProxy(url, server_id="nobody-serves-this") as proxy:
            await proxy.add(1, 2)

    with pytest.raises(UnknownServer):
        run(scenario())


def test_concurrent_calls_each_get_their_own_result(connect):
    async def scenario():
        async with connect() as proxy:
            return await asyncio.gather(*(proxy.add(i, 1000) for i in range(200)))

    assert run(scenario()) == [i + 1000 for i in range(200)]


# -- timeouts ------------------------------------------------------------------------------------

def test_set_timeout_raises_rpc_timeout_without_a_reply_in_time(connect):
    async def scenario():
        async with connect() as proxy:
            started = time.monotonic()
            with pytest.raises(RPCTimeout):
                await proxy.set_timeout(0.2).sleep(2)
            return time.monotonic() - started

    assert run(scenario()) < 1.5


def test_the_timeout_option_is_the_default_for_every_call(connect):
    async def scenario():
        async with connect(timeout=0.2) as proxy:
            await proxy.sleep(2)

    with pytest.raises(RPCTimeout):
        run(scenario())


def test_set_timeout_is_for_one_call_only(connect):
    async def scenario():
        async with connect() as proxy:
            proxy.set_timeout(0.1)
            return await proxy.sleep(0.3)

    assert run(scenario()) == 0.3


# -- the event loop ------------------------------------------------------------------------------

def test_the_event_loop_keeps_running_while_a_call_is_pending(connect):
    async def scenario():
        async with connect() as proxy:
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            task = asyncio.create_task(ticker())
            await proxy.sleep(0.5)
            task.cancel()
            return ticks

    assert run(scenario()) >= 10  # about 50 when nothing blocks the loop; 0 or 1 when the call does


def test_calls_in_flight_take_no_thread_each(connect, gates):
    async def scenario():
        async with connect() as proxy:
            before = threading.active_count()
            calls = [asyncio.create_task(proxy.hold("gate")) for _ in range(100)]
            await until(lambda: proxy.pending_calls == 100, "100 pending calls")
            during = threading.active_count()
            gates["gate"].set()
            await asyncio.gather(*calls)
            return during - before

    assert run(scenario()) <= 2


def test_on_rabbitmq_the_loop_reads_the_connection_without_a_thread(url, connect):
    if not url.startswith("amqp"):
        pytest.skip("other transports are bridged through a reader thread")

    def threads() -> set[str]:  # but the executor's, which connected
        return {t.name for t in threading.enumerate() if not t.name.startswith("asyncio_")}

    async def scenario():
        before = threads()
        async with connect() as proxy:
            await proxy.add(1, 2)
            return threads() - before

    assert run(scenario()) == set()


def test_future_returns_a_task_whose_request_is_already_sent(connect, gates):
    async def scenario():
        async with connect() as proxy:
            task = proxy.future.hold("gate")
            assert isinstance(task, asyncio.Task)
            await until(lambda: proxy.pending_calls == 1, "the request to be pending")
            gates["gate"].set()
            return await task

    assert run(scenario()) == "gate"


def test_callback_runs_on_success_and_the_state_finishes(connect):
    async def scenario():
        async with connect() as proxy:
            results: list[Any] = []
            uid = proxy.callback(results.append).add(2, 5)
            assert proxy.get_callback_state(uid) in (rpc.CallbackState.WAITING,
                                                      rpc.CallbackState.PROCESSING)
            await until(lambda: proxy.get_callback_state(uid) == rpc.CallbackState.FINISHED,
                        "the callback")
            return results, proxy.get_num_waiting_callbacks()

    assert run(scenario()) == ([7], 0)


def test_callback_on_error_hears_the_remote_exception(connect):
    async def scenario():
        async with connect() as proxy:
            errors: list[BaseException] = []

            async def on_error(exc: BaseException) -> None:  # a coroutine function is awaited
                errors.append(exc)

            proxy.callback(None, on_error).fail("no")
            await until(lambda: bool(errors), "the error callback")
            return errors[0]

    assert isinstance(run(scenario()), ValueError)


def test_a_proxy_refuses_calls_from_another_event_loop(connect):
    proxy = connect()
    run(proxy.connect())
    try:
        with pytest.raises(RPCError, match="another event loop"):
            run(proxy.add(1, 2))
    finally:
        asyncio.run(proxy.close())


# -- cancellation --------------------------------------------------------------------------------

def test_cancelling_the_awaiting_task_forgets_the_call(connect, gates):
    async def scenario():
        async with connect() as proxy:
            task = asyncio.create_task(proxy.hold("cancelled"))
            await until(lambda: proxy.pending_calls == 1, "the call to be pending")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            pending = proxy.pending_calls
            gates["cancelled"].set()
            return pending

    assert run(scenario()) == 0


def test_the_late_reply_of_a_cancelled_call_is_dropped(connect, gates, monkeypatch):
    async def scenario():
        async with connect() as proxy:
            # A server that never hears the cancel (a v1.0 server, a cancel lost) still
            # replies, late; a v1.1 server that hears it sends no reply at all.
            monkeypatch.setattr(proxy, "_cancel_on_server", lambda pending: None)
            task = asyncio.create_task(proxy.hold("late"))
            await until(lambda: proxy.pending_calls == 1, "the call to be pending")
            task.cancel()
            gates["late"].set()
            await until(lambda: proxy.replies_dropped == 1, "the late reply")
            return await proxy.add(1, 1)

    assert run(scenario()) == 2


def test_wait_for_cancels_a_call_that_overruns(connect, gates):
    async def scenario():
        async with connect() as proxy:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(proxy.hold("overrun"), 0.2)
            pending = proxy.pending_calls
            gates["overrun"].set()
            return pending

    assert run(scenario()) == 0


# -- connecting and closing ----------------------------------------------------------------------

def test_constructing_does_not_connect():
    proxy = AsyncProxy("amqp://guest:guest@127.0.0.1:1//", connect_retry=0.1)
    assert "not connected" in repr(proxy)


def test_an_option_proxy_does_not_take_is_refused_at_construction():
    with pytest.raises(TypeError):
        AsyncProxy("memory://", server_ide="calc")


def test_an_unreachable_broker_raises_connection_error_at_the_first_call():
    async def scenario():
        proxy = AsyncProxy("amqp://guest:guest@127.0.0.1:1//", connect_retry=0.1)
        await proxy.add(1, 2)

    with pytest.raises(ConnectionError):
        run(scenario())


def test_the_first_call_connects_without_async_with(connect):
    async def scenario():
        proxy = connect()
        try:
            return await proxy.add(1, 2)
        finally:
            await proxy.close()

    assert run(scenario()) == 3


def test_calls_after_close_are_refused(connect):
    async def scenario():
        async with connect() as proxy:
            pass
        await proxy.add(1, 2)

    with pytest.raises(RPCError, match="closed"):
        run(scenario())


def test_close_fails_the_calls_still_pending(connect, gates):
    async def scenario():
        proxy = await connect().connect()
        task = asyncio.create_task(proxy.hold("closing"))
        await until(lambda: proxy.pending_calls == 1, "the call to be pending")
        await proxy.close()
        try:
            await task
        finally:
            gates["closing"].set()

    with pytest.raises(RPCError, match="closed"):
        run(scenario())


def test_a_lost_connection_is_reopened_off_the_event_loop(connect, monkeypatch):
    threads: list[threading.Thread] = []
    real_open = rpc.client.calling.open_connection

    def recording_open(*args, **kwargs):
        threads.append(threading.current_thread())
        return real_open(*args, **kwargs)

    async def scenario():
        async with connect() as proxy:
            monkeypatch.setattr(rpc.client.calling, "open_connection", recording_open)
            await proxy._link.close()
            return await proxy.add(2, 2)

    assert run(scenario()) == 4
    assert threads and threading.main_thread() not in threads


# -- cast and broadcast --------------------------------------------------------------------------

def test_cast_returns_none_at_once_and_the_server_runs_it(connect, gates, notes):
    async def scenario():
        async with connect() as proxy:
            assert await proxy.cast.hold("never-released") is None  # no reply awaited
            assert await proxy.cast.note("hello") is None
            await until(lambda: notes == ["hello"], "the cast to run")
            gates["never-released"].set()

    run(scenario())


def test_broadcast_lists_a_reply_from_every_server(connect, make_server, gates, notes):
    make_server(register=lambda server: services(server, gates, notes))

    async def scenario():
        async with connect() as proxy:
            return await proxy.broadcast(timeout=0.5).add(1, 1)

    replies = run(scenario())
    assert len(replies) == 2 and all(isinstance(r, BroadcastReply) for r in replies)
    assert [r.result for r in replies] == [2, 2]


def test_broadcast_cast_reaches_every_server_and_returns_none(connect, make_server, gates, notes):
    make_server(register=lambda server: services(server, gates, notes))

    async def scenario():
        async with connect() as proxy:
            assert await proxy.broadcast.cast.note("reload") is None
            await until(lambda: notes == ["reload", "reload"], "both servers to run the cast")

    run(scenario())


def test_only_a_broadcast_view_takes_a_timeout_by_call():
    with pytest.raises(TypeError):
        AsyncProxy("memory://").set_timeout(1)(timeout=1)


# -- gather and map ------------------------------------------------------------------------------

def test_gather_returns_results_in_order_with_exceptions_in_place(connect):
    async def scenario():
        async with connect() as proxy:
            return await proxy.gather(
                [("add", (1, 2)), ("math.mul", (3, 4), {}), ("fail", ("x",)),
                 ("add", (), {"a": 1, "b": 1})],
                concurrency=2, timeout=WAIT,
            )

    results = run(scenario())
    assert results[:2] == [3, 12] and results[3] == 2
    assert isinstance(results[2], ValueError)


def test_gather_puts_a_timeout_in_place_of_a_call_that_overran(connect):
    async def scenario():
        async with connect() as proxy:
            return await proxy.gather([("sleep", (0,)), ("sleep", (1,))], timeout=0.3)

    results = run(scenario())
    assert results[0] == 0 and isinstance(results[1], RPCTimeout)


def test_gather_keeps_at_most_concurrency_calls_in_flight(connect):
    async def scenario():
        async with connect() as proxy:
            peak = 0

            async def sample():
                nonlocal peak
                while True:
                    peak = max(peak, proxy.pending_calls)
                    await asyncio.sleep(0)

            sampler = asyncio.create_task(sample())
            results = await proxy.gather([("sleep", (0.02,))] * 12, concurrency=3)
            sampler.cancel()
            return results, peak

    results, peak = run(scenario())
    assert results == [0.02] * 12 and peak == 3


def test_map_streams_results_in_order(connect):
    async def scenario():
        async with connect() as proxy:
            return [r async for r in proxy.map("add", ((n, n) for n in range(50)), concurrency=10)]

    assert run(scenario()) == [2 * n for n in range(50)]


def test_map_raises_the_first_failure_where_it_occurs(connect):
    async def scenario():
        async with connect() as proxy:
            seen = []
            with pytest.raises(TypeError):
                async for result in proxy.map("sleep", [0, "not a number", 0]):
                    seen.append(result)
            return seen

    assert run(scenario()) == [0]


def test_leaving_map_early_cancels_the_calls_in_flight(connect, gates):
    async def scenario():
        async with connect() as proxy:
            gates["a"].set()
            async with contextlib.aclosing(proxy.map("hold", ["a", "b", "c"])) as stream:
                first = await anext(stream)
            pending = proxy.pending_calls
            gates["b"].set()
            gates["c"].set()
            return first, pending

    assert run(scenario()) == ("a", 0)


# -- context -------------------------------------------------------------------------------------

def test_with_context_reaches_the_handlers_current_call(connect):
    async def scenario():
        async with connect() as proxy:
            return await proxy.with_context(request_id="r-1", user="ann").context()

    assert run(scenario()) == {"request_id": "r-1", "user": "ann"}


def test_a_context_too_large_for_one_frame_fails_its_call_alone(connect, url):
    if url == "memory://":
        pytest.skip("memory:// has no frames to overflow")

    async def scenario():
        async with connect() as proxy:
            with pytest.raises(ValueError, match="do not fit in one AMQP frame"):
                await proxy.with_context(blob="x" * 200_000).add(1, 2)
            return await proxy.add(2, 3), proxy.pending_calls

    assert run(scenario()) == (5, 0)


def test_an_async_handler_calling_on_through_an_async_proxy_propagates_the_context(
    connect, make_server, url, server_id,
):
    inner = AsyncProxy(url, server_id=server_id)

    async def relay():
        return await inner.context()

    make_server(server_id=f"{server_id}-outer",
                register=lambda server: server.register_function(relay))

    async def scenario():
        async with AsyncProxy(url, server_id=f"{server_id}-outer") as proxy:
            try:
                return await proxy.with_context(trace="t-9").relay()
            finally:
                await inner.close()

    assert run(scenario()) == {"trace": "t-9"}
