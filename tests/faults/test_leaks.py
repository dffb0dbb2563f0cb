"""Leaks and resource exhaustion under bounded load: rows F1–F4 of docs/reliability.md, and the
issue's measures (10,000 timed-out calls; 200 proxies opened and closed: back to baseline).
"""

from __future__ import annotations

import collections
import gc
import os
import threading
import time
import tracemalloc

import amqp
import msgpack
import pytest
from kombu.connection import Connection

import rpc

from .conftest import WAIT, wait_for


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def threads_settle_to(count: int) -> bool:
    return threading.active_count() <= count


@pytest.mark.slow
def test_ten_thousand_timed_out_calls_leave_no_pending_call_callback_state_thread_or_memory(
        servers, proxies, broker_url, server_id):
    servers(broker_url, server_id).stop()  # requests queue up with nobody to answer
    proxy = proxies(broker_url, server_id, wait_for_ready=True)
    timeouts = collections.Counter()

    def burst(calls: int) -> None:
        futures = [proxy.set_timeout(0.2).future.nap() for _ in range(calls // 2)]
        for _ in range(calls - calls // 2):
            proxy.set_timeout(0.2).callback(
                None, lambda e: timeouts.update([type(e).__name__])).nap()
        for future in futures:
            timeouts.update([type(future.exception(WAIT)).__name__])
        wait_for(lambda: proxy.get_num_waiting_callbacks() == 0, message="the error callbacks")

    # Warm up: fills the proxy's record of finished callback uids (bounded: the last 10,000).
    burst(20_000)
    threads = threading.active_count()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        burst(10_000)
        for _ in range(20):
            with pytest.raises(rpc.RPCTimeout):
                proxy.set_timeout(0.01).nap()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()

    assert timeouts == {"RPCTimeout": 30_000}
    assert proxy.pending_calls == 0
    assert proxy.get_num_waiting_callbacks() == 0
    assert threading.active_count() == threads
    # A leak of even 300 bytes a call would show; what remains is the bounded uid record.
    assert grown < 3_000_000, f"{grown} bytes still held after 10,000 timed-out calls"


@pytest.mark.slow
def test_two_hundred_proxies_opened_and_closed_leave_no_connection_queue_thread_or_fd(
        servers, node, broker_url, server_id):
    servers(broker_url, server_id, register=lambda s: s.register_function(lambda: "ok", "ping"))
    with rpc.Proxy(broker_url, server_id=server_id) as warm:
        assert warm.ping() == "ok"
    queues = set(node.queues())
    threads, fds = threading.active_count(), open_fds()

    for _ in range(200):
        with rpc.Proxy(broker_url, server_id=server_id, heartbeat=1) as proxy:
            assert proxy.ping() == "ok"

    wait_for(lambda: threads_settle_to(threads), timeout=5, message="the proxies' threads to end")
    assert open_fds() <= fds
    wait_for(lambda: not node.connections(f"rpc-proxy {server_id}"), timeout=10, interval=0.5,
             message="the broker to drop the proxies' connections")
    assert set(node.queues()) == queues  # no reply queue left behind


@pytest.mark.slow
def test_a_thousand_concurrent_calls_on_one_proxy_all_complete_without_leaking_fds(
        servers, proxies, broker_url, server_id):
    servers(broker_url, server_id, concurrency=4,
            register=lambda s: s.register_function(lambda n: n, "echo"))
    proxy = proxies(broker_url, server_id)
    assert proxy.echo(0) == 0
    fds = open_fds()
    futures = [proxy.set_timeout(WAIT).future.echo(n) for n in range(1000)]
    assert [f.result(WAIT) for f in futures] == list(range(1000))
    assert proxy.pending_calls == 0
    assert open_fds() == fds


@pytest.mark.slow
def test_flood_of_queued_requests_is_taken_at_most_prefetch_at_a_time(
        servers, node, broker_url, server_id):
    done: list[int] = []
    holding: list[int] = []
    sampled = threading.Event()

    def work(n: int) -> None:
        holding.append(n)
        sampled.wait(WAIT)  # until the first sample: then it is surely taken mid-drain
        time.sleep(0.002)
        done.append(n)

    servers(broker_url, server_id).stop()
    with Connection(broker_url) as conn:
        channel = conn.default_channel
        for n in range(2000):
            channel.basic_publish(amqp.Message(
                msgpack.packb({"method": "work", "args": [n], "kwargs": {}}),
                content_type="application/x-msgpack"), routing_key=server_id)
    servers(broker_url, server_id, register=lambda s: s.register_function(work),
            concurrency=2, prefetch=10)

    wait_for(lambda: len(holding) == 2, message="both workers to hold a call")
    samples = [node.queues()[server_id]]  # rabbitmqctl: seconds on a loaded host
    sampled.set()
    while len(done) < 2000 and len(samples) < 3:
        samples.append(node.queues()[server_id])
    wait_for(lambda: len(done) == 2000, timeout=30, message="the flood to drain")
    assert samples and all(s["messages_unacknowledged"] <= 10 for s in samples)
    assert any(s["messages_ready"] > 0 for s in samples)  # sampled while it was draining
    assert sorted(done) == list(range(2000))
