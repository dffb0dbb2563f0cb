"""Fixtures of the fault-injection suite: the TCP proxy, rabbitmqctl on the test's own node,
a second node for node-wide faults, server subprocesses, and bounded waiting.

Every fault here hits only what the session owns: its own RabbitMQ node (never a broker named
by $RPC_TEST_BROKER_URL, which may be shared: tests that need rabbitmqctl skip there), its own
TCP proxy on loopback, and its own child processes, killed in ``finally``.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import support
from pytest_rabbitmq import factories

from rpc import Proxy, Server

from .tcpproxy import TCPProxy

#: Heartbeat of every fault test: short enough to detect a dead peer in seconds.
HB = 1.0
#: Upper bound of any single wait in this suite.
WAIT = 20.0
#: The longest a handler holds a call that its test releases: longer than the rabbitmqctl
#: commands the test runs meanwhile take on a loaded host (over 16 s seen), so the fault or
#: the look always comes while the call runs.
HOLD = 60.0

HERE = Path(__file__).parent

# A second node of the session's own, started only by the tests that stop its app or raise a
# resource alarm on it (node-wide faults), so the main test node is never disturbed.
rabbitmq_proc_faults = factories.rabbitmq_proc(port=None)

#: Every wait here: up to :data:`WAIT` unless the test says otherwise, polling every 20 ms.
wait_for = functools.partial(support.wait_for, timeout=WAIT, interval=0.02)


class Node:
    """rabbitmqctl on a node this session started (pytest-rabbitmq's executor)."""

    def __init__(self, proc: Any) -> None:
        self.proc = proc
        self.host = proc.host
        self.port = int(proc.port)

    def url(self, user: str = "guest", password: str = "guest", vhost: str = "/") -> str:
        return f"amqp://{user}:{password}@{self.host}:{self.port}/{'' if vhost == '/' else vhost}"

    def ctl(self, *args: str) -> str:
        return str(self.proc.rabbitctl_output(*args))

    def _json(self, *args: str) -> list[dict[str, Any]]:
        out = self.ctl("-q", *args, "--formatter", "json").strip()
        return list(json.loads(out)) if out else []

    def connections(self, name_contains: str = "") -> list[dict[str, Any]]:
        """Live connections whose ``connection_name`` contains ``name_contains``."""
        out = self.ctl("-q", "list_connections", "--no-table-headers", "pid", "user",
                       "client_properties")
        found = []
        for line in out.splitlines():
            if not line.strip():
                continue
            pid, user, props = line.split("\t", 2)
            match = re.search(r'\{"connection_name","([^"]*)"\}', props)
            name = match.group(1) if match else ""
            if name_contains in name:
                found.append({"pid": pid, "user": user, "connection_name": name})
        return found

    def close_connections(self, name_contains: str, reason: str = "fault injected") -> int:
        closed = 0
        for conn in self.connections(name_contains):
            self.ctl("close_connection", conn["pid"], reason)
            closed += 1
        return closed

    def queues(self, vhost: str = "/") -> dict[str, dict[str, Any]]:
        rows = self._json("list_queues", "-p", vhost, "name", "messages_ready",
                          "messages_unacknowledged", "consumers", "type")
        return {row["name"]: row for row in rows}

    def delete_queue(self, name: str) -> None:
        self.ctl("delete_queue", name)

    def raise_memory_alarm(self) -> None:
        """Block every publishing connection of the node (a resource alarm)."""
        self.ctl("set_vm_memory_high_watermark", "absolute", "1")

    def clear_memory_alarm(self) -> None:
        self.ctl("set_vm_memory_high_watermark", "0.4")


@pytest.fixture(scope="session")
def node(broker_url: str, request: pytest.FixtureRequest) -> Node:
    """The session's own node, for rabbitmqctl; skipped on a broker named by the environment."""
    if os.environ.get("RPC_TEST_BROKER_URL"):
        pytest.skip("rabbitmqctl faults run only against a node of the session's own")
    return Node(request.getfixturevalue("rabbitmq_proc"))


@pytest.fixture(scope="session")
def fault_node(broker_url: str, request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Node:
    """A second node, for node-wide faults: app restarts and resource alarms."""
    if os.environ.get("RPC_TEST_BROKER_URL"):
        pytest.skip("node-wide faults run only against a node of the session's own")
    # Its own configuration: the session's one pins a TLS listener port that the main node holds.
    config = tmp_path_factory.mktemp("rabbitmq-faults") / "rabbitmq.conf"
    config.write_text("loopback_users.guest = true\n")
    saved = os.environ.get("RABBITMQ_CONFIG_FILE")
    os.environ["RABBITMQ_CONFIG_FILE"] = str(config)
    try:
        return Node(request.getfixturevalue("rabbitmq_proc_faults"))
    finally:
        if saved is None:
            del os.environ["RABBITMQ_CONFIG_FILE"]
        else:
            os.environ["RABBITMQ_CONFIG_FILE"] = saved


def _upstream(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 5672


@pytest.fixture
def tcp(broker_url: str) -> Iterator[TCPProxy]:
    """A TCP proxy in front of the test broker, in pass mode."""
    with TCPProxy(_upstream(broker_url)) as proxy:
        yield proxy


@pytest.fixture
def tcp_url(tcp: TCPProxy, broker_url: str) -> str:
    """The test broker's URL with the TCP proxy's port instead of the broker's."""
    parts = urlsplit(broker_url)
    vhost = unquote(parts.path[1:]) if parts.path not in ("", "/") else "/"
    return tcp.url(parts.username or "guest", parts.password or "guest", vhost)


@pytest.fixture
def servers() -> Iterator[Callable[..., Server]]:
    """Start in-process servers (heartbeat :data:`HB`); each is stopped after the test."""
    with support.started_servers(stop_grace=2, heartbeat=HB, send_tracebacks=True) as start:
        yield start


@pytest.fixture
def proxies() -> Iterator[Callable[..., Proxy]]:
    """Open proxies (heartbeat :data:`HB`); each is closed after the test."""
    with support.opened_proxies(heartbeat=HB) as open_proxy:
        yield open_proxy


class ServerProcess:
    """One ``serverproc.py`` child: its pid, its log, and signals."""

    def __init__(self, popen: subprocess.Popen[str]) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.log.append(line.rstrip())

    def wait_serving(self, timeout: float = WAIT) -> None:
        def serving() -> bool:
            if self.popen.poll() is not None:
                pytest.fail(f"server process exited with {self.popen.returncode}: {self.log}")
            return any("serving" in line for line in self.log)

        wait_for(serving, timeout=timeout, message=f"server pid {self.pid} to serve")

    @property
    def serving(self) -> bool:
        return any("serving" in line for line in self.log)

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        if self.popen.poll() is None:
            try:
                os.kill(self.pid, signal.SIGCONT)
                self.popen.kill()
            except ProcessLookupError:
                pass
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture
def runs_file(tmp_path: Path) -> Path:
    """Where server processes record each handler run as ``<tag> <pid>``."""
    path = tmp_path / "runs"
    path.touch()
    return path


def runs(path: Path) -> list[tuple[str, int]]:
    return [(tag, int(pid)) for tag, pid in (line.split() for line in path.read_text().splitlines())]


@pytest.fixture
def spawn_server(runs_file: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start ``serverproc.py`` children serving ``server_id``; every one is killed afterwards."""
    children: list[ServerProcess] = []

    def spawn(url: str, server_id: str, *, wait: bool = True, **options: Any) -> ServerProcess:
        args = [sys.executable, str(HERE / "serverproc.py"), url, server_id, str(runs_file)]
        for key, value in options.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        child = ServerProcess(subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, env=env,
        ))
        children.append(child)
        if wait:
            child.wait_serving()
        return child

    yield spawn
    for child in children:
        child.kill()
