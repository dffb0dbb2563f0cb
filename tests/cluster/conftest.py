"""Fixtures of the cluster suite: a three-node RabbitMQ cluster of the session's own.

The cluster (``benchmarks/rabbit_cluster.py``, shared with ``python -m benchmarks.cluster``)
starts once per session, on loopback ports of its own and node names unique to the session
(``rpcc<i>-<random>@localhost``), with ``net_ticktime = 4`` so that a frozen node is noticed
within seconds, and ``autoheal`` partition handling. After every test that killed, stopped or
froze a node, all three nodes are brought back and clustered again, so tests are independent.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rpc import Proxy, Server

try:
    from benchmarks.rabbit_cluster import RabbitCluster, available
except ModuleNotFoundError:  # plain `pytest` (not `python -m pytest`): the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from benchmarks.rabbit_cluster import RabbitCluster, available

#: Heartbeat of every client here (seconds): a silent node is noticed in about two of them.
HB = 2.0
#: Upper bound of any single wait in this suite.
WAIT = 30.0


@pytest.fixture(scope="session")
def rabbit_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    """The session's three-node cluster (started at first use, killed at the session's end).

    It is always a cluster of the session's own, even when $RPC_TEST_BROKER_URL names a broker.
    """
    if not available():
        message = "/usr/lib/rabbitmq/bin/rabbitmq-server is missing: install rabbitmq-server"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    cluster = RabbitCluster(tmp_path_factory.mktemp("rabbit-cluster"))
    atexit.register(cluster.stop)  # an interrupted session kills its nodes too
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cleanup_queues(rabbit_cluster: RabbitCluster) -> Iterator[list[str]]:
    """Names of durable queues a test leaves behind (quorum queues outlive their server),
    deleted once the clients are gone and the cluster is healed."""
    names: list[str] = []
    yield names
    for name in names:
        rabbit_cluster.delete_queue(name)


@pytest.fixture
def cluster(rabbit_cluster: RabbitCluster, cleanup_queues: list[str]) -> Iterator[RabbitCluster]:
    """The session's cluster, healed after the test if the test took a node down or froze it
    (after its servers and proxies are stopped, before its queues are deleted)."""
    if rabbit_cluster.disturbed():
        rabbit_cluster.heal()
    yield rabbit_cluster
    if rabbit_cluster.disturbed():
        rabbit_cluster.heal()


def wait_for(predicate: Callable[[], Any], timeout: float = WAIT, interval: float = 0.05,
             message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


class Runs:
    """What a server's handlers ran: a count per argument and the time of every run."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count: Counter[Any] = Counter()
        self.times: list[tuple[float, Any]] = []
        self.started = threading.Event()

    def record(self, key: Any) -> None:
        with self.lock:
            self.count[key] += 1
            self.times.append((time.monotonic(), key))
        self.started.set()

    def first_after(self, moment: float) -> float | None:
        with self.lock:
            later = [t for t, _ in self.times if t > moment]
        return min(later) if later else None

    def twice(self) -> dict[Any, int]:
        with self.lock:
            return {key: n for key, n in self.count.items() if n > 1}


@pytest.fixture
def runs() -> Runs:
    return Runs()


@pytest.fixture
def servers(cluster: RabbitCluster) -> Iterator[Callable[..., Server]]:
    """Start in-process servers (heartbeat :data:`HB`); each is stopped after the test."""
    started: list[Server] = []

    def start(url: Any, server_id: str, *, register: Callable[[Server], Any] | None = None,
              **options: Any) -> Server:
        options.setdefault("heartbeat", HB)
        options.setdefault("send_tracebacks", True)
        server = Server(url, server_id=server_id, **options)
        if register is not None:
            register(server)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        with contextlib.suppress(Exception):  # a server whose node is gone may not stop cleanly
            server.stop(grace=2)


@pytest.fixture
def proxies(cluster: RabbitCluster) -> Iterator[Callable[..., Proxy]]:
    """Open proxies (heartbeat :data:`HB`); each is closed after the test."""
    opened: list[Proxy] = []

    def open_proxy(url: Any, server_id: str, **options: Any) -> Proxy:
        options.setdefault("heartbeat", HB)
        proxy = Proxy(url, server_id=server_id, **options)
        opened.append(proxy)
        return proxy

    yield open_proxy
    for proxy in opened:
        with contextlib.suppress(Exception):
            proxy.close()
