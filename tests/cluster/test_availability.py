"""Nobody serving: ``ServerUnavailable`` at once, or ``wait_for_ready`` until a server starts;
and no ``ServerUnavailable`` while a quorum queue changes leader."""

from __future__ import annotations

import threading
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


def test_a_quorum_queue_changing_leader_after_its_node_died_is_no_server_unavailable(
        cluster: Any, servers: Any, proxies: Any, runs: Runs, server_id: str,
        cleanup_queues: list[str]) -> None:
    """The broker counts no consumer for a moment (0.05-0.2 s measured) while a new leader
    takes over: the proxy asks again before it calls the server unavailable."""
    cleanup_queues += [server_id, f"{server_id}.dead"]
    first = servers(cluster.urls, server_id, queue_type="quorum", register=register_echo(runs))
    leader = cluster.queue_leader(server_id)
    assert leader is not None
    other, third = [i for i in range(3) if i != leader]
    servers(cluster.url(other), server_id, queue_type="quorum", register=register_echo(runs))
    first.stop(grace=2)  # the one server left is on a node the leader's death leaves alone
    proxy = proxies(cluster.url(third), server_id, timeout=30)
    assert proxy.echo(1) == 1

    errors: list[Exception] = []
    asked = 0
    done = threading.Event()

    def ask() -> None:
        nonlocal asked
        give_up = time.monotonic() + 8
        while not done.is_set() and time.monotonic() < give_up:
            try:
                proxy.check_availability()
            except rpc.RPCError as exc:
                errors.append(exc)
            asked += 1

    asking = threading.Thread(target=ask, daemon=True)
    asking.start()
    try:
        time.sleep(0.5)
        cluster.kill(leader)
        time.sleep(3)  # past the new leader's election (the queue's members are on every node)
    finally:
        done.set()
        asking.join(10)
    assert asked > 10
    assert errors == []
    assert proxy.echo(2) == 2
