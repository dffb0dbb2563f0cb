"""Hostile requests published raw with py-amqp to a live server: rows B7, B9, E-1 … E-12 and the
E-15 fuzz of docs/reliability.md. Each one gets a typed error reply (or, for a reply posing as a
request, a silent reject), and the server lives on with its queue drained.
"""

from __future__ import annotations

import json
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import amqp
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu.connection import Connection

import rpc
from rpc.core.errors import MAX_MESSAGE_CHARS

from .conftest import WAIT, wait_for

MSGPACK = "application/x-msgpack"
JSON = "application/json"


class RawClient:
    """Publishes hand-made requests over direct reply-to and collects the replies."""

    def __init__(self, url: str) -> None:
        self.conn = Connection(url)
        self.conn.connect()
        self.channel = self.conn.connection.channel()
        self.replies: dict[str, amqp.Message] = {}
        self.channel.basic_consume("amq.rabbitmq.reply-to", no_ack=True, callback=self._on_reply)

    def _on_reply(self, message: amqp.Message) -> None:
        self.replies[message.properties.get("correlation_id")] = message

    def publish(self, queue: str, body: bytes, content_type: str | None = MSGPACK,
                **props: Any) -> str:
        cid = uuid.uuid4().hex
        props.setdefault("reply_to", "amq.rabbitmq.reply-to")
        if content_type is not None:
            props["content_type"] = content_type
        self.channel.basic_publish(amqp.Message(body, correlation_id=cid, **props),
                                   routing_key=queue)
        return cid

    def drain(self, seconds: float) -> None:
        try:
            self.conn.drain_events(timeout=seconds)
        except TimeoutError:
            pass

    def reply(self, cid: str) -> amqp.Message:
        deadline = time.monotonic() + WAIT
        while cid not in self.replies:
            assert time.monotonic() < deadline, "no reply"
            self.drain(0.05)
        return self.replies.pop(cid)

    def body_of(self, cid: str) -> dict[str, Any]:
        message = self.reply(cid)
        if message.properties["content_type"] == JSON:
            return dict(json.loads(message.body))
        return dict(msgpack.unpackb(message.body))

    def error_type(self, cid: str) -> str:
        body = self.body_of(cid)
        assert "error" in body, body
        return str(body["error"]["type"])

    def close(self) -> None:
        self.conn.release()


def register(server: rpc.Server) -> None:
    server.register_function(lambda a, b: a + b, "add")
    server.register_function(lambda value: value, "echo")

    def fails(size: int) -> None:
        raise ValueError("x" * size)

    server.register_function(fails)

    class Service:
        secret = "s3cret"

        def visible(self) -> str:
            return "ok"

        def _hidden(self) -> str:
            return "private"

        @property
        def prop(self) -> str:
            return "property"

        Nested = dict

    server.register_instance(Service(), "svc")


@pytest.fixture
def raw(broker_url: str) -> Any:
    client = RawClient(broker_url)
    yield client
    client.close()


@pytest.fixture
def server(servers: Any, broker_url: str, server_id: str) -> rpc.Server:
    return servers(broker_url, server_id, register=register, concurrency=2)


def request(method: Any = "add", args: Any = (1, 2), kwargs: Any = None, **extra: Any) -> bytes:
    body = {"method": method, "args": list(args) if isinstance(args, tuple) else args,
            "kwargs": {} if kwargs is None else kwargs, **extra}
    return bytes(msgpack.packb(body, strict_types=False))


def queue_drained(raw: RawClient, server_id: str) -> bool:
    _, ready, _ = raw.channel.queue_declare(server_id, passive=True)
    return ready == 0


HOSTILE = [
    # (id, content type, body, expected error type)
    ("E-1 bad json", JSON, b'{"method": "add", ', "rpc.BadRequest"),
    ("E-1 truncated msgpack", MSGPACK, request()[:-3], "rpc.BadRequest"),
    ("E-2 missing type", None, request(), "rpc.BadRequest"),
    ("E-2 text/plain", "text/plain", b"add 1 2", "rpc.BadRequest"),
    ("E-2 unknown type", "application/x-nope", request(), "rpc.BadRequest"),
    ("E-4 deep json", JSON, b"[" * 100_000 + b"]" * 100_000, "rpc.BadRequest"),
    ("E-4 deep msgpack", MSGPACK, b"\x91" * 100_000 + b"\xc0", "rpc.BadRequest"),
    ("E-5 5000-digit int", JSON,
     b'{"method": "add", "args": [' + b"9" * 5000 + b', 1], "kwargs": {}}', "rpc.BadRequest"),
    ("E-7 int map keys", MSGPACK, request(kwargs={1: 2}), "rpc.BadRequest"),
    ("E-7 bin claiming 4 GiB", MSGPACK, b"\xc6\xff\xff\xff\xff" + b"x" * 16, "rpc.BadRequest"),
    ("E-8 args not a list", MSGPACK, request(args={"a": 1}), "rpc.BadRequest"),
    ("E-8 kwargs not a map", MSGPACK, request(kwargs=[1, 2]), "rpc.BadRequest"),
    ("E-8 no method", MSGPACK, msgpack.packb({"args": [1, 2]}), "rpc.BadRequest"),
    ("E-8 method an int", MSGPACK, request(method=7), "rpc.BadRequest"),
    ("E-8 method a list", MSGPACK, request(method=["add"]), "rpc.BadRequest"),
    ("E-8 method null", MSGPACK, request(method=None), "rpc.BadRequest"),
    ("E-8 body a list", MSGPACK, msgpack.packb(["add", [1, 2]]), "rpc.BadRequest"),
    ("E-9 extra argument", MSGPACK, request(args=(1, 2, 3)), "rpc.InvalidArguments"),
    ("E-9 missing argument", MSGPACK, request(args=(1,)), "rpc.InvalidArguments"),
    ("E-9 unknown keyword", MSGPACK, request(args=(1,), kwargs={"c": 2}), "rpc.InvalidArguments"),
    ("E-9 self keyword", MSGPACK, request("svc.visible", (), {"self": 1}),
     "rpc.InvalidArguments"),
    ("E-9 type error inside", MSGPACK, request(args=(1, "x")), "TypeError"),
    *[(f"E-10 {name}", MSGPACK, request(name, ()), "rpc.MethodNotFound") for name in [
        "_private", "__init__", "__class__", "__reduce__", "__getattribute__", "__dict__",
        "svc._hidden", "svc.__init__", "svc.__class__", "svc.visible.__globals__", "svc.prop",
        "svc.secret", "svc.Nested", "svc.__dict__", "svc.__reduce_ex__", "svc.__subclasshook__",
        "a.b.c", "register_function", "stop", "registry", "add\x00", "ädd", "x" * 300,
        "svc", "system", "system.__class__",
    ]],
]


@pytest.mark.parametrize("content_type, body, expected",
                         [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE])
def test_hostile_request_gets_a_typed_error_reply(raw, server, server_id, content_type, body,
                                                  expected):
    assert raw.error_type(raw.publish(server_id, body, content_type)) == expected


def test_server_serves_on_and_its_queue_drains_after_every_hostile_request(
        raw, server, broker_url, server_id):
    cids = [raw.publish(server_id, body, content_type) for _, content_type, body, _ in HOSTILE]
    for cid in cids:
        raw.reply(cid)
    with rpc.Proxy(broker_url, server_id=server_id) as proxy:
        assert proxy.set_timeout(WAIT).add(1, 2) == 3
    assert queue_drained(raw, server_id)


def test_nan_infinity_and_duplicate_keys_in_json_are_accepted_as_python_parses_them(
        raw, server, server_id):
    """The documented policy: the server decodes JSON as Python does (last duplicate key wins,
    NaN and Infinity allowed); handlers that care validate their own arguments."""
    body = b'{"method": "echo", "args": [[NaN, Infinity, -Infinity]], "args": [7], "kwargs": {}}'
    assert raw.body_of(raw.publish(server_id, body, JSON)) == {"result": 7}
    body = b'{"method": "echo", "args": [[NaN, Infinity]], "kwargs": {}}'
    result = raw.body_of(raw.publish(server_id, body, JSON))["result"]
    assert result[0] != result[0] and result[1] == float("inf")


def test_extra_envelope_fields_are_ignored(raw, server, server_id):
    body = request(extra="field", version=99)
    assert raw.body_of(raw.publish(server_id, body))["result"] == 3


def test_reply_posing_as_a_request_is_rejected_without_a_reply(raw, server, server_id):
    cid = raw.publish(server_id, request(), type="rpc.reply")
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        raw.drain(0.05)
    assert cid not in raw.replies
    wait_for(lambda: queue_drained(raw, server_id), message="the reject")


def test_handler_error_with_a_huge_message_is_replied_capped_and_acknowledged(
        raw, server, server_id):
    error = raw.body_of(raw.publish(server_id, request("fails", (1_000_000,))))["error"]
    assert error["type"] == "ValueError"
    assert len(error["message"]) < MAX_MESSAGE_CHARS + 200
    wait_for(lambda: queue_drained(raw, server_id), message="the ack")


def test_request_over_the_default_size_limit_is_refused_before_it_is_buffered(
        raw, server, server_id):
    body = request("echo", (b"x" * (17 * 1024 * 1024),))  # the default limit is 16 MiB
    assert raw.error_type(raw.publish(server_id, body)) == "rpc.BadRequest"
    assert raw.body_of(raw.publish(server_id, request()))["result"] == 3


def vm_peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.slow
def test_compression_bomb_is_never_inflated_by_the_server(
        raw, spawn_server, broker_url, server_id):
    child = spawn_server(broker_url, server_id)
    assert raw.body_of(raw.publish(server_id, request("whoami", ())))["result"] == child.pid
    peak = vm_peak_kib(child.pid)
    packer = zlib.compressobj(9)
    zeros = bytes(1_000_000)
    bomb = b"".join([*(packer.compress(zeros) for _ in range(200)), packer.flush()])
    assert len(bomb) < 300_000  # 200 MB once inflated
    for compression in ("application/x-gzip", "zlib", "application/x-nope"):
        cid = raw.publish(server_id, bomb, application_headers={"compression": compression})
        assert raw.error_type(cid) == "rpc.BadRequest"
    assert vm_peak_kib(child.pid) - peak < 50_000  # KiB: never near the 200 MB inflated
    assert child.popen.poll() is None


# -- the fuzz ----------------------------------------------------------------------------------

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "method": st.sampled_from(["add", "echo", "svc.visible", "nope", "_x", "svc._hidden",
                                   "system.ping", "svc.__class__"]) | values,
        "args": st.lists(values, max_size=4) | values,
        "kwargs": st.dictionaries(st.text(max_size=8), values, max_size=3) | values,
    },
)
content_types = st.sampled_from([MSGPACK, JSON, None, "text/plain", "application/x-python-serialize",
                                 "application/data", "x/" + "y" * 50])


def encode(envelope: Any, content_type: str | None) -> bytes:
    if content_type == JSON:
        return json.dumps(envelope, default=repr).encode()
    return bytes(msgpack.packb(envelope, use_bin_type=True))


@pytest.mark.slow
def test_fuzzed_requests_are_each_answered_and_the_server_survives_with_its_queue_drained(
        raw, server, broker_url, server_id):
    answered: list[str] = []

    @settings(max_examples=200, deadline=5000, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(
        body=st.one_of(envelopes.map(lambda e: ("envelope", e)),
                       st.binary(max_size=200).map(lambda b: ("raw", b))),
        content_type=content_types,
        headers=st.none() | st.dictionaries(
            st.sampled_from(["rpc-deadline", "compression", "x-any"]),
            # RabbitMQ cannot parse an infinite or NaN double in a header: it closes the
            # publisher's connection (541) before any server sees the request.
            st.one_of(st.text(max_size=10), st.floats(allow_nan=False, allow_infinity=False),
                      st.integers(-(2**63), 2**63 - 1)),
            max_size=2),
    )
    def one(body: tuple[str, Any], content_type: str | None, headers: dict[str, Any] | None) -> None:
        kind, value = body
        payload = encode(value, content_type) if kind == "envelope" else value
        if headers and "rpc-deadline" in headers:
            headers["rpc-deadline"] = time.time() + 60  # deadlines are the deadline test's job
        props = {"application_headers": headers} if headers else {}
        cid = raw.publish(server_id, payload, content_type, **props)
        reply = raw.body_of(cid)
        assert set(reply) in ({"result"}, {"error"}), reply
        answered.append(cid)

    one()
    assert len(answered) >= 100
    assert server.running
    with rpc.Proxy(broker_url, server_id=server_id) as proxy:
        assert proxy.set_timeout(WAIT).add(1, 2) == 3
    wait_for(lambda: queue_drained(raw, server_id), message="the queue to drain")
