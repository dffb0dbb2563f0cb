"""TLS with verification on by default, size limits and least-privilege broker users."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

import rpc
from rpc import Proxy, Server

CTL = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")


def test_amqps_verifies_the_certificate_by_default(tls_broker):
    with pytest.raises(rpc.ConnectionError, match="CERTIFICATE_VERIFY_FAILED|certificate verify"):
        Proxy(tls_broker["url"], connect_retry=0.5)


def test_amqps_verifies_the_hostname(tls_broker):
    wrong_name = tls_broker["url"].replace("@localhost:", "@127.0.0.2:")
    with pytest.raises(rpc.ConnectionError):
        Proxy(wrong_name, connect_retry=0.5, ssl={"context": {"cafile": tls_broker["ca"]}})


def test_calls_work_over_tls_with_the_ca_trusted(tls_broker, server_id):
    trust = {"context": {"cafile": tls_broker["ca"]}}
    server = Server(tls_broker["url"], server_id=server_id, ssl=trust, concurrency=2)
    server.register_function(lambda a, b: a + b, "add")
    server.register_function(lambda n: "x" * n, "blob")
    server.start()
    try:
        with Proxy(tls_broker["url"], server_id=server_id, ssl=trust) as proxy:
            assert proxy.add(2, 3) == 5
            assert len(proxy.blob(300_000)) == 300_000  # several TLS records and frames
            futures = [proxy.future.add(i, i) for i in range(100)]
            assert [f.result(10) for f in futures] == [2 * i for i in range(100)]
    finally:
        server.stop()


@pytest.fixture
def ctl(rabbitmq_proc):
    """rabbitmqctl against the session's own node."""
    node = f"rabbitmq-test-{rabbitmq_proc.port}"

    def run(*args: str) -> str:
        done = subprocess.run([str(CTL), "-n", f"{node}@{_hostname()}", *args],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    return run


def _hostname() -> str:
    import socket

    return socket.gethostname().split(".")[0]


@pytest.mark.slow
def test_least_privilege_server_and_client_users(broker_url, ctl, server_id):
    if "RPC_TEST_BROKER_URL" in __import__("os").environ:
        pytest.skip("creates users: only on the session's own broker")
    suffix = uuid.uuid4().hex[:6]
    server_user, client_user = f"srv-{suffix}", f"cli-{suffix}"
    queue = f"rpc.{server_id}"
    ctl("add_user", server_user, "srv-pw")
    ctl("add_user", client_user, "cli-pw")
    try:
        ctl("set_permissions", "-p", "/", server_user,
            r"^rpc\..*", r"^(amq\.default|rpc\..*)$", r"^rpc\..*")
        ctl("set_permissions", "-p", "/", client_user,
            r"^amq\.gen.*", r"^(amq\.default|amq\.gen.*|rpc\.broadcast\..*)$", r"^amq\.gen.*")
        host = broker_url.split("@", 1)[1]
        server = Server(f"amqp://{server_user}:srv-pw@{host}", server_id=queue)
        server.register_function(lambda: "hello", "hi")
        server.start()
        try:
            with Proxy(f"amqp://{client_user}:cli-pw@{host}", server_id=queue) as proxy:
                assert proxy.hi() == "hello"
            with pytest.raises(rpc.ConnectionError):  # the client cannot consume the requests
                thief = Server(f"amqp://{client_user}:cli-pw@{host}", server_id=queue,
                               connect_retry=0.5)
                thief.start()
        finally:
            server.stop()
    finally:
        ctl("delete_user", server_user)
        ctl("delete_user", client_user)
