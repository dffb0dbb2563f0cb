"""One proxy shared by many threads: every caller gets its own result, many calls in flight."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from rpc import RPCTimeout, Server

WAIT = 30


def services(server: Server) -> None:
    @server.expose
    def echo_after(value, delay):
        time.sleep(delay)
        return value

    server.register_function(lambda a, b: a + b, "add")


@pytest.fixture
def proxy(make_server, make_proxy):
    make_server(register=services, concurrency=8)
    return make_proxy()


def test_threads_sharing_a_proxy_each_get_their_own_results(proxy):
    def worker(n):
        rnd = random.Random(n)
        for i in range(25):
            value = f"{n}-{i}"
            assert proxy.echo_after(value, rnd.random() * 0.01) == value
        return n

    with ThreadPoolExecutor(8) as pool:
        assert sorted(pool.map(worker, range(8), timeout=WAIT)) == list(range(8))
    assert proxy.pending_calls == 0


def test_calls_from_many_threads_are_in_flight_at_once(proxy):
    barrier = threading.Barrier(8, timeout=WAIT)

    def worker(n):
        barrier.wait()
        return proxy.echo_after(n, 0.5)

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        assert sorted(pool.map(worker, range(8), timeout=WAIT)) == list(range(8))
    assert time.monotonic() - started < 3.0  # not eight 0.5 s round trips one after another


def test_sync_futures_and_callbacks_mix_across_threads(proxy):
    got: list[int] = []
    lock = threading.Lock()
    done = threading.Semaphore(0)

    def record(value):
        with lock:
            got.append(value)
        done.release()

    def worker(n):
        fut = proxy.future.add(n, 1000)
        proxy.callback(record).add(n, 2000)
        assert proxy.add(n, 0) == n
        assert fut.result(WAIT) == n + 1000

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(worker, range(30), timeout=WAIT))
    for _ in range(30):
        assert done.acquire(timeout=WAIT)
    assert sorted(got) == [n + 2000 for n in range(30)]


def test_timeouts_in_some_threads_do_not_disturb_the_others(proxy):
    def slow(n):
        with pytest.raises(RPCTimeout):
            proxy.set_timeout(0.05).echo_after(n, 0.3)

    def fast(n):
        assert proxy.echo_after(n, 0.0) == n

    with ThreadPoolExecutor(8) as pool:
        jobs = [pool.submit(slow if n % 2 else fast, n) for n in range(40)]
        for job in jobs:
            job.result(WAIT)
    assert proxy.pending_calls == 0
