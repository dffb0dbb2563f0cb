"""Nobody serving: ``ServerUnavailable`` at once, or ``wait_for_ready`` until a server starts."""

from __future__ import annotations

import time
from typing import Any

import pytest

import rpc

from .conftest import Runs
from .test_failover import register_echo

pytestmark = [pytest.mark.cluster, pytest.mark.integration]


def test_a_call_to_a_stopped_server_fails_at_once_with_server_unavailable(
        cluster: Any, servers: Any, proxies: Any, runs: Runs, server_id: str,
        cleanup_queues: list[str]) -> None:
    cleanup_queues.append(server_id)
    server = servers(cluster.urls, server_id, register=register_echo(runs))
    proxy = proxies(cluster.urls_from(1), server_id, timeout=30)
    assert proxy.echo(1) == 1
    server.stop(grace=2)
    stopped = time.monotonic()
    info = cluster.queue_info(server_id)
    assert info is not None and info["consumers"] == 0, info  # the queue stays, unconsumed
    # A proxy checks for consumers at most once a second: a call in the second after a check
    # that found the server may wait in the queue instead.
    time.sleep(max(stopped + 1.5 - time.monotonic(), 0))

    for caller in (proxy, proxies(cluster.urls_from(2), server_id, timeout=30)):
        started = time.monotonic()
        with pytest.raises(rpc.ServerUnavailable) as caught:
            caller.echo(2)
        assert time.monotonic() - started < 2.0
        assert isinstance(caught.value, rpc.UnknownServer)
    assert runs.count[2] == 0


def test_wait_for_ready_call_is_answered_when_a_server_starts(
        cluster: Any, servers: Any, proxies: Any, runs: Runs, server_id: str,
        cleanup_queues: list[str]) -> None:
    cleanup_queues.append(server_id)
    servers(cluster.urls, server_id, register=register_echo(runs)).stop(grace=2)
    proxy = proxies(cluster.urls_from(2), server_id, timeout=30)

    waiting = proxy.wait_for_ready().future.echo(5)
    time.sleep(2.0)
    assert not waiting.done(), waiting
    servers(cluster.urls_from(1), server_id, register=register_echo(runs))
    assert waiting.result(timeout=15) == 5
    assert runs.count[5] == 1


def test_a_proxy_with_wait_for_ready_times_out_when_no_server_comes(
        cluster: Any, servers: Any, proxies: Any, runs: Runs, server_id: str,
        cleanup_queues: list[str]) -> None:
    cleanup_queues.append(server_id)
    servers(cluster.urls, server_id, register=register_echo(runs)).stop(grace=2)
    proxy = proxies(cluster.urls, server_id, timeout=2, wait_for_ready=True)

    started = time.monotonic()
    with pytest.raises(rpc.RPCTimeout):
        proxy.echo(6)
    assert 1.5 < time.monotonic() - started < 6.0
