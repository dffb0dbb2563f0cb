"""Long calls (protocol v1.1): keep-alives that prove the server alive, progress, cancellation."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import rpc
from rpc import AsyncProxy, Cancelled, Proxy, Server, ServerLost, current_call

pytestmark = pytest.mark.integration

WAIT = 20  # seconds: the bound on every wait in this module


class Seen:
    """What the handlers saw, for the tests to watch."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.cancelled = threading.Event()
        self.runs = 0
        self.cancels = 0


@pytest.fixture
def seen() -> Seen:
    return Seen()


def handlers(seen: Seen) -> Any:
    """Registers the handlers these tests call, which tell ``seen`` what they saw."""
    def register(server: Server) -> None:
        @server.expose
        def work(seconds: float) -> str:
            seen.runs += 1
            seen.started.set()
            call = current_call()
            assert call is not None
            if call.cancelled.wait(seconds):
                seen.cancels += 1
                seen.cancelled.set()
                call.check_cancelled()
            return "done"

        @server.expose
        def work_or_fail(seconds: float) -> str:
            """work(seconds), but a negative ``seconds`` fails once a work call has started."""
            if seconds >= 0:
                return work(seconds)
            assert seen.started.wait(WAIT)
            raise ValueError("failed")

        @server.expose
        async def awork(seconds: float) -> str:
            seen.started.set()
            try:
                await asyncio.sleep(seconds)
            except asyncio.CancelledError:
                seen.cancelled.set()
                raise
            return "done"

        @server.expose
        def steps(n: int) -> int:
            call = current_call()
            assert call is not None
            for i in range(n):
                call.progress(i + 1, total=n, message=f"step {i + 1}")
                time.sleep(0.15)  # over the server's throttle: each report goes out
            return n

    return register


@pytest.fixture
def served(make_server: Any, seen: Seen) -> Server:
    return make_server(register=handlers(seen), concurrency=2)  # type: ignore[no-any-return]


def wait_until(condition: Any, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# -- progress --------------------------------------------------------------------------------------

def test_progress_reaches_on_progress_in_order(served: Server, make_proxy: Any) -> None:
    reports: list[rpc.Progress] = []
    assert make_proxy().on_progress(reports.append).steps(3) == 3
    wait_until(lambda: len(reports) == 3, "three progress reports")
    assert [(r.done, r.total, r.message) for r in reports] == [
        (1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]


def test_a_future_holds_the_latest_progress(served: Server, make_proxy: Any) -> None:
    future = make_proxy().future.steps(3)
    assert future.result(WAIT) == 3
    wait_until(lambda: future.progress is not None and future.progress.done == 3,
               "the last report")


def test_an_async_proxy_hears_progress(served: Server, url: str, server_id: str) -> None:
    async def scenario() -> list[float]:
        reports: list[float] = []
        async with AsyncProxy(url, server_id=server_id) as proxy:
            await proxy.on_progress(lambda r: reports.append(r.done)).steps(2)
        return reports

    assert asyncio.run(asyncio.wait_for(scenario(), WAIT)) == [1, 2]


def test_a_tracked_call_is_iterated_for_its_progress_then_awaited(
        served: Server, url: str, server_id: str) -> None:
    async def scenario() -> tuple[list[float], int]:
        async with AsyncProxy(url, server_id=server_id) as proxy:
            call = proxy.tracked.steps(3)
            reports = [report.done async for report in call]
            return reports, await call

    assert asyncio.run(asyncio.wait_for(scenario(), WAIT)) == ([1, 2, 3], 3)


def test_only_an_async_proxy_tracks_a_call(served: Server, make_proxy: Any) -> None:
    with pytest.raises(TypeError, match="on_progress"):
        make_proxy().on_progress(print).tracked.steps(1)


# -- cancellation ----------------------------------------------------------------------------------

def test_cancelling_a_future_sets_the_handlers_cancelled_flag(
        served: Server, make_proxy: Any, seen: Seen) -> None:
    future = make_proxy().future.work(30)
    assert seen.started.wait(WAIT)
    assert future.cancel()
    assert seen.cancelled.wait(5), "the handler never saw the cancel"


def test_a_passed_deadline_cancels_the_call_on_the_server(
        served: Server, make_proxy: Any, seen: Seen) -> None:
    with pytest.raises(rpc.RPCTimeout):
        make_proxy().set_timeout(1).work(30)
    assert seen.cancelled.wait(5), "the handler never saw the cancel"


def cancel_the_awaiting_task(url: str, server_id: str, seen: Seen) -> None:
    """Cancel the task that awaits ``awork(30)`` once the handler runs."""
    async def scenario() -> None:
        async with AsyncProxy(url, server_id=server_id) as proxy:
            task = asyncio.ensure_future(proxy.awork(30))
            await asyncio.to_thread(seen.started.wait, WAIT)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(asyncio.wait_for(scenario(), WAIT))


def test_cancelling_the_awaiting_task_cancels_an_async_handler(
        served: Server, url: str, server_id: str, seen: Seen) -> None:
    cancel_the_awaiting_task(url, server_id, seen)
    assert seen.cancelled.wait(5), "the async handler was not cancelled"


def test_cancelling_the_awaiting_task_cancels_an_async_handler_run_on_a_worker_thread(
        make_server: Any, url: str, server_id: str, seen: Seen) -> None:
    make_server(register=handlers(seen), async_concurrency=0)
    cancel_the_awaiting_task(url, server_id, seen)
    assert seen.cancelled.wait(5), "the async handler was not cancelled"


def test_proxy_cancel_gives_a_callback_call_rpc_cancelled(
        served: Server, make_proxy: Any, seen: Seen) -> None:
    proxy = make_proxy()
    errors: list[BaseException] = []
    uid = proxy.callback(None, errors.append).work(30)
    assert seen.started.wait(WAIT)
    assert proxy.cancel(uid)
    wait_until(lambda: bool(errors), "the error callback")
    assert isinstance(errors[0], Cancelled)
    assert seen.cancelled.wait(5)
    assert not proxy.cancel(uid)


def test_a_request_cancelled_while_queued_is_skipped(
        make_server: Any, make_proxy: Any) -> None:
    runs: list[str] = []
    gate = threading.Event()

    def register(server: Server) -> None:
        @server.expose
        def record(tag: str) -> str:
            runs.append(tag)
            gate.wait(WAIT)
            return tag

    make_server(register=register, concurrency=1, prefetch=1)
    proxy = make_proxy()
    first = proxy.future.record("first")
    wait_until(lambda: runs == ["first"], "the first call to run")
    queued = proxy.future.record("queued")
    time.sleep(0.2)
    assert queued.cancel()
    time.sleep(0.5)  # the cancel reaches the server before the request's turn comes
    gate.set()
    assert first.result(WAIT) == "first"
    time.sleep(0.5)
    assert runs == ["first"]


def test_cancelling_the_task_awaiting_an_async_gather_cancels_its_calls_on_the_server(
        served: Server, url: str, server_id: str, seen: Seen) -> None:
    async def scenario() -> None:
        async with AsyncProxy(url, server_id=server_id) as proxy:
            task = asyncio.ensure_future(proxy.gather([("work", (30,)), ("work", (30,))]))
            await asyncio.to_thread(wait_until, lambda: seen.runs == 2, "both calls")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.to_thread(wait_until, lambda: seen.cancels == 2, "both cancels", 5)

    asyncio.run(asyncio.wait_for(scenario(), WAIT))


def test_breaking_out_of_an_async_map_cancels_its_calls_in_flight_on_the_server(
        served: Server, url: str, server_id: str, seen: Seen) -> None:
    async def scenario() -> None:
        async with AsyncProxy(url, server_id=server_id) as proxy:
            async for _ in proxy.map("work", [0, 30]):
                await asyncio.to_thread(wait_until, lambda: seen.runs == 2, "the second call")
                break
            assert await asyncio.to_thread(seen.cancelled.wait, 5), "the handler never saw the cancel"

    asyncio.run(asyncio.wait_for(scenario(), WAIT))


def test_a_failure_that_ends_an_async_map_cancels_its_calls_in_flight_on_the_server(
        served: Server, url: str, server_id: str, seen: Seen) -> None:
    async def scenario() -> None:
        async with AsyncProxy(url, server_id=server_id) as proxy:
            with pytest.raises(ValueError):
                async for _ in proxy.map("work_or_fail", [-1, 30]):
                    pass
            assert await asyncio.to_thread(seen.cancelled.wait, 5), "the handler never saw the cancel"

    asyncio.run(asyncio.wait_for(scenario(), WAIT))


def test_breaking_out_of_a_sync_map_cancels_its_calls_in_flight_on_the_server(
        served: Server, make_proxy: Any, seen: Seen) -> None:
    for _ in make_proxy().map("work", [0, 30]):
        wait_until(lambda: seen.runs == 2, "the second call")
        break
    assert seen.cancelled.wait(5), "the handler never saw the cancel"


def test_a_failure_that_ends_a_sync_map_cancels_its_calls_in_flight_on_the_server(
        served: Server, make_proxy: Any, seen: Seen) -> None:
    with pytest.raises(ValueError):
        list(make_proxy().map("work_or_fail", [-1, 30]))
    assert seen.cancelled.wait(5), "the handler never saw the cancel"


def test_an_exception_that_ends_a_sync_gather_cancels_its_calls_in_flight_on_the_server(
        served: Server, make_proxy: Any, seen: Seen) -> None:
    def calls() -> Iterator[tuple[str, tuple[Any, ...]]]:
        yield "work", (30,)
        assert seen.started.wait(WAIT)
        yield "work", (object(),)  # no serializer encodes it

    with pytest.raises(rpc.SerializationError):
        make_proxy().gather(calls())
    assert seen.cancelled.wait(5), "the handler never saw the cancel"


# -- keep-alives -----------------------------------------------------------------------------------

SERVER = textwrap.dedent('''
    import sys, time
    import rpc

    server = rpc.Server(sys.argv[1], server_id=sys.argv[2])

    @server.expose
    def long(seconds):
        time.sleep(seconds)
        return "done"

    server.serve()
''')


@pytest.fixture
def server_process(broker_url: str, server_id: str, tmp_path: Any) -> Iterator[subprocess.Popen[bytes]]:
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    proc = subprocess.Popen([sys.executable, str(script), broker_url, server_id],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_a_server_killed_mid_call_fails_the_call_with_server_lost_in_three_intervals(
        broker_url: str, server_id: str, server_process: subprocess.Popen[bytes]) -> None:
    with Proxy(broker_url, server_id=server_id, keepalive=1, wait_for_ready=True) as proxy:
        wait_until(lambda: _answers(proxy), "the server to serve")
        future = proxy.future.long(60)
        time.sleep(2.5)  # the call runs, and its keep-alives come every second
        os.kill(server_process.pid, signal.SIGKILL)
        killed = time.monotonic()
        with pytest.raises(ServerLost):
            future.result(WAIT)
        assert time.monotonic() - killed < 3 * 1 + 2.5  # three intervals, and a second's scan


def test_keepalives_keep_a_long_call_alive(served: Server, make_proxy: Any) -> None:
    assert make_proxy(keepalive=0.5).work(2.5) == "done"


def test_a_stream_paused_for_credit_over_several_keepalives_goes_on_while_its_caller_lives(
        make_server: Any, make_proxy: Any) -> None:
    # RabbitMQ returns a mandatory publish to a direct reply-to address as unroutable even to a
    # live consumer: no keep-alive's return may be taken for a caller that is gone.
    def numbers(n: int) -> Iterator[int]:
        yield from range(n)

    server = make_server(register=lambda s: s.register_function(numbers))
    stream = make_proxy(keepalive=0.5).stream(timeout=10, window=2).numbers(10)
    assert next(stream) == 0
    time.sleep(2.5)  # paused for credit, over five keep-alive intervals
    assert list(stream) == list(range(1, 10))
    assert server.stats["gone_callers"] == 0


def _answers(proxy: Proxy) -> bool:
    try:
        proxy.set_timeout(1).call("system.ping")
    except rpc.RPCError:
        return False
    return True
