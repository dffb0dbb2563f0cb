"""Retries that do not run twice: a call whose connection fails is published again with the same
message id, and the server answers the repeat from its table of completed calls."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from support import started_servers, wait_for

from rpc import AsyncProxy, CallbackState, Cancelled, ConnectionLost, Proxy, Server, current_call

pytestmark = pytest.mark.integration

WAIT = 10  # seconds: the bound on every wait of the cancel tests


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


# -- cancelling a call that waits to retry ---------------------------------------------------------

@pytest.fixture
def unserved(broker_url: str, server_id: str) -> None:
    """The server's queue with nobody consuming it: a call fails its availability check with
    ServerUnavailable, and its retry waits 0.5 s or more."""
    stopped = Server(broker_url, server_id=server_id)
    stopped.start()
    stopped.stop()


def cancel_while_waiting_to_retry(
        kind: str, broker_url: str, server_id: str, meanwhile: Callable[[], object] = lambda: None,
        **options: Any) -> tuple[bool, object]:
    """Make a callback call ``add(1, 2)`` whose retry waits, cancel it, and run ``meanwhile`` with
    the proxy still open; return what cancel() said and what a callback got, once the call's state
    is FINISHED."""
    if kind == "sync":
        with Proxy(broker_url, server_id=server_id, timeout=WAIT, **options) as proxy:
            outcomes: queue.SimpleQueue[object] = queue.SimpleQueue()
            uid = proxy.set_retries(3).callback(outcomes.put, outcomes.put).add(1, 2)
            cancelled = proxy.cancel(uid)
            meanwhile()
            outcome = outcomes.get(timeout=WAIT)
            wait_for(lambda: proxy.get_callback_state(uid) is CallbackState.FINISHED, WAIT, 0.01,
                     "the call to finish")
            return cancelled, outcome

    async def scenario() -> tuple[bool, object]:
        async with AsyncProxy(broker_url, server_id=server_id, timeout=WAIT, **options) as proxy:
            outcomes: asyncio.Queue[object] = asyncio.Queue()
            uid = proxy.set_retries(3).callback(outcomes.put_nowait, outcomes.put_nowait).add(1, 2)
            await asyncio.sleep(0.2)  # its availability check fails; its retry waits
            cancelled = proxy.cancel(uid)
            await asyncio.to_thread(meanwhile)
            outcome = await outcomes.get()
            while proxy.get_callback_state(uid) is not CallbackState.FINISHED:
                await asyncio.sleep(0.01)
            return cancelled, outcome

    return asyncio.run(asyncio.wait_for(scenario(), WAIT))


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_cancel_ends_a_callback_call_waiting_to_retry_with_cancelled(
        kind: str, unserved: None, broker_url: str, server_id: str) -> None:
    cancelled, outcome = cancel_while_waiting_to_retry(kind, broker_url, server_id)
    assert cancelled
    assert isinstance(outcome, Cancelled)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_callback_call_cancelled_while_waiting_to_retry_is_not_published_again(
        kind: str, unserved: None, broker_url: str, server_id: str) -> None:
    runs: list[int] = []
    with started_servers(stop_grace=5) as start:
        def serve() -> None:
            start(broker_url, server_id,
                  register=lambda server: server.register_function(
                      lambda a, b: runs.append(a + b), "add"))
            time.sleep(1)  # past the retry's backoff: a retry would have run by now

        cancel_while_waiting_to_retry(kind, broker_url, server_id, serve)
    assert runs == []


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_callback_call_cancelled_while_waiting_to_retry_counts_once_as_cancelled(
        kind: str, unserved: None, broker_url: str, server_id: str) -> None:
    registry = pytest.importorskip("prometheus_client").REGISTRY

    def outcomes() -> dict[str, float]:
        return {s.labels["outcome"]: s.value for family in registry.collect()
                for s in family.samples if s.name == "rpc_client_calls_total" and s.value
                and s.labels["server_id"] == server_id and s.labels["method"] == "add"}

    # The proxy stays open past the retry's backoff: nothing more counts the call.
    cancel_while_waiting_to_retry(kind, broker_url, server_id, lambda: time.sleep(1), metrics=True)
    assert outcomes() == {"cancelled": 1}


@pytest.mark.parametrize("bad", [-1, 101, 1.5, "3", True])
def test_retries_must_be_a_whole_number_from_0_to_100(bad, broker_url, server_id):
    with pytest.raises(ValueError, match="retries"):
        Proxy(broker_url, server_id=server_id, retries=bad)
