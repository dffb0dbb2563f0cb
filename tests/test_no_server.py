"""Nobody serving: a call fails fast with ServerUnavailable, or waits for a server when asked."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import rpc
from rpc import Proxy, Server, ServerUnavailable, UnknownServer
from rpc.client.aio import AsyncProxy

pytestmark = pytest.mark.integration


@pytest.fixture
def url(broker_url: str) -> str:
    """The real broker only, for conftest's make_server and make_proxy: memory:// cannot
    count a queue's consumers."""
    return broker_url


@pytest.fixture
def stopped_server(broker_url: str, server_id: str) -> Server:
    """A server that declared its queue, then stopped: the queue stays, with no consumer."""
    server = Server(broker_url, server_id=server_id)
    server.register_function(lambda a, b: a + b, "add")
    server.start()
    server.stop()
    return server


def test_a_call_to_a_queue_nobody_consumes_fails_at_once(stopped_server, make_proxy):
    proxy = make_proxy()
    started = time.monotonic()
    with pytest.raises(ServerUnavailable, match=r"no server is consuming '.*' \(0 requests waiting\)"):
        proxy.add(1, 2)
    assert time.monotonic() - started < 2


def test_server_unavailable_is_an_unknown_server(stopped_server, make_proxy):
    with pytest.raises(UnknownServer):
        make_proxy().add(1, 2)


def test_a_future_to_a_queue_nobody_consumes_fails_at_once(stopped_server, make_proxy):
    with pytest.raises(ServerUnavailable):
        make_proxy().future.add(1, 2)


def test_the_request_is_not_left_in_the_queue(stopped_server, make_proxy, broker_url, server_id):
    proxy = make_proxy()
    for _ in range(3):
        with pytest.raises(ServerUnavailable, match=r"\(0 requests waiting\)"):
            proxy.add(1, 2)


def test_wait_for_ready_lets_the_call_wait_for_a_server(stopped_server, make_proxy):
    proxy = make_proxy()
    result: list[int] = []
    caller = threading.Thread(target=lambda: result.append(
        proxy.wait_for_ready().set_timeout(20).add(2, 3)))
    caller.start()
    time.sleep(0.5)
    assert not result
    stopped_server.start()
    try:
        caller.join(20)
    finally:
        stopped_server.stop()
    assert result == [5]


def test_a_proxy_made_to_wait_for_ready_waits_on_every_call(stopped_server, make_proxy):
    proxy = make_proxy(wait_for_ready=True, timeout=0.5)
    with pytest.raises(rpc.RPCTimeout):
        proxy.add(2, 3)


def test_the_check_is_cached_so_calls_to_a_live_server_cost_no_round_trip(make_server, make_proxy):
    server = make_server(register=lambda s: s.register_function(lambda a, b: a + b, "add"))
    proxy = make_proxy()
    assert proxy.add(1, 2) == 3
    server.stop()
    # Within the check's second the proxy still believes in the server: the request waits.
    with pytest.raises(rpc.RPCTimeout):
        proxy.set_timeout(0.3).add(1, 2)
    time.sleep(1.1)
    with pytest.raises(ServerUnavailable):
        proxy.add(1, 2)


def test_retries_carry_a_call_over_a_server_restart(stopped_server, make_proxy):
    proxy = make_proxy(retries=20, timeout=20)
    starter = threading.Timer(0.5, stopped_server.start)
    starter.start()
    try:
        assert proxy.add(2, 3) == 5
    finally:
        starter.join()
        stopped_server.stop()


def test_calls_wait_sixty_seconds_by_default(broker_url, server_id):
    with Proxy(broker_url, server_id=server_id) as proxy:
        assert proxy.default_timeout == 60.0


def test_no_timeout_must_be_asked_for(broker_url, server_id):
    with Proxy(broker_url, server_id=server_id, timeout=None) as proxy:
        assert proxy.default_timeout is None


def test_a_queue_that_does_not_exist_is_still_an_unknown_server(make_proxy):
    with pytest.raises(UnknownServer) as info:
        make_proxy(server_id="nobody-declared-this").add(1, 2)
    assert not isinstance(info.value, ServerUnavailable)


def test_an_async_proxy_fails_fast_or_waits_for_ready_too(stopped_server, broker_url, server_id):
    async def main() -> None:
        async with AsyncProxy(broker_url, server_id=server_id) as proxy:
            with pytest.raises(ServerUnavailable):
                await proxy.add(1, 2)
            with pytest.raises(rpc.RPCTimeout):
                await proxy.wait_for_ready().set_timeout(0.3).add(1, 2)

    asyncio.run(main())
