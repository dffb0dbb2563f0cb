"""AsyncProxy on RabbitMQ: what spares a sequential call loop passes. A call's confirm waits
below the socket's low-water mark for its reply, yet a lone nack is still read within a few ms
and the mark comes down once calls stop; a reply wakes its task in the loop pass that read it."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Coroutine
from typing import Any

import pytest

import rpc
from rpc import Server
from rpc.client.aio import AsyncProxy
from rpc.core.frames import CONFIRM_MARK
from rpc.transport.aio import MARK_CHECK

WAIT = 15  # seconds: the bound on every wait in this module

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_RCVLOWAT"), reason="no SO_RCVLOWAT")


def run(scenario: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(scenario, WAIT))


@pytest.fixture
def url(broker_url: str) -> str:
    """RabbitMQ only: the loop drives the socket there (memory:// goes through a bridge)."""
    return broker_url


def mark(proxy: AsyncProxy) -> int:
    return int(proxy._link._sock.getsockopt(  # type: ignore[union-attr]
        socket.SOL_SOCKET, socket.SO_RCVLOWAT))


async def until(condition: Any) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "waited too long"
        await asyncio.sleep(0.005)


def test_the_mark_is_raised_while_calls_go_out_and_lowered_once_they_stop(
        url, server_id, make_server):
    make_server(register=lambda s: s.register_function(lambda a, b: a + b, "add"))

    async def scenario() -> tuple[list[int], int]:
        async with AsyncProxy(url, server_id=server_id) as proxy:
            marks = []
            for i in range(20):
                assert await proxy.add(i, 1) == i + 1
                marks.append(mark(proxy))
            await asyncio.sleep(MARK_CHECK * 2 + 0.05)  # two checks: the last finds no publish
            return marks, mark(proxy)

    during, after = run(scenario())
    assert during == [CONFIRM_MARK] * 20
    assert after == 1  # a heartbeat (8 bytes) wakes the loop again on its own


def test_a_lone_nack_fails_its_call_within_a_mark_check(url, server_id, make_server):
    """The broker refuses a publish to a full queue: its nack (21 bytes, below the mark, and
    nothing follows it) is read by the mark's check, not left until more bytes come."""
    gate = threading.Event()
    started: list[int] = []

    def hold(n: int) -> int:
        started.append(n)
        gate.wait(WAIT)
        return n

    server: Server = make_server(
        register=lambda s: s.register_function(hold), concurrency=1, prefetch=1,
        queue_arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    assert server is not None

    async def scenario() -> float:
        async with AsyncProxy(url, server_id=server_id, timeout=WAIT) as proxy:
            session = proxy._link._session  # type: ignore[union-attr]
            running = asyncio.ensure_future(proxy.hold(1))  # taken by the server
            await until(lambda: started)
            waiting = asyncio.ensure_future(proxy.hold(2))  # fills the queue
            # Out, and confirmed: nothing else waits below the mark for the nack to join.
            await until(lambda: len(proxy._table) == 2 and not session.awaiting_confirms)
            begun = time.monotonic()
            try:
                with pytest.raises(rpc.Refused):
                    await proxy.hold(3)  # finds it full
                return time.monotonic() - begun
            finally:
                gate.set()
                assert await running == 1
                assert await waiting == 2

    assert run(scenario()) < 0.5


def test_a_reply_wakes_its_task_in_the_loop_pass_that_read_it(url, server_id, make_server):
    make_server(register=lambda s: s.register_function(lambda a, b: a + b, "add"))

    async def scenario() -> tuple[int, int]:
        async with AsyncProxy(url, server_id=server_id) as proxy:
            await proxy.add(0, 0)  # connected, the availability check done
            selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
            select = selector.select
            polls = [0]

            def counting(timeout: float | None = None) -> Any:
                polls[0] += 1
                return select(timeout)

            selector.select = counting
            try:
                for i in range(100):
                    assert await proxy.add(i, 1) == i + 1
            finally:
                selector.select = select
            return polls[0], 100

    polls, calls = run(scenario())
    # One poll per call (a mark check may add a few); a wake-up one pass later made it two.
    assert polls < calls * 1.5
