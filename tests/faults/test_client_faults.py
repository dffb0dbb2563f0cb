"""Faults on the reply path, seen from the proxy: forged, duplicate, late and hostile replies,
a client that goes away, a slow callback, and a KeyboardInterrupt in the middle of a wait.

Rows C1, C2, C4, C5, C6, C8, C9, E-13 and E-14 of docs/reliability.md. A ``FakeServer`` (raw
py-amqp on the request queue) answers the proxy with whatever bytes a test wants.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import amqp
import msgpack
import pytest
from kombu.connection import Connection

import rpc
from rpc.core.errors import MAX_MESSAGE_CHARS, MAX_TRACEBACK_CHARS

from .conftest import HB, HOLD, WAIT, wait_for

MSGPACK = "application/x-msgpack"


class FakeServer:
    """Consumes the request queue with raw py-amqp and replies by hand."""

    def __init__(self, url: str, queue: str) -> None:
        self.conn = Connection(url)
        self.conn.connect()
        self.channel = self.conn.connection.channel()
        self.channel.queue_declare(queue, durable=True, auto_delete=False)
        self.requests: list[amqp.Message] = []
        self.channel.basic_consume(queue, no_ack=True, callback=self.requests.append)

    def next_request(self) -> amqp.Message:
        deadline = time.monotonic() + WAIT
        while not self.requests:
            assert time.monotonic() < deadline, "no request reached the fake server"
            try:
                self.conn.drain_events(timeout=0.05)
            except TimeoutError:
                pass
        return self.requests.pop(0)

    def reply(self, request: amqp.Message, body: Any = None, *, raw: bytes | None = None,
              content_type: str | None = MSGPACK, **props: Any) -> None:
        props.setdefault("correlation_id", request.properties["correlation_id"])
        if content_type is not None:
            props["content_type"] = content_type
        props.setdefault("type", "rpc.reply")
        payload = raw if raw is not None else msgpack.packb(body)
        self.channel.basic_publish(amqp.Message(payload, **props),
                                   routing_key=request.properties["reply_to"])

    def close(self) -> None:
        self.conn.release()


@pytest.fixture
def fake(broker_url: str, server_id: str) -> Any:
    server = FakeServer(broker_url, server_id)
    yield server
    server.close()


def test_replies_with_forged_or_missing_correlation_ids_are_dropped_and_counted(
        fake, proxies, broker_url, server_id):
    proxy = proxies(broker_url, server_id)
    future = proxy.set_timeout(WAIT).future.add(1, 2)
    request = fake.next_request()
    fake.reply(request, {"result": 99}, correlation_id="forged")
    fake.reply(request, {"result": 98}, correlation_id=None)
    fake.reply(request, {"result": 3})

    assert future.result(WAIT) == 3
    assert proxy.replies_dropped == 2
    assert proxy.pending_calls == 0


def test_duplicate_reply_completes_the_call_once_and_is_counted(fake, proxies, broker_url, server_id):
    proxy = proxies(broker_url, server_id)
    results: list[Any] = []
    proxy.set_timeout(WAIT).callback(results.append, results.append).add(1, 2)
    request = fake.next_request()
    fake.reply(request, {"result": 3})
    fake.reply(request, {"result": 4})

    wait_for(lambda: proxy.replies_dropped == 1, message="the duplicate to be dropped")
    time.sleep(0.1)
    assert results == [3]


@pytest.mark.parametrize("remote_type", [
    "SystemExit", "KeyboardInterrupt", "GeneratorExit", "BaseException", "builtins.SystemExit",
    "os.system", "subprocess.Popen", "rpc_faults_never_imported.Evil", "object", "type",
    "rpc.transport.amqp.AMQPLink",
])
def test_error_reply_never_raises_or_builds_a_type_outside_the_allow_list(
        fake, proxies, broker_url, server_id, remote_type):
    proxy = proxies(broker_url, server_id)
    future = proxy.set_timeout(WAIT).future.add(1, 2)
    fake.reply(fake.next_request(), {"error": {
        "type": remote_type, "message": "boom", "args": ["echo pwned"], "traceback": ""}})
    error = future.exception(WAIT)
    assert type(error) is rpc.RemoteError
    assert error.remote_type == remote_type
    assert "rpc_faults_never_imported" not in sys.modules


def test_error_reply_with_a_huge_message_and_traceback_is_cut_to_the_caps(
        fake, proxies, broker_url, server_id):
    proxy = proxies(broker_url, server_id)
    future = proxy.set_timeout(WAIT).future.add(1, 2)
    fake.reply(fake.next_request(), {"error": {
        "type": "example.Unknown", "message": "m" * 1_000_000, "args": [],
        "traceback": "t" * 1_000_000}})
    error = future.exception(WAIT)
    assert len(str(error)) < MAX_MESSAGE_CHARS + 200
    assert len(error.remote_traceback) < MAX_TRACEBACK_CHARS + 200


def test_builtin_exception_rebuilt_from_a_reply_has_its_message_capped(
        fake, proxies, broker_url, server_id):
    proxy = proxies(broker_url, server_id)
    future = proxy.set_timeout(WAIT).future.add(1, 2)
    huge = "v" * 1_000_000
    fake.reply(fake.next_request(), {"error": {
        "type": "ValueError", "message": huge, "args": [huge], "traceback": ""}})
    error = future.exception(WAIT)
    assert isinstance(error, ValueError)
    assert len(str(error)) < MAX_MESSAGE_CHARS + 200


class Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path.touch, (Path(self.path),))


def test_pickle_reply_to_a_msgpack_call_is_refused_and_never_unpickled(
        fake, proxies, broker_url, server_id, tmp_path):
    marker = tmp_path / "pwned"
    proxy = proxies(broker_url, server_id)
    future = proxy.set_timeout(WAIT).future.add(1, 2)
    fake.reply(fake.next_request(), raw=pickle.dumps({"result": Exploit(str(marker))}),
               content_type="application/x-python-serialize")
    assert isinstance(future.exception(WAIT), rpc.RPCError)
    assert not marker.exists()


@pytest.mark.parametrize("content_type, payload", [
    (None, msgpack.packb({"result": 3})),
    ("text/plain", b"3"),
    (MSGPACK, b"\xc1\xc1 not msgpack"),
    (MSGPACK, msgpack.packb([1, 2, 3])),
    (MSGPACK, msgpack.packb({"neither": 1})),
    ("application/json", b'{"result": 3}'),  # results come back only in the call's own type
], ids=["no-type", "text", "undecodable", "not-a-map", "no-result", "json-result"])
def test_malformed_reply_fails_its_call_with_rpc_error_and_the_proxy_lives_on(
        fake, proxies, broker_url, server_id, content_type, payload):
    proxy = proxies(broker_url, server_id)
    future = proxy.set_timeout(WAIT).future.add(1, 2)
    fake.reply(fake.next_request(), raw=payload, content_type=content_type)
    error = future.exception(WAIT)
    assert isinstance(error, rpc.RPCError) and not isinstance(error, rpc.RPCTimeout)

    future = proxy.set_timeout(WAIT).future.add(1, 2)
    fake.reply(fake.next_request(), {"result": 3})
    assert future.result(WAIT) == 3


def test_server_survives_a_client_that_left_before_its_reply(
        servers, proxies, node, broker_url, server_id):
    gate = threading.Event()
    server = servers(broker_url, server_id, register=lambda s: (
        s.register_function(lambda: gate.wait(HOLD) and "late", "slow"),
        s.register_function(lambda: "ok", "ping")))
    gone = proxies(broker_url, server_id)
    gone.set_timeout(WAIT).future.slow()
    wait_for(lambda: server.stats.get("calls", 0) == 0 and node.queues()[server_id][
        "messages_unacknowledged"] == 1, interval=0.1, message="the call to be taken")
    gone.close()
    gate.set()

    wait_for(lambda: server.stats["calls"] == 1, message="the reply to be sent into the void")
    assert proxies(broker_url, server_id).set_timeout(WAIT).ping() == "ok"
    queue = node.queues()[server_id]
    assert (queue["messages_ready"], queue["messages_unacknowledged"]) == (0, 0)


@pytest.mark.slow
def test_late_replies_after_timeouts_are_all_dropped_and_nothing_stays_pending(
        servers, proxies, broker_url, server_id):
    server = servers(broker_url, server_id, concurrency=4, register=lambda s: s.register_function(
        lambda: time.sleep(0.05), "nap"))
    proxy = proxies(broker_url, server_id)
    futures = [proxy.set_timeout(0.03).future.nap() for _ in range(200)]
    for future in futures:
        assert isinstance(future.exception(WAIT), rpc.RPCTimeout)

    wait_for(lambda: proxy.replies_dropped == server.stats["calls"],
             message="every late reply to be dropped")
    time.sleep(0.3)
    assert proxy.replies_dropped == server.stats["calls"]
    # Some ran past their deadlines: replied late (and dropped), or cancelled on the server by
    # the cancel a passed deadline sends (protocol v1.1); the rest expired unrun.
    assert server.stats["calls"] + server.stats["cancelled"] > 0
    assert proxy.pending_calls == 0


@pytest.mark.slow
def test_slow_callback_stalls_neither_other_calls_nor_heartbeats(
        tcp, tcp_url, servers, proxies, broker_url, server_id):
    servers(broker_url, server_id, register=lambda s: s.register_function(lambda: "ok", "ping"))
    proxy = proxies(tcp_url, server_id)
    in_callback = threading.Event()

    def slow(_: Any) -> None:
        in_callback.set()
        time.sleep(4 * HB)

    proxy.callback(slow).ping()
    assert in_callback.wait(WAIT)
    futures = [proxy.future.ping() for _ in range(3)]
    assert [f.result(WAIT) for f in futures] == ["ok"] * 3
    assert proxy.set_timeout(WAIT).ping() == "ok"
    time.sleep(4 * HB)  # the callback ends; the connection lived through it
    assert proxy.ping() == "ok"
    assert tcp.accepted == 1


def test_keyboard_interrupt_during_a_wait_leaves_the_proxy_usable_and_nothing_pending(
        servers, proxies, broker_url, server_id):
    gate = threading.Event()
    servers(broker_url, server_id, concurrency=2, register=lambda s: (
        s.register_function(lambda: gate.wait(WAIT) and "late", "slow"),
        s.register_function(lambda: "ok", "ping")))
    proxy = proxies(broker_url, server_id)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            proxy.set_timeout(WAIT).slow()
    finally:
        timer.cancel()
        gate.set()
    assert proxy.set_timeout(WAIT).ping() == "ok"
    wait_for(lambda: proxy.pending_calls == 0, message="the interrupted call to be forgotten")


def test_a_call_interrupted_while_its_request_is_written_is_not_left_pending(
        servers, proxies, broker_url, server_id, monkeypatch):
    servers(broker_url, server_id, register=lambda s: s.register_function(lambda: "ok", "ping"))
    proxy = proxies(broker_url, server_id)
    assert proxy.ping() == "ok"

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt  # as a SIGINT lands inside the write

    monkeypatch.setattr(proxy._link, "publish", interrupted)
    with pytest.raises(KeyboardInterrupt):
        proxy.ping()
    assert proxy.pending_calls == 0


def test_keyboard_interrupted_call_whose_reply_never_comes_is_not_left_pending(
        servers, proxies, broker_url, server_id):
    stop = servers(broker_url, server_id)
    stop.stop()  # the queue stays, with nobody consuming it
    proxy = proxies(broker_url, server_id, wait_for_ready=True)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            proxy.set_timeout(WAIT).anything()
    finally:
        timer.cancel()
    assert proxy.pending_calls == 0


def test_calls_after_close_are_refused(proxies, broker_url, server_id):
    proxy = proxies(broker_url, server_id)
    proxy.close()
    with pytest.raises(rpc.RPCError, match="closed"):
        proxy.ping()
    with pytest.raises(rpc.RPCError, match="closed"):
        proxy.future.ping()
