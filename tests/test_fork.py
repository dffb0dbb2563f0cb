"""A process forked with a proxy or a server (a pre-forking web server, multiprocessing): the
connection stays the parent's, and the child connects anew."""

from __future__ import annotations

import json
import os
import select
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support import opened_proxies, started_servers

from rpc import Server

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

CHILD_LIMIT = 30


def in_child(work: Callable[[], Any]) -> Any:
    """Fork; run ``work`` in the child and return what it returned (JSON), or raise what it
    raised, here in the parent; a child silent for :data:`CHILD_LIMIT` seconds is killed."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        os.close(read_end)
        try:
            outcome = {"value": work()}
        except BaseException as exc:
            outcome = {"error": repr(exc)}
        with os.fdopen(write_end, "w") as out:
            out.write(json.dumps(outcome))
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as answer:
        ready, _, _ = select.select([answer], [], [], CHILD_LIMIT)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"the child hung for {CHILD_LIMIT} s")
        outcome = json.loads(answer.read() or '{"error": "the child died"}')
    os.waitpid(pid, 0)
    if "error" in outcome:
        raise AssertionError(f"in the child: {outcome['error']}")
    return outcome["value"]


def register(runs: list[str]) -> Callable[[Server], None]:
    def exposing(server: Server) -> None:
        @server.expose
        def add(a: int, b: int) -> int:
            return a + b

        @server.expose
        def record(tag: str) -> str:
            runs.append(tag)
            return tag

    return exposing


@pytest.fixture
def runs() -> list[str]:
    """What the parent's server recorded."""
    return []


@pytest.fixture
def served(broker_url: str, server_id: str, runs: list[str]) -> Iterator[Server]:
    with started_servers(stop_grace=5) as start:
        yield start(broker_url, server_id, register=register(runs), concurrency=4)


def test_a_proxy_in_a_forked_child_connects_anew_while_the_parents_calls_go_on(
        served: Server, broker_url: str, server_id: str) -> None:
    with opened_proxies() as open_proxy:
        proxy = open_proxy(broker_url, server_id, timeout=5)
        assert proxy.add(1, 2) == 3
        parent: list[int] = []
        calling = threading.Thread(target=lambda: parent.extend(proxy.add(i, 2) for i in range(50)))
        calling.start()

        child = in_child(lambda: [proxy.add(i, 1) for i in range(50)])

        calling.join(30)
        assert child == [i + 1 for i in range(50)]
        assert parent == [i + 2 for i in range(50)]
        assert proxy.add(2, 2) == 4


def test_a_call_from_a_forked_child_is_no_repeat_of_its_parents(
        served: Server, broker_url: str, server_id: str, runs: list[str]) -> None:
    with opened_proxies() as open_proxy:
        proxy = open_proxy(broker_url, server_id, timeout=5)
        assert proxy.add(0, 0) == 0

        assert in_child(lambda: proxy.record("same")) == "same"
        assert proxy.record("same") == "same"  # the next message id in both processes

        assert runs.count("same") == 2
        assert served.stats["duplicates"] == 0


def test_a_server_stopped_in_a_forked_child_leaves_the_parents_connection_alone(
        served: Server, broker_url: str, server_id: str) -> None:
    def stop_then_start_again() -> list[Any]:
        was_running = served.running
        served.stop(grace=1)
        served.start()  # on a connection of its own
        try:
            with opened_proxies() as open_proxy:
                return [was_running, open_proxy(broker_url, server_id, timeout=5).add(2, 3)]
        finally:
            served.stop(grace=1)

    assert in_child(stop_then_start_again) == [False, 5]

    with opened_proxies() as open_proxy:
        assert open_proxy(broker_url, server_id, timeout=5).add(1, 1) == 2
    assert served.stats["reconnects"] == 0


def test_a_child_forked_while_a_parent_thread_holds_the_memory_wakeup_lock_calls_on_memory(
        server_id: str) -> None:
    from rpc.transport import kombu

    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with kombu._MEMORY_CHANGES._cond:  # as a reader or a publisher does, for a moment
            held.set()
            release.wait(CHILD_LIMIT)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(CHILD_LIMIT)

    def call_on_memory() -> int:
        with started_servers(stop_grace=1) as start, opened_proxies() as open_proxy:
            start("memory://", server_id, register=register([]))
            return int(open_proxy("memory://", server_id, timeout=5).add(1, 2))

    try:
        assert in_child(call_on_memory) == 3
    finally:
        release.set()
        holder.join()
