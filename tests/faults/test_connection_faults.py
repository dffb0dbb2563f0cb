"""Connection faults injected with the TCP proxy: resets, refusals, blackholes and latency.

Rows A3–A8 and A13 of docs/reliability.md. The component under test (a proxy or a server)
connects through the TCP proxy; its peer connects to the broker directly.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

import rpc
from rpc.transport.aio import MARK_CHECK

from .conftest import HB, WAIT, wait_for

#: A call's timeout in these tests: far longer than any detection bound asserted here, so a
#: failure that arrives before it was not a timeout.
LONG = 30.0


def held(server: rpc.Server, gate: threading.Event, started: list[int]) -> None:
    """Register ``hold(n)``: note the call, then wait for ``gate``; and ``add``."""

    @server.expose
    def hold(n: int) -> int:
        started.append(n)
        gate.wait(WAIT)
        return n

    server.register_function(lambda a, b: a + b, "add")


@pytest.fixture
def gate() -> Any:
    event = threading.Event()
    yield event
    event.set()


def test_pending_calls_of_every_kind_fail_at_once_with_connection_lost_when_the_connection_resets(
        tcp, tcp_url, servers, proxies, broker_url, server_id, gate):
    started: list[int] = []
    servers(broker_url, server_id, register=lambda s: held(s, gate, started), concurrency=3)
    proxy = proxies(tcp_url, server_id)
    sync_error: list[BaseException] = []

    def sync_call() -> None:
        try:
            proxy.set_timeout(LONG).hold(1)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            sync_error.append(exc)

    caller = threading.Thread(target=sync_call)
    caller.start()
    future = proxy.set_timeout(LONG).future.hold(2)
    callback_errors: list[BaseException] = []
    proxy.set_timeout(LONG).callback(None, callback_errors.append).hold(3)
    wait_for(lambda: len(started) == 3, message="three calls running on the server")

    reset_at = time.monotonic()
    assert tcp.reset_all() == 1
    caller.join(WAIT)
    assert isinstance(future.exception(WAIT), rpc.ConnectionLost)
    wait_for(lambda: callback_errors, message="the error callback")
    elapsed = time.monotonic() - reset_at

    assert isinstance(sync_error[0], rpc.ConnectionLost)
    assert isinstance(callback_errors[0], rpc.ConnectionLost)
    assert elapsed < 2.0, f"pending calls failed {elapsed:.1f} s after the reset"
    assert proxy.pending_calls == 0
    wait_for(lambda: proxy.get_num_waiting_callbacks() == 0, message="callback states to finish")


def test_proxy_reconnects_for_the_next_call_after_its_connection_resets(
        tcp, tcp_url, servers, proxies, broker_url, server_id):
    servers(broker_url, server_id, register=lambda s: s.register_function(lambda: "ok", "ping"))
    proxy = proxies(tcp_url, server_id)
    assert proxy.ping() == "ok"
    tcp.reset_all()
    time.sleep(2 * HB)  # the idle proxy notices on its own
    assert proxy.set_timeout(5).ping() == "ok"
    assert tcp.accepted == 2


def test_call_on_a_connection_reset_a_moment_ago_succeeds_on_a_new_connection(
        tcp, tcp_url, servers, proxies, broker_url, server_id):
    servers(broker_url, server_id, register=lambda s: s.register_function(lambda: "ok", "ping"))
    proxy = proxies(tcp_url, server_id)
    assert proxy.ping() == "ok"
    for _ in range(5):  # each time, the proxy has most likely not read the RST yet
        tcp.reset_all()
        time.sleep(0.005)
        assert proxy.set_timeout(5).ping() == "ok"



def test_the_short_last_piece_of_a_reply_is_read_as_it_comes(
        tcp, tcp_url, servers, proxies, broker_url, server_id):
    # The proxy's socket holds back fewer bytes than a lone confirm between messages; within one,
    # the last TCP segment may be shorter than that and must wake the reader at once.
    servers(broker_url, server_id,
            register=lambda server: server.register_function(lambda value: value, "echo"))
    proxy = proxies(tcp_url, server_id, timeout=LONG)
    assert proxy.echo("warm") == "warm"
    tcp.split_down(tail=10, pause=0.3)
    begun = time.monotonic()
    assert proxy.echo("x" * 100) == "x" * 100
    assert time.monotonic() - begun < 0.8  # one pause; a read step (1 s) late before


def test_the_short_last_piece_of_a_reply_wakes_an_async_proxy_at_once(
        tcp, tcp_url, servers, broker_url, server_id):
    # As above, for the asyncio link: its mark applies between messages only. A tail held below
    # it would wait for the mark's check, which lowers it two checks after the call went out.
    servers(broker_url, server_id,
            register=lambda server: server.register_function(lambda value: value, "echo"))

    async def main() -> list[float]:
        async with rpc.AsyncProxy(tcp_url, server_id=server_id, timeout=LONG) as proxy:
            assert await proxy.echo("warm") == "warm"
            tcp.split_down(tail=10, pause=0.01)
            took = []
            for _ in range(5):
                begun = time.monotonic()
                assert await proxy.echo("x" * 100) == "x" * 100
                took.append(time.monotonic() - begun)
            return took

    took = sorted(asyncio.run(main()))
    assert took[2] < MARK_CHECK, took


def test_a_call_retried_after_a_reset_waits_for_its_queued_request_rather_than_fail_unavailable(
        tcp, tcp_url, servers, proxies, broker_url, server_id):
    # Its first copy waits in the queue, and a server will run it: "no server is consuming"
    # would tell the caller it did not run, and a caller retrying then would run it twice.
    runs: list[int] = []

    def register(server: rpc.Server) -> None:
        server.register_function(lambda x: runs.append(x) or x * 2, "work")

    server = servers(broker_url, server_id, register=register)
    proxy = proxies(tcp_url, server_id, retries=1, timeout=LONG)
    assert proxy.work(0) == 0  # a server consumes: for a second, calls skip the question
    server.stop(grace=1)
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["result"] = proxy.work(21)
        except Exception as exc:
            outcome["error"] = exc

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(1.2)  # its request waits in the queue, and the proxy's answer has expired
    tcp.reset_all()  # so its retry asks, and nobody consumes
    time.sleep(0.5)
    servers(broker_url, server_id, register=register)
    caller.join(LONG)
    assert outcome == {"result": 42}
    assert runs == [0, 21]


def test_server_reconnects_and_serves_again_after_its_connection_resets(
        tcp, tcp_url, servers, proxies, broker_url, server_id):
    servers(tcp_url, server_id, register=lambda s: s.register_function(lambda: "ok", "ping"))
    proxy = proxies(broker_url, server_id)
    assert proxy.ping() == "ok"
    for _ in range(3):
        tcp.reset_all()
        begun = time.monotonic()
        assert proxy.set_timeout(10).ping() == "ok"  # the request waits in the durable queue
        assert time.monotonic() - begun < 5.0


def test_blackholed_proxy_connection_fails_pending_calls_within_a_few_heartbeats(
        tcp, tcp_url, servers, proxies, broker_url, server_id, gate):
    started: list[int] = []
    servers(broker_url, server_id, register=lambda s: held(s, gate, started), concurrency=2)
    proxy = proxies(tcp_url, server_id)
    future = proxy.set_timeout(LONG).future.hold(1)
    wait_for(lambda: started, message="the call to start")

    tcp.blackhole()
    begun = time.monotonic()
    assert isinstance(future.exception(WAIT), rpc.ConnectionLost)
    assert time.monotonic() - begun < 4 * HB
    assert proxy.pending_calls == 0

    tcp.set_pass()
    assert proxy.set_timeout(5).add(1, 2) == 3


def test_blackhole_toward_the_client_only_is_noticed_by_the_proxy_within_a_few_heartbeats(
        tcp, tcp_url, servers, proxies, broker_url, server_id, gate):
    started: list[int] = []
    servers(broker_url, server_id, register=lambda s: held(s, gate, started))
    proxy = proxies(tcp_url, server_id)
    future = proxy.set_timeout(LONG).future.hold(1)
    wait_for(lambda: started, message="the call to start")

    tcp.blackhole(up=False, down=True)
    begun = time.monotonic()
    assert isinstance(future.exception(WAIT), rpc.ConnectionLost)
    assert time.monotonic() - begun < 4 * HB


def test_blackhole_toward_the_broker_only_is_noticed_by_the_broker_and_then_by_the_proxy(
        tcp, tcp_url, servers, proxies, broker_url, server_id, gate):
    started: list[int] = []
    servers(broker_url, server_id, register=lambda s: held(s, gate, started))
    proxy = proxies(tcp_url, server_id)
    future = proxy.set_timeout(LONG).future.hold(1)
    wait_for(lambda: started, message="the call to start")

    tcp.blackhole(up=True, down=False)  # the broker stops hearing the proxy's heartbeats
    begun = time.monotonic()
    assert isinstance(future.exception(WAIT), rpc.ConnectionLost)
    assert time.monotonic() - begun < 6 * HB


def test_blackholed_server_connection_is_noticed_and_the_server_serves_again_after_it_heals(
        tcp, tcp_url, servers, proxies, broker_url, server_id):
    servers(tcp_url, server_id, register=lambda s: s.register_function(lambda: "ok", "ping"))
    proxy = proxies(broker_url, server_id)
    assert proxy.ping() == "ok"

    tcp.blackhole()
    begun = time.monotonic()
    wait_for(lambda: tcp.accepted > 1, timeout=10, message="the server to reconnect")
    assert time.monotonic() - begun < 4 * HB  # noticed by its own heartbeat check

    tcp.set_pass()
    assert proxy.set_timeout(15).ping() == "ok"


def test_server_stop_does_not_hang_when_the_broker_has_gone_silent(
        tcp, tcp_url, servers, broker_url, server_id):
    server = servers(tcp_url, server_id,
                     register=lambda s: s.register_function(lambda: "ok", "ping"))
    tcp.blackhole(up=False, down=True)  # no cancel-ok or close-ok will ever come back
    begun = time.monotonic()
    server.stop(grace=1)
    assert time.monotonic() - begun < 3.0
    assert not server.running


def test_new_connection_into_a_blackhole_times_out_with_connection_error(tcp, tcp_url, server_id):
    tcp.blackhole()
    begun = time.monotonic()
    with pytest.raises(rpc.ConnectionError):
        rpc.Proxy(tcp_url, server_id=server_id, heartbeat=HB, connect_retry=1)
    assert time.monotonic() - begun < 6.0


def test_call_while_the_broker_refuses_connections_fails_fast_and_runs_no_callback(
        tcp, tcp_url, servers, proxies, broker_url, server_id):
    servers(broker_url, server_id, register=lambda s: s.register_function(lambda: "ok", "ping"))
    proxy = proxies(tcp_url, server_id, connect_retry=1)
    assert proxy.ping() == "ok"
    tcp.refuse()
    tcp.reset_all()
    time.sleep(2 * HB)  # the proxy has noticed
    outcomes: list[Any] = []

    begun = time.monotonic()
    with pytest.raises(rpc.ConnectionError):
        proxy.set_timeout(LONG).ping()
    with pytest.raises(rpc.ConnectionError):
        proxy.set_timeout(LONG).callback(outcomes.append, outcomes.append).ping()
    assert time.monotonic() - begun < 2 * (1 + 2.5)  # two calls, each within its retry window
    time.sleep(0.2)
    assert outcomes == []  # a call that never started runs no callback: it raised instead
    assert proxy.pending_calls == 0

    tcp.set_pass()
    assert proxy.set_timeout(5).ping() == "ok"


def test_server_start_against_a_refusing_broker_fails_after_its_retry_window(
        broker_url, tcp, tcp_url, server_id):
    tcp.refuse()
    server = rpc.Server(tcp_url, server_id=server_id, heartbeat=HB, connect_retry=1)
    begun = time.monotonic()
    with pytest.raises(rpc.ConnectionError):
        server.start()
    assert 1.0 <= time.monotonic() - begun < 4.0
    assert tcp.accepted >= 2  # it retried within the window
    assert not server.running


@pytest.mark.slow
def test_added_latency_slows_calls_but_never_trips_heartbeats(
        tcp, tcp_url, servers, proxies, server_id):
    servers(tcp_url, server_id, register=lambda s: s.register_function(lambda: "ok", "ping"))
    proxy = proxies(tcp_url, server_id)
    tcp.set_latency(0.3)
    begun = time.monotonic()
    while time.monotonic() - begun < 3 * HB:
        assert proxy.set_timeout(10).ping() == "ok"
    assert tcp.accepted == 2  # neither side reconnected
    assert len(tcp.pairs) == 2


@pytest.mark.slow
def test_reconnect_storm_leaves_exactly_one_connection_per_component(
        tcp, tcp_url, servers, proxies, node, broker_url, server_id):
    servers(tcp_url, server_id, register=lambda s: s.register_function(lambda: "ok", "ping"))
    proxy = proxies(tcp_url, server_id)
    assert proxy.ping() == "ok"
    for _ in range(10):
        tcp.reset_all()
        time.sleep(0.2)
        proxy.set_timeout(10).future.ping()  # keep the proxy reconnecting too
    time.sleep(2 * HB)
    assert proxy.set_timeout(10).ping() == "ok"

    def settled() -> bool:
        names = sorted(c["connection_name"].split(" pid=")[0] for c in node.connections(server_id))
        return names == [f"rpc-proxy {server_id}", f"rpc-server {server_id}"]

    wait_for(settled, timeout=10, interval=0.5, message="one server and one proxy connection")
    assert len(tcp.pairs) == 2


def test_server_stopped_while_reconnecting_stops_dialling_the_broker(
        tcp, tcp_url, servers, server_id):
    server = servers(tcp_url, server_id,
                     register=lambda s: s.register_function(lambda: "ok", "ping"))
    tcp.refuse()
    tcp.reset_all()
    wait_for(lambda: tcp.accepted >= 3, message="the server to retry")
    server.stop(grace=1)
    tcp.set_pass()
    dialled = tcp.accepted
    time.sleep(3)
    assert tcp.accepted == dialled
    assert not tcp.pairs
