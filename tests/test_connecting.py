"""Connecting, failing fast and closing: unreachable brokers, unknown servers, the proxy lifecycle."""

from __future__ import annotations

import logging
import socket
import time

import pytest

import rpc
from rpc import Proxy, Server, UnknownServer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_broker_raises_connection_error_after_a_short_retry(caplog):
    url = f"amqp://guest:s3cr3t-pw@127.0.0.1:{free_port()}//"
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG), pytest.raises(rpc.ConnectionError) as info:
        Proxy(url, connect_retry=1.0)
    assert time.monotonic() - started < 5
    assert isinstance(info.value, ConnectionError)
    assert "s3cr3t-pw" not in str(info.value) and "guest:**@" in str(info.value)
    assert "s3cr3t-pw" not in caplog.text
    assert "retrying" in caplog.text


def test_refused_credentials_fail_at_once_without_showing_the_password(broker_url):
    bad = broker_url.replace("guest:guest@", "guest:wrong-pw@")
    started = time.monotonic()
    with pytest.raises(rpc.ConnectionError, match="refused") as info:
        Proxy(bad, connect_retry=10.0)
    assert time.monotonic() - started < 5  # no retry loop for bad credentials
    assert "wrong-pw" not in str(info.value) and "wrong-pw" not in repr(info.value)


def test_server_start_fails_on_an_unreachable_broker():
    server = Server(f"amqp://guest:guest@127.0.0.1:{free_port()}//", connect_retry=0.5)
    with pytest.raises(rpc.ConnectionError):
        server.start()
    assert not server.running


def test_constructing_a_server_does_not_connect():
    server = Server(f"amqp://guest:guest@127.0.0.1:{free_port()}//", server_id="offline")
    assert not server.running and "offline" in repr(server)


def test_call_to_an_undeclared_server_fails_at_once_with_unknown_server(make_proxy):
    proxy = make_proxy(server_id="nobody-declared-this")
    started = time.monotonic()
    with pytest.raises(UnknownServer):
        proxy.add(1, 2)
    with pytest.raises(UnknownServer):
        proxy.future.add(1, 2).result(5)
    assert time.monotonic() - started < 2
    assert proxy.pending_calls == 0


def test_unknown_server_reaches_the_error_callback(make_proxy):
    errors = []
    import threading

    called = threading.Event()

    def on_error(exc):
        errors.append(exc)
        called.set()

    make_proxy(server_id="nobody-declared-this").callback(None, on_error).add(1, 2)
    assert called.wait(5)
    assert isinstance(errors[0], UnknownServer)


def test_proxy_is_a_context_manager_and_refuses_calls_after_close(make_server, url, server_id):
    make_server(register=lambda s: s.register_function(lambda: 1, "one"))
    with Proxy(url, server_id=server_id) as proxy:
        assert proxy.one() == 1
    with pytest.raises(rpc.RPCError, match="closed"):
        proxy.one()
    proxy.close()  # closing twice is harmless


def test_repr_masks_the_password(broker_url):
    with Proxy(broker_url, server_id="x") as proxy:
        assert "guest:**@" in repr(proxy)
    assert ":guest@" not in repr(Server(broker_url))


def test_url_defaults_to_the_environment_variable(monkeypatch, broker_url, server_id):
    monkeypatch.setenv("RPC_BROKER_URL", broker_url)
    server = Server(server_id=server_id)
    server.register_function(lambda: "env", "where")
    server.start()
    try:
        with Proxy(server_id=server_id) as proxy:
            assert proxy.where() == "env"
    finally:
        server.stop()


def test_url_and_pieces_together_are_refused():
    with pytest.raises(ValueError):
        Proxy("amqp://localhost//", hostname="elsewhere")


def test_server_stop_finishes_the_call_in_flight(make_server, make_proxy):
    import threading

    started = threading.Event()

    def slow():
        started.set()
        time.sleep(0.5)
        return "finished"

    server = make_server(register=lambda s: s.register_function(slow, "slow"))
    fut = make_proxy().future.slow()
    assert started.wait(5)
    server.stop(grace=5)
    assert fut.result(5) == "finished"
    assert not server.running


def test_server_can_be_restarted_after_stop(make_server, make_proxy):
    server = make_server(register=lambda s: s.register_function(lambda: 1, "one"))
    server.stop()
    server.start()
    assert make_proxy().one() == 1


def test_starting_a_running_server_is_refused(make_server):
    server = make_server()
    with pytest.raises(RuntimeError):
        server.start()
