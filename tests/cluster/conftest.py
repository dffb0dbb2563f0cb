"""Fixtures of the cluster suite: a three-node RabbitMQ cluster of the session's own.

The cluster (``benchmarks/rabbit_cluster.py``, shared with ``python -m benchmarks.cluster``)
starts once per session, on loopback ports of its own and node names unique to the session
(``rpcc<i>-<random>@localhost``), with ``net_ticktime = 4`` so that a frozen node is noticed
within seconds, and ``autoheal`` partition handling. After every test that killed, stopped or
froze a node, all three nodes are brought back and clustered again, so tests are independent.
"""

from __future__ import annotations

import atexit
import functools
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import support

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


#: Every wait here: up to :data:`WAIT` unless the test says otherwise, polling every 50 ms.
wait_for = functools.partial(support.wait_for, timeout=WAIT, interval=0.05)


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
    """Start in-process servers (heartbeat :data:`HB`); each is stopped after the test, before
    the cluster is healed. A server whose node is gone may not stop cleanly: that is ignored."""
    with support.started_servers(stop_grace=2, ignore_stop_errors=True, heartbeat=HB,
                                 send_tracebacks=True) as start:
        yield start


@pytest.fixture
def proxies(cluster: RabbitCluster) -> Iterator[Callable[..., Proxy]]:
    """Open proxies (heartbeat :data:`HB`); each is closed after the test, errors ignored."""
    with support.opened_proxies(ignore_close_errors=True, heartbeat=HB) as open_proxy:
        yield open_proxy
