"""Retries that do not run twice: a call whose connection fails is published again with the same
message id, and the server answers the repeat from its table of completed calls."""

from __future__ import annotations

import threading
import time

import pytest

from rpc import ConnectionLost, Proxy, Server, current_call

pytestmark = pytest.mark.integration


class Flaky:
    """A handler that, on its first run, cuts the calling proxy's connection mid-call."""

    def __init__(self) -> None:
        self.runs: list[str | None] = []
        self.proxy: Proxy | None = None

    def work(self, x: int) -> int:
        self.runs.append(current_call().message_id)
        if len(self.runs) == 1:
            assert self.proxy is not None
            self.proxy._link.close()  # the caller's connection drops while this call runs
            time.sleep(0.3)
        return x * 2


@pytest.fixture
def flaky(broker_url: str, server_id: str):
    handler = Flaky()
    server = Server(broker_url, server_id=server_id, concurrency=2)
    server.register_function(handler.work, "work")
    server.start()
    yield handler, server
    server.stop(grace=5)


def test_a_retried_call_returns_its_result_and_runs_once(flaky, broker_url, server_id):
    handler, server = flaky
    with Proxy(broker_url, server_id=server_id, retries=3, timeout=10) as proxy:
        handler.proxy = proxy
        assert proxy.work(21) == 42
    assert len(handler.runs) == 1
    assert server.stats["duplicates"] == 1


def test_without_retries_the_call_fails_at_once_with_connection_lost(flaky, broker_url, server_id):
    handler, _ = flaky
    with Proxy(broker_url, server_id=server_id, timeout=10) as proxy:
        handler.proxy = proxy
        started = time.monotonic()
        with pytest.raises(ConnectionLost):
            proxy.work(21)
        assert time.monotonic() - started < 2


def test_set_retries_applies_to_one_call(flaky, broker_url, server_id):
    handler, _ = flaky
    with Proxy(broker_url, server_id=server_id, timeout=10) as proxy:
        handler.proxy = proxy
        assert proxy.set_retries(2).work(5) == 10
    assert len(handler.runs) == 1


def test_a_future_with_retries_resolves_to_the_result(flaky, broker_url, server_id):
    handler, server = flaky
    with Proxy(broker_url, server_id=server_id, timeout=10) as proxy:
        handler.proxy = proxy
        assert proxy.set_retries(2).future.work(4).result(10) == 8
    assert len(handler.runs) == 1
    assert server.stats["duplicates"] == 1


def test_a_callback_call_with_retries_gets_the_result(flaky, broker_url, server_id):
    handler, _ = flaky
    results: list[object] = []
    done = threading.Event()
    with Proxy(broker_url, server_id=server_id, timeout=10) as proxy:
        handler.proxy = proxy
        proxy.set_retries(2).callback(lambda r: (results.append(r), done.set()),
                                      lambda e: (results.append(e), done.set())).work(3)
        assert done.wait(10)
    assert results == [6]
    assert len(handler.runs) == 1


def test_the_proxy_reconnects_by_itself_after_a_loss(flaky, broker_url, server_id):
    handler, _ = flaky
    with Proxy(broker_url, server_id=server_id, timeout=10) as proxy:
        handler.proxy = proxy
        with pytest.raises(ConnectionLost):
            proxy.work(1)
        deadline = time.monotonic() + 5
        while not proxy.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proxy.connected
        assert proxy.work(2) == 4


@pytest.mark.parametrize("bad", [-1, 101, 1.5, "3", True])
def test_retries_must_be_a_whole_number_from_0_to_100(bad, broker_url, server_id):
    with pytest.raises(ValueError, match="retries"):
        Proxy(broker_url, server_id=server_id, retries=bad)
