"""Broker faults, made with rabbitmqctl on nodes this session started.

Rows A1, A2, A9, A10, A11, A12 and D4 of docs/reliability.md. Faults scoped to one connection or
one queue run on the session's test node; node-wide ones (an app restart, a resource alarm) run
on a second node of their own (``fault_node``), so no other test ever sees them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import kombu
import pytest
import support

import rpc

from .conftest import HB, HOLD, WAIT, wait_for

LONG = 30.0


def test_server_connection_closed_by_the_broker_mid_call_answers_the_redelivery_from_the_first_run(
        servers, proxies, node, broker_url, server_id):
    gate = threading.Event()
    calls: list[Any] = []

    def job(n: int) -> int:
        calls.append(rpc.current_call())
        gate.wait(HOLD)  # the first run is still going when its connection is closed
        return n * 2

    server = servers(broker_url, server_id, register=lambda s: s.register_function(job),
                     concurrency=2)
    proxy = proxies(broker_url, server_id)
    try:
        future = proxy.set_timeout(LONG).future.job(21)
        wait_for(lambda: calls, message="the first run")
        assert node.close_connections(f"rpc-server {server_id}") == 1
        wait_for(lambda: server.stats["redelivered"] == 1, message="the redelivery")
        gate.set()  # the first run ends; the redelivered copy was waiting for its result
        assert future.result(WAIT) == 42
    finally:
        gate.set()
    assert len(calls) == 1
    wait_for(lambda: server.stats["duplicates"] == 1, message="the repeat answered")
    assert proxy.replies_dropped == 0


def serve_numbers(servers: Any, broker_url: str, server_id: str,
                  gate: threading.Event) -> tuple[Any, list[int]]:
    """A server whose stream ``numbers(n)`` holds its first run after item 2 until ``gate``;
    returns it, and the list of its runs."""
    runs: list[int] = []

    def numbers(n: int) -> Any:
        runs.append(n)
        for i in range(n):
            yield i
            if i == 2 and len(runs) == 1:
                gate.wait(HOLD)  # its connection is closed meanwhile

    server = servers(broker_url, server_id,
                     register=lambda s: s.register_function(numbers), concurrency=2)
    return server, runs


def test_a_stream_whose_server_connection_closes_mid_stream_fails_with_server_lost(
        servers, proxies, node, broker_url, server_id):
    """The request is redelivered and its stream starts again from the first item: the
    caller gets ServerLost, not the items it already had a second time, and the new run is
    cancelled."""
    gate = threading.Event()
    server, runs = serve_numbers(servers, broker_url, server_id, gate)
    try:
        stream = proxies(broker_url, server_id).set_timeout(LONG).stream(window=4).numbers(1000)
        assert [next(stream) for _ in range(3)] == [0, 1, 2]
        assert node.close_connections(f"rpc-server {server_id}") == 1
        with pytest.raises(rpc.ServerLost, match="started again"):
            next(stream)
    finally:
        gate.set()
    assert len(runs) == 2
    wait_for(lambda: server.stats["cancelled"] == 1, message="the second run cancelled")


def test_an_async_stream_whose_server_connection_closes_mid_stream_fails_with_server_lost(
        servers, node, broker_url, server_id):
    gate = threading.Event()
    server, runs = serve_numbers(servers, broker_url, server_id, gate)

    async def scenario() -> None:
        async with rpc.AsyncProxy(broker_url, server_id=server_id, timeout=LONG,
                                  heartbeat=HB) as proxy:
            stream = proxy.stream(window=4).numbers(1000)
            assert [await anext(stream) for _ in range(3)] == [0, 1, 2]
            assert await asyncio.to_thread(
                node.close_connections, f"rpc-server {server_id}") == 1
            with pytest.raises(rpc.ServerLost, match="started again"):
                await anext(stream)
            await stream.aclose()

    try:
        asyncio.run(asyncio.wait_for(scenario(), WAIT))
    finally:
        gate.set()
    assert len(runs) == 2
    wait_for(lambda: server.stats["cancelled"] == 1, message="the second run cancelled")


def test_a_stream_whose_first_run_was_lost_before_its_first_item_grants_credit_to_the_next(
        servers, proxies, node, broker_url, server_id):
    """The keep-alives of the lost run named its control address; the items of the run that
    answers name another, and the stream's credit goes there."""
    gate = threading.Event()
    runs: list[int] = []

    def numbers(n: int) -> Any:
        runs.append(n)
        if len(runs) == 1:
            gate.wait(HOLD)  # its connection is closed meanwhile
        yield from range(n)

    servers(broker_url, server_id, register=lambda s: s.register_function(numbers),
            concurrency=2)
    try:
        proxy = proxies(broker_url, server_id, keepalive=0.5)
        stream = proxy.stream(timeout=10, window=4).numbers(20)
        wait_for(lambda: runs, message="the first run")
        time.sleep(1.0)  # a keep-alive of the first run has come
        assert node.close_connections(f"rpc-server {server_id}") == 1
        assert list(stream) == list(range(20))
    finally:
        gate.set()


def numbers(n: int) -> Any:
    yield from range(n)


def test_a_stream_closed_after_its_proxy_lost_the_connection_is_cancelled_once_reconnected(
        servers, proxies, node, broker_url, server_id):
    """The cancel the lost connection kept from the broker goes out on the next one: the
    server stops the paused stream now, not at its patience's end (60 s here)."""
    server = servers(broker_url, server_id, register=lambda s: s.register_function(numbers))
    stream = proxies(broker_url, server_id, keepalive=None).stream(window=2).numbers(1000)
    assert next(stream) == 0  # the stream pauses for credit
    assert node.close_connections(f"rpc-proxy {server_id}") == 1
    with pytest.raises(rpc.ConnectionLost):
        list(stream)
    stream.close()
    wait_for(lambda: server.stats["cancelled"] == 1, message="the stream cancelled")


def test_server_connection_closed_mid_call_without_the_table_of_completed_calls_reruns_the_call(
        servers, proxies, node, broker_url, server_id):
    gate = threading.Event()
    calls: list[Any] = []

    def job(n: int) -> int:
        calls.append(rpc.current_call())
        if len(calls) == 1:
            gate.wait(HOLD)  # the first run is still going when its connection is closed
        return n * 2

    # dedup_size=0: as a server that crashed, whose table went with it.
    server = servers(broker_url, server_id, register=lambda s: s.register_function(job),
                     concurrency=2, dedup_size=0)
    proxy = proxies(broker_url, server_id)
    try:
        future = proxy.set_timeout(LONG).future.job(21)
        wait_for(lambda: calls, message="the first run")
        assert node.close_connections(f"rpc-server {server_id}") == 1

        assert future.result(WAIT) == 42  # from the second run, after the server reconnected
    finally:
        gate.set()  # the first run ends; its reply has no connection to go out on
    # Both runs have ended: the second replied, the first found its connection gone.
    wait_for(lambda: server.stats["calls"] + server.stats["requeued"] == 2, message="both runs")
    time.sleep(0.3)
    assert len(calls) == 2
    assert proxy.replies_dropped == 0
    first, second = calls
    assert (first.redelivered, second.redelivered) == (False, True)
    assert first.message_id and first.message_id == second.message_id


def test_server_whose_queue_is_deleted_declares_it_again_and_serves(
        servers, proxies, node, broker_url, server_id):
    servers(broker_url, server_id, register=lambda s: s.register_function(lambda: "ok", "ping"))
    proxy = proxies(broker_url, server_id)
    assert proxy.ping() == "ok"

    node.delete_queue(server_id)

    def serving_again() -> bool:
        try:
            return bool(proxy.set_timeout(2).ping() == "ok")
        except (rpc.UnknownServer, rpc.RPCTimeout):
            return False

    wait_for(serving_again, timeout=10, interval=0.1, message="the queue to be back and served")
    assert node.queues()[server_id]["consumers"] == 1


def test_missing_vhost_fails_at_once_without_retrying(node, server_id):
    url = node.url(vhost="no-such-vhost")
    begun = time.monotonic()
    with pytest.raises(rpc.ConnectionError, match="refused"):
        rpc.Proxy(url, server_id=server_id, heartbeat=HB, connect_retry=10)
    with pytest.raises(rpc.ConnectionError, match="refused"):
        rpc.Server(url, server_id=server_id, heartbeat=HB, connect_retry=10).start()
    assert time.monotonic() - begun < 2.0  # not the 10 s retry window


def test_wrong_password_fails_at_once_and_never_shows_the_password(node, server_id, caplog):
    url = node.url(password="s3cret-pa55")
    begun = time.monotonic()
    with pytest.raises(rpc.ConnectionError) as info:
        rpc.Server(url, server_id=server_id, heartbeat=HB, connect_retry=10).start()
    assert time.monotonic() - begun < 2.0
    shown = [str(info.value), repr(info.value), *(r.getMessage() for r in caplog.records)]
    assert not any("s3cret-pa55" in text for text in shown)


@pytest.mark.slow
def test_broker_restart_fails_pending_calls_and_both_sides_recover_with_the_durable_queue(
        servers, proxies, fault_node, server_id):
    url = fault_node.url()
    gate = threading.Event()
    started: list[int] = []

    def hold() -> str:
        started.append(1)
        gate.wait(HOLD)
        return "held"

    servers(url, server_id, register=lambda s: (s.register_function(hold),
                                                s.register_function(lambda: "ok", "ping")),
            concurrency=2)
    proxy = proxies(url, server_id)
    try:
        future = proxy.set_timeout(LONG).future.hold()
        wait_for(lambda: started, message="the call to start")
        fault_node.ctl("stop_app")
        try:
            assert isinstance(future.exception(WAIT), rpc.ConnectionLost)
        finally:
            fault_node.ctl("start_app")
            fault_node.ctl("await_startup")
    finally:
        gate.set()

    def served() -> bool:
        try:
            return bool(proxy.set_timeout(2).ping() == "ok")
        except (rpc.ConnectionError, rpc.RPCTimeout, rpc.UnknownServer):
            return False

    wait_for(served, timeout=15, interval=0.2, message="the server and proxy to recover")
    queue = fault_node.queues()[server_id]
    assert queue["consumers"] == 1


@pytest.fixture
def alarm(fault_node: Any) -> Any:
    """Raise a memory alarm on the fault node for the test's body; always cleared after."""
    raised: list[bool] = []

    def raise_alarm() -> None:
        raised.append(True)
        fault_node.raise_memory_alarm()

    try:
        yield raise_alarm
    finally:
        if raised:
            fault_node.clear_memory_alarm()


@pytest.mark.slow
def test_call_to_a_blocked_broker_fails_within_a_bound_instead_of_hanging(
        servers, proxies, fault_node, alarm, server_id):
    url = fault_node.url()
    servers(url, server_id, register=lambda s: s.register_function(lambda: "ok", "ping"))
    proxy = proxies(url, server_id)
    assert proxy.ping() == "ok"
    alarm()

    begun = time.monotonic()
    future = proxy.future.ping()  # no timeout of its own: only the blocked-publish bound ends it
    error = future.exception(8)
    assert isinstance(error, rpc.RPCError) and not isinstance(error, rpc.RPCTimeout)
    assert time.monotonic() - begun < 6
    begun = time.monotonic()
    with pytest.raises(rpc.RPCError):  # now that the proxy knows, at once
        proxy.set_timeout(LONG).ping()
    assert time.monotonic() - begun < 1
    assert proxy.pending_calls == 0

    fault_node.clear_memory_alarm()
    wait_until_served(proxy)


@pytest.mark.slow
def test_once_the_broker_says_it_is_blocked_calls_fail_at_once_until_it_unblocks(
        servers, proxies, fault_node, alarm, server_id):
    url = fault_node.url()
    servers(url, server_id, register=lambda s: s.register_function(lambda: "ok", "ping"))
    proxy = proxies(url, server_id)
    assert proxy.ping() == "ok"
    alarm()
    with pytest.raises(rpc.RPCError):  # its publish makes the broker block the connection
        proxy.set_timeout(1).ping()

    begun = time.monotonic()
    with pytest.raises(rpc.BrokerBlocked):
        proxy.set_timeout(LONG).ping()
    assert time.monotonic() - begun < 0.5

    fault_node.clear_memory_alarm()
    wait_until_served(proxy)


@pytest.mark.slow
def test_request_enqueued_after_its_deadline_by_an_unblocked_broker_is_never_run(
        servers, proxies, fault_node, alarm, server_id):
    url = fault_node.url()
    runs: list[int] = []
    server = servers(url, server_id,
                     register=lambda s: s.register_function(lambda: runs.append(1), "note"))
    proxy = proxies(url, server_id)
    alarm()
    with pytest.raises(rpc.RPCError):  # a timeout, or the blocked-publish failure
        proxy.set_timeout(1).note()
    time.sleep(1.0)
    fault_node.clear_memory_alarm()  # the broker now reads what the proxy wrote while blocked

    def drained() -> bool:
        queue = fault_node.queues()[server_id]
        return queue["messages_ready"] == 0 and queue["messages_unacknowledged"] == 0

    wait_for(drained, timeout=10, interval=0.3, message="the request queue to drain")
    time.sleep(0.5)
    assert runs == []
    assert server.stats["calls"] == 0


#: A request queue that holds one request and refuses (nacks) any publish beyond it.
FULL_AT_ONE = {"x-max-length": 1, "x-overflow": "reject-publish"}


def held_and_queued(proxy: rpc.Proxy, gate: support.Gate, broker_url: str,
                    server_id: str) -> tuple[Future[Any], Future[Any]]:
    """``hold(1)`` running on a server of prefetch 1 (``gate`` holds it), and ``hold(2)``
    filling its FULL_AT_ONE queue, once the broker counts it there: the next request is
    refused."""
    running = proxy.set_timeout(LONG).future.hold(1)  # taken by the server
    wait_for(lambda: gate.started, message="the first call to run")
    waiting = proxy.set_timeout(LONG).future.hold(2)
    with kombu.Connection(broker_url) as conn:
        channel = conn.channel()
        wait_for(lambda: channel.queue_declare(server_id, passive=True).message_count == 1,
                 message="the queue to fill")
    return running, waiting


def serve_full_at_one(servers: Callable[..., rpc.Server], proxies: Callable[..., rpc.Proxy],
                      broker_url: str, server_id: str, gate: support.Gate) -> rpc.Proxy:
    """A server of ``gate.hold`` with prefetch 1 on a FULL_AT_ONE queue, and a proxy to it."""
    servers(broker_url, server_id, register=lambda s: s.register_function(gate.hold, "hold"),
            prefetch=1, queue_arguments=FULL_AT_ONE)
    return proxies(broker_url, server_id)


def test_request_the_broker_refuses_fails_at_once_with_refused_not_at_its_timeout(
        servers, proxies, broker_url, server_id):
    """Publisher confirms, tracked without waiting: a nack (here: a full queue that rejects
    publishes) fails its call as soon as it arrives."""
    gate = support.Gate(WAIT)
    proxy = serve_full_at_one(servers, proxies, broker_url, server_id, gate)
    try:
        running, waiting = held_and_queued(proxy, gate, broker_url, server_id)
        begun = time.monotonic()
        refused = proxy.set_timeout(LONG).future.hold(3)  # finds it full
        assert isinstance(refused.exception(WAIT), rpc.Refused)
        assert time.monotonic() - begun < 2.0
    finally:
        gate.open()
    assert running.result(WAIT) == 1
    assert waiting.result(WAIT) == 2
    assert gate.started == [1, 2]


class _SlowSender:
    """A socket whose ``sendall`` returns ``delay`` seconds after it has sent: what a writer
    preempted after its write looks like to a reader on another thread."""

    def __init__(self, sock: Any, delay: float) -> None:
        self._sock = sock
        self._delay = delay

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(data)
        time.sleep(self._delay)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def test_a_nack_read_before_its_publish_returns_still_fails_the_call_with_refused(
        servers, proxies, broker_url, server_id):
    """The reader may get a confirm before the writer's write returns: the publish counts
    before it is written, so the nack finds its call (counted after, it was lost, and the call
    waited for its timeout)."""
    gate = support.Gate(WAIT)
    proxy = serve_full_at_one(servers, proxies, broker_url, server_id, gate)
    try:
        running, waiting = held_and_queued(proxy, gate, broker_url, server_id)
        link = proxy._link
        sock = link._sock
        # Longer than a read's longest step (1 s): the background reader reads the nack while
        # the publish has not returned.
        link._sock = _SlowSender(sock, 1.5)
        try:
            refused = proxy.set_timeout(LONG).future.hold(3)  # finds it full
        finally:
            link._sock = sock
        assert isinstance(refused.exception(5.0), rpc.Refused)
    finally:
        gate.open()
    assert running.result(WAIT) == 1
    assert waiting.result(WAIT) == 2


def test_a_synchronous_call_the_broker_refuses_fails_within_a_confirm_step(
        servers, proxies, broker_url, server_id):
    """A lone nack is smaller than the low-water mark that keeps a confirm from waking the
    reader apart from its reply: the reader still sees it within one confirm step."""
    gate = support.Gate(WAIT)

    def register(server: rpc.Server) -> None:
        server.register_function(gate.hold, "hold")
        server.register_function(lambda: None, "noop")

    servers(broker_url, server_id, register=register, prefetch=1, queue_arguments=FULL_AT_ONE)
    filler, caller = proxies(broker_url, server_id), proxies(broker_url, server_id)
    caller.noop()  # connected, and the server known to consume: the call is one publish
    try:
        running, waiting = held_and_queued(filler, gate, broker_url, server_id)
        begun = time.monotonic()
        with pytest.raises(rpc.Refused):
            caller.set_timeout(LONG).hold(3)  # its reader is this thread, blocking
        assert time.monotonic() - begun < 0.5
    finally:
        gate.open()
    assert running.result(WAIT) == 1
    assert waiting.result(WAIT) == 2


def wait_until_served(proxy: rpc.Proxy) -> None:
    """Call ``ping`` until the server answers again (the alarm has cleared)."""
    def served() -> bool:
        try:
            return bool(proxy.set_timeout(2).ping() == "ok")
        except rpc.RPCError:
            return False

    wait_for(served, timeout=10, interval=0.2, message="calls to work again")
