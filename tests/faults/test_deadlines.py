"""Routing, timeouts and deadlines: rows D1, D2 and D6 of docs/reliability.md."""

from __future__ import annotations

import time

import amqp
import msgpack
import pytest
from kombu.connection import Connection

import rpc

from .conftest import WAIT, wait_for


def test_call_to_a_server_id_nobody_serves_fails_at_once_not_at_its_timeout(proxies, broker_url):
    proxy = proxies(broker_url, "fault-nobody-serves-this")
    begun = time.monotonic()
    with pytest.raises(rpc.UnknownServer):
        proxy.set_timeout(WAIT).add(1, 2)
    assert time.monotonic() - begun < 1.0


def test_request_for_a_stopped_server_times_out_and_is_never_run_by_a_later_server(
        servers, proxies, node, broker_url, server_id):
    runs: list[int] = []
    servers(broker_url, server_id).stop()  # the queue stays, nobody consumes it
    proxy = proxies(broker_url, server_id, wait_for_ready=True)
    with pytest.raises(rpc.RPCTimeout):
        proxy.set_timeout(0.5).note()
    time.sleep(0.5)

    servers(broker_url, server_id,
            register=lambda s: s.register_function(lambda: runs.append(1), "note"))
    assert proxy.set_timeout(WAIT).system.ping()
    assert runs == []  # the queue is FIFO: the note would have run before the ping
    assert node.queues()[server_id]["messages_ready"] == 0


def test_backlog_of_expired_requests_is_skipped_unrun_far_faster_than_it_could_be_run(
        servers, proxies, broker_url, server_id):
    """500 requests whose deadline passed while they queued (no broker TTL to help)."""
    runs: list[int] = []

    def work() -> None:
        runs.append(1)
        time.sleep(0.01)

    servers(broker_url, server_id).stop()
    body = msgpack.packb({"method": "work", "args": [], "kwargs": {}})
    deadline = time.time() + 0.05
    with Connection(broker_url) as conn:
        channel = conn.default_channel
        for _ in range(500):
            channel.basic_publish(amqp.Message(
                body, content_type="application/x-msgpack",
                application_headers={"rpc-deadline": deadline}), routing_key=server_id)
    time.sleep(0.1)

    begun = time.monotonic()
    server = servers(broker_url, server_id, register=lambda s: s.register_function(work),
                     concurrency=1, prefetch=10)
    wait_for(lambda: server.stats["expired"] == 500, message="the backlog to be skipped")
    assert time.monotonic() - begun < 2.5  # running them would take 5 s
    assert runs == []
    assert proxies(broker_url, server_id).set_timeout(2).system.ping()
