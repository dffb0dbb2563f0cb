"""Shared fixtures: a real RabbitMQ (pytest-rabbitmq, or $RPC_TEST_BROKER_URL) and memory://.

Every test gets server ids of its own (uuid), so tests never share a queue with each other or
with anything else on the broker.
"""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import opened_proxies, started_servers
from tls_certificates import make_certificates

from rpc import Proxy, Server

# The test broker listens on loopback only, on pytest-rabbitmq's port (it passes the environment
# through). A config file of its own keeps a machine-wide /etc/rabbitmq/rabbitmq.conf, which may
# pin listeners to 5672, away from it.
# The node also gets a TLS listener with a certificate of a throwaway CA, for the TLS tests.
os.environ.setdefault("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
TLS: dict[str, Any] | None = None
if "RABBITMQ_CONFIG_FILE" not in os.environ:
    _dir = Path(tempfile.mkdtemp(prefix="rpc-tests-rabbitmq-"))
    _dir.chmod(0o755)
    _certs = make_certificates(_dir)
    with socket.socket() as _sock:
        _sock.bind(("127.0.0.1", 0))
        _tls_port = _sock.getsockname()[1]
    TLS = {"port": _tls_port, "ca": str(_certs["ca"])}
    (_dir / "rabbitmq.conf").write_text(
        "loopback_users.guest = true\n"
        f"listeners.ssl.default = 127.0.0.1:{_tls_port}\n"
        f"ssl_options.cacertfile = {_certs['ca']}\n"
        f"ssl_options.certfile = {_certs['cert']}\n"
        f"ssl_options.keyfile = {_certs['key']}\n"
        "ssl_options.verify = verify_none\n"
        "ssl_options.fail_if_no_peer_cert = false\n"
    )
    os.environ["RABBITMQ_CONFIG_FILE"] = str(_dir / "rabbitmq.conf")

RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


@pytest.fixture(scope="session")
def broker_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A real RabbitMQ: $RPC_TEST_BROKER_URL, else a node of this session's own."""
    external = os.environ.get("RPC_TEST_BROKER_URL")
    if external:
        yield external
        return
    if not RABBITMQ_SERVER.exists():
        message = f"{RABBITMQ_SERVER} is missing: install rabbitmq-server or set RPC_TEST_BROKER_URL"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    proc = request.getfixturevalue("rabbitmq_proc")
    yield f"amqp://guest:guest@{proc.host}:{proc.port}//"


@pytest.fixture(scope="session")
def tls_broker(broker_url: str) -> dict[str, Any]:
    """The session node's TLS listener: ``url`` (amqps://, localhost) and the CA file."""
    if TLS is None or os.environ.get("RPC_TEST_BROKER_URL"):
        pytest.skip("TLS is tested only on a broker node of the session's own")
    return {"url": f"amqps://guest:guest@localhost:{TLS['port']}//", "ca": TLS["ca"]}


@pytest.fixture(params=["amqp", "memory"])
def url(request: pytest.FixtureRequest) -> str:
    """Each transport in turn: the real broker, then kombu's in-process memory://."""
    if request.param == "memory":
        return "memory://"
    return str(request.getfixturevalue("broker_url"))


@pytest.fixture
def server_id() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_server(url: str, server_id: str) -> Iterator[Callable[..., Server]]:
    """Start servers on ``url`` (default id ``server_id``); each is stopped after the test."""
    with started_servers(stop_grace=5, send_tracebacks=True) as start:
        yield lambda **options: start(url, **{"server_id": server_id, **options})


@pytest.fixture
def make_proxy(url: str, server_id: str) -> Iterator[Callable[..., Proxy]]:
    """Open proxies on ``url`` (default id ``server_id``); each is closed after the test."""
    with opened_proxies() as open_proxy:
        yield lambda **options: open_proxy(url, **{"server_id": server_id, **options})
