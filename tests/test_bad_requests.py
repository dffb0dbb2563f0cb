"""Malformed and hostile requests published raw: typed error replies, and the server lives on."""

from __future__ import annotations

import json
import pickle
import time
import uuid
import zlib
from pathlib import Path

import amqp
import msgpack
import pytest
from kombu.connection import Connection

from rpc import Proxy, Server

WAIT = 10


class RawClient:
    """Publishes hand-made requests and collects the replies over direct reply-to."""

    def __init__(self, url: str) -> None:
        self.conn = Connection(url)
        self.conn.connect()
        self.channel = self.conn.connection.channel()
        self.replies: dict[str, amqp.Message] = {}
        self.channel.basic_consume("amq.rabbitmq.reply-to", no_ack=True, callback=self._on_reply)

    def _on_reply(self, message: amqp.Message) -> None:
        self.replies[message.properties.get("correlation_id")] = message

    def publish(self, queue: str, body: bytes, *, reply: bool = True, **props) -> str:
        cid = uuid.uuid4().hex
        if reply:
            props.setdefault("reply_to", "amq.rabbitmq.reply-to")
        self.channel.basic_publish(amqp.Message(body, correlation_id=cid, **props),
                                   routing_key=queue)
        return cid

    def reply(self, cid: str) -> amqp.Message:
        deadline = time.monotonic() + WAIT
        while cid not in self.replies:
            assert time.monotonic() < deadline, "no reply"
            try:
                self.conn.drain_events(timeout=0.1)
            except TimeoutError:
                pass
        return self.replies.pop(cid)

    def no_reply_within(self, cid: str, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self.conn.drain_events(timeout=0.05)
            except TimeoutError:
                pass
        return cid not in self.replies

    def error_of(self, cid: str) -> dict:
        message = self.reply(cid)
        ctype = message.properties["content_type"]
        body = json.loads(message.body) if ctype == "application/json" else msgpack.unpackb(message.body)
        assert "error" in body, body
        return body["error"]

    def close(self) -> None:
        self.conn.release()


@pytest.fixture
def raw(broker_url):
    client = RawClient(broker_url)
    yield client
    client.close()


@pytest.fixture
def server(broker_url, server_id):
    server = Server(broker_url, server_id=server_id, send_tracebacks=True)
    server.register_function(lambda a, b: a + b, "add")
    server.start()
    yield server
    server.stop(grace=5)


def still_serving(broker_url: str, server_id: str) -> bool:
    with Proxy(broker_url, server_id=server_id) as proxy:
        return bool(proxy.set_timeout(WAIT).add(1, 2) == 3)


def request(method="add", args=(1, 2), kwargs=None) -> bytes:
    return msgpack.packb({"method": method, "args": list(args), "kwargs": kwargs or {}})


MSGPACK = "application/x-msgpack"


@pytest.mark.parametrize("body", [
    b"\xc1\xc1 not msgpack",
    b"\x92\x01",                       # truncated
    b"\x91" * 100_000,                 # nested far too deep
], ids=["undecodable", "truncated", "deep"])
def test_undecodable_body_gets_bad_request(raw, server, broker_url, server_id, body):
    error = raw.error_of(raw.publish(server_id, body, content_type=MSGPACK))
    assert error["type"] == "rpc.BadRequest"
    assert still_serving(broker_url, server_id)


@pytest.mark.parametrize("envelope", [
    [1, 2, 3],
    {"args": [1, 2]},
    {"method": 7, "args": []},
    {"method": "", "args": []},
    {"method": "add", "args": "12"},
    {"method": "add", "args": [], "kwargs": [1]},
    {"method": "add", "args": [], "kwargs": {1: 2}},
], ids=["list", "no-method", "int-method", "empty-method", "str-args", "list-kwargs", "int-keys"])
def test_malformed_envelope_gets_bad_request(raw, server, broker_url, server_id, envelope):
    body = msgpack.packb(envelope, strict_types=False)
    error = raw.error_of(raw.publish(server_id, body, content_type=MSGPACK))
    assert error["type"] == "rpc.BadRequest", error


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/data", "x/unknown"])
def test_refused_content_type_gets_a_json_error_reply(raw, server, server_id, content_type):
    props = {} if content_type is None else {"content_type": content_type}
    cid = raw.publish(server_id, b'{"method": "add", "args": [1, 2]}', **props)
    message = raw.reply(cid)
    assert message.properties["content_type"] == "application/json"
    assert json.loads(message.body)["error"]["type"] == "rpc.BadRequest"


class Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_pickle_is_never_decoded_by_a_server_that_does_not_accept_it(raw, server, server_id, tmp_path):
    marker = tmp_path / "pwned"
    body = pickle.dumps({"method": "add", "args": [Exploit(str(marker)), 1]})
    error = raw.error_of(raw.publish(server_id, body, content_type="application/x-python-serialize"))
    assert error["type"] == "rpc.BadRequest"
    assert not marker.exists()


def test_compressed_body_is_not_inflated_and_gets_an_error(raw, server, server_id):
    bomb = zlib.compress(b"\x00" * 10_000_000)
    cid = raw.publish(server_id, bomb, content_type=MSGPACK,
                      application_headers={"compression": "application/x-gzip"})
    assert raw.error_of(cid)["type"] == "rpc.BadRequest"


def test_unknown_method_and_bad_arguments_get_typed_errors(raw, server, server_id):
    assert raw.error_of(raw.publish(server_id, request("nope"), content_type=MSGPACK))["type"] \
        == "rpc.MethodNotFound"
    assert raw.error_of(raw.publish(server_id, request(args=(1,)), content_type=MSGPACK))["type"] \
        == "rpc.InvalidArguments"


def test_reply_published_as_a_request_is_refused_without_a_reply(raw, server, broker_url, server_id):
    cid = raw.publish(server_id, request(), content_type=MSGPACK, type="rpc.reply")
    assert raw.no_reply_within(cid, 0.5)
    assert server.stats["bad_requests"] >= 1
    assert still_serving(broker_url, server_id)


def test_server_never_replies_to_an_address_that_is_not_a_reply_address(raw, server, server_id):
    victim = f"victim-{uuid.uuid4().hex[:8]}"
    raw.channel.queue_declare(victim, auto_delete=True)
    raw.publish(server_id, request(), content_type=MSGPACK, reply_to=victim)
    assert still_serving(raw.conn.as_uri(include_password=True), server_id)
    _, depth, _ = raw.channel.queue_declare(victim, passive=True)
    assert depth == 0


def test_request_past_its_deadline_is_skipped(raw, server, server_id):
    cid = raw.publish(server_id, request(), content_type=MSGPACK,
                      application_headers={"rpc-deadline": time.time() - 1})
    assert raw.no_reply_within(cid, 0.5)
    assert server.stats["expired"] == 1


def test_request_without_reply_to_runs_and_sends_nothing(raw, broker_url, server_id):
    ran = []
    server = Server(broker_url, server_id=server_id)
    server.register_function(lambda: ran.append(1), "note")
    server.start()
    try:
        raw.publish(server_id, request("note", ()), content_type=MSGPACK, reply=False)
        deadline = time.monotonic() + WAIT
        while not ran:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        server.stop()


def test_every_bad_message_is_acked_or_rejected_and_the_queue_drains(raw, server, server_id):
    for body in (b"junk", request("nope"), request(args=(1,)), msgpack.packb([1])):
        raw.publish(server_id, body, content_type=MSGPACK)
    raw.publish(server_id, b"junk", content_type="text/plain")
    assert still_serving(raw.conn.as_uri(include_password=True), server_id)
    deadline = time.monotonic() + WAIT
    while True:
        _, ready, _ = raw.channel.queue_declare(server_id, passive=True, durable=True)
        if ready == 0 and server.stats["bad_requests"] + server.stats["errors"] >= 5:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_handler_raising_system_exit_does_not_kill_the_server(broker_url, server_id):
    server = Server(broker_url, server_id=server_id)
    server.register_function(lambda: (_ for _ in ()).throw(SystemExit(3)), "leave")
    server.register_function(lambda: "alive", "ping")
    server.start()
    try:
        with Proxy(broker_url, server_id=server_id) as proxy:
            with pytest.raises(Exception) as info:
                proxy.leave()
            assert not isinstance(info.value, SystemExit)
            assert proxy.ping() == "alive"
    finally:
        server.stop()
