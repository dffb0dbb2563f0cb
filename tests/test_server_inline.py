"""A request that comes while a server has nothing else to do runs on its I/O thread, which
spares a sequential caller the hand-off to a worker, and so do all the requests of one read on
a server of ``concurrency=1``; a watchdog hands reading to a new I/O thread as soon as such
requests run long, so they never hold up the next requests, the heartbeats or the cancels, and
``concurrency`` still bounds the calls running at once."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from rpc import Server
from rpc.server import consumer

WAIT = 20


class Seen:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.threads: list[str] = []
        self.now = 0
        self.most = 0
        self.started = threading.Event()


def services(seen: Seen) -> Any:
    def register(server: Server) -> None:
        @server.expose
        def add(a: int, b: int) -> int:
            seen.threads.append(threading.current_thread().name)
            return a + b

        @server.expose
        def nap(seconds: float) -> str:
            seen.threads.append(threading.current_thread().name)
            with seen.lock:
                seen.now += 1
                seen.most = max(seen.most, seen.now)
            seen.started.set()
            time.sleep(seconds)
            with seen.lock:
                seen.now -= 1
            return "rested"

    return register


def test_sequential_calls_to_an_idle_server_run_on_its_io_thread(make_server, make_proxy):
    seen = Seen()
    make_server(register=services(seen), concurrency=4)
    proxy = make_proxy()
    assert [proxy.add(i, 1) for i in range(5)] == [1, 2, 3, 4, 5]
    assert all(name.startswith("rpc-server-io-") for name in seen.threads), seen.threads


def test_pipelined_calls_to_a_server_of_concurrency_one_all_run_on_its_io_thread(
        make_server, make_proxy, monkeypatch):
    monkeypatch.setattr(consumer, "INLINE_LIMIT", WAIT)  # a slow machine's pause hands off none
    seen = Seen()
    make_server(register=services(seen), concurrency=1, prefetch=20)
    proxy = make_proxy(timeout=WAIT)
    calls = [proxy.future.add(i, 1) for i in range(100)]
    assert [call.result(WAIT) for call in calls] == [i + 1 for i in range(100)]
    assert all(name.startswith("rpc-server-io-") for name in seen.threads), seen.threads


def test_requests_of_one_read_that_together_run_long_pass_reading_on(make_server, make_proxy, url):
    if url.startswith("memory"):
        pytest.skip("memory:// brings one delivery a read")
    seen = Seen()
    make_server(register=services(seen), concurrency=1, prefetch=10)
    proxy = make_proxy(timeout=WAIT)
    calls = [proxy.future.nap(0.015) for _ in range(10)]  # each shorter than INLINE_LIMIT
    assert [call.result(WAIT) for call in calls] == ["rested"] * 10
    assert any(name.startswith("rpc-worker-") for name in seen.threads), seen.threads
    assert seen.most == 1


def test_a_long_call_on_the_io_thread_does_not_hold_up_the_next_call(make_server, make_proxy):
    seen = Seen()
    make_server(register=services(seen), concurrency=2)
    proxy = make_proxy(timeout=WAIT)
    long_call = proxy.future.nap(2.0)
    assert seen.started.wait(WAIT)
    began = time.monotonic()
    assert proxy.add(2, 3) == 5
    assert time.monotonic() - began < 1.0, "the next call waited for the long one"
    assert long_call.result(WAIT) == "rested"


def test_a_call_on_the_io_thread_counts_against_the_concurrency(make_server, make_proxy):
    seen = Seen()
    make_server(register=services(seen), concurrency=1)
    proxy = make_proxy(timeout=WAIT)
    calls = [proxy.future.nap(0.2) for _ in range(3)]
    assert [call.result(WAIT) for call in calls] == ["rested"] * 3
    assert seen.most == 1


def test_a_server_of_concurrency_two_runs_two_calls_at_once_and_no_more(make_server, make_proxy):
    seen = Seen()
    make_server(register=services(seen), concurrency=2)
    proxy = make_proxy(timeout=WAIT)
    calls = [proxy.future.nap(0.2) for _ in range(6)]
    assert [call.result(WAIT) for call in calls] == ["rested"] * 6
    assert seen.most == 2


def test_a_call_longer_than_the_heartbeat_on_the_io_thread_keeps_the_connection(
        make_server, make_proxy):
    seen = Seen()
    server = make_server(register=services(seen), heartbeat=1)
    proxy = make_proxy(timeout=WAIT)
    assert proxy.nap(4.0) == "rested"
    assert proxy.add(1, 1) == 2
    assert server.stats["reconnects"] == 0
