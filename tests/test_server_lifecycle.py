"""Server lifecycle on a real broker: heartbeats during long calls, graceful stop, redelivery."""

from __future__ import annotations

import threading
import time

import pytest

from rpc import Proxy, Server

WAIT = 20


@pytest.fixture
def started(broker_url, server_id):
    servers: list[Server] = []

    def start(**options) -> Server:
        options.setdefault("server_id", server_id)
        server = Server(broker_url, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(grace=5)


@pytest.mark.slow
def test_long_call_survives_several_heartbeat_intervals_and_runs_once(started, broker_url, server_id):
    runs = []
    server = started(heartbeat=1, concurrency=1)

    @server.expose
    def long(seconds):
        runs.append(seconds)
        time.sleep(seconds)
        return "done"

    server.start()
    with Proxy(broker_url, server_id=server_id, heartbeat=1) as proxy:
        assert proxy.set_timeout(WAIT).long(4) == "done"
        assert proxy.system.ping()  # the connection is still alive
    assert runs == [4]
    assert server.stats["requeued"] == 0


def test_prefetched_requests_not_started_go_back_to_the_queue_on_stop(started, broker_url, server_id):
    gate = threading.Event()
    first = started(concurrency=1, prefetch=10)
    ran_on_first: list[int] = []

    @first.expose
    def job(n):
        ran_on_first.append(n)
        gate.wait(WAIT)
        return ("first", n)

    first.start()
    proxy = Proxy(broker_url, server_id=server_id)
    try:
        futures = [proxy.set_timeout(WAIT).future.job(n) for n in range(5)]
        deadline = time.monotonic() + WAIT
        while not ran_on_first:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        stopper = threading.Thread(target=first.stop, kwargs={"grace": WAIT})
        stopper.start()
        time.sleep(0.2)  # the stop has cancelled the consumer and waits for the call in flight
        gate.set()
        stopper.join(WAIT)

        second = started()
        second.register_function(lambda n: ("second", n), "job")
        second.start()
        results = [f.result(WAIT) for f in futures]
    finally:
        proxy.close()
    assert results[0] == ["first", 0]  # msgpack carries tuples as lists
    assert sorted(r[0] for r in results[1:]) == ["second"] * 4
    assert len(ran_on_first) == 1


def test_competing_servers_share_one_queue(started, broker_url, server_id):
    ids = []
    for name in ("a", "b"):
        server = started(concurrency=2, prefetch=1)
        server.register_function(lambda delay, name=name: (time.sleep(delay), name)[1], "who")
        server.start()
        ids.append(server)
    with Proxy(broker_url, server_id=server_id) as proxy:
        futures = [proxy.set_timeout(WAIT).future.who(0.05) for _ in range(20)]
        names = {f.result(WAIT) for f in futures}
    assert names == {"a", "b"}


def test_server_reconnects_after_its_connection_is_closed(started, broker_url, server_id):
    server = started(heartbeat=2)
    server.register_function(lambda: "ok", "ping")
    server.start()
    with Proxy(broker_url, server_id=server_id) as proxy:
        assert proxy.ping() == "ok"
        server._link.close()  # what a broker-side close_connection looks like to the server
        assert_serves_again(proxy)


def test_server_redeclares_its_queue_after_it_is_deleted(started, broker_url, server_id):
    from kombu.connection import Connection

    server = started()
    server.register_function(lambda: "ok", "ping")
    server.start()
    with Connection(broker_url) as admin:
        admin.default_channel.queue_delete(server_id)
    with Proxy(broker_url, server_id=server_id) as proxy:
        assert_serves_again(proxy)


def assert_serves_again(proxy: Proxy) -> None:
    """Call ``ping`` until the server answers again, within WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            if proxy.set_timeout(1).ping() == "ok":
                return
        except Exception:
            assert time.monotonic() < deadline, "the server never came back"
            time.sleep(0.1)
