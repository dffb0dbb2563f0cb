"""The server side of streams (protocol v1.1), driven by a raw py-amqp client written from
docs/protocol.md alone: its requests, items, credit, cancels and replies, over direct reply-to.

Every wait is bounded; every server has an id of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import unquote, urlparse

import amqp
import pytest

from rpc import AsyncServer, Server

WAIT = 10.0
REPLY_TO = "amq.rabbitmq.reply-to"


class RawStreamClient:
    """A client of protocol v1.1 in plain py-amqp, as docs/protocol.md describes one."""

    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        vhost = unquote(parsed.path[1:]) if len(parsed.path) > 1 else "/"
        self.conn = amqp.Connection(f"{parsed.hostname}:{parsed.port or 5672}",
                                    userid=unquote(parsed.username or "guest"),
                                    password=unquote(parsed.password or "guest"),
                                    virtual_host=vhost)
        self.conn.connect()
        self.channel = self.conn.channel()
        #: Everything heard on the reply address, by correlation id, in order.
        self.heard: dict[str, list[amqp.Message]] = defaultdict(list)
        self.channel.basic_consume(REPLY_TO, no_ack=True, callback=self._on_message)

    def _on_message(self, message: amqp.Message) -> None:
        self.heard[message.properties.get("correlation_id")].append(message)

    def request(self, server_id: str, method: str, *args: Any, credit: int | None = None,
                timeout: float | None = None) -> str:
        """Publish a request (a stream request with ``credit``); returns its correlation id."""
        cid = uuid.uuid4().hex
        headers: dict[str, Any] = {}
        props: dict[str, Any] = {}
        if credit is not None:
            headers["rpc-stream"] = credit
        if timeout is not None:
            headers["rpc-deadline"] = time.time() + timeout
            props["expiration"] = str(max(1, math.ceil(timeout * 1000)))
        body = json.dumps({"method": method, "args": list(args), "kwargs": {}}).encode()
        self.channel.basic_publish(
            amqp.Message(body, content_type="application/json", correlation_id=cid,
                         message_id=cid, reply_to=REPLY_TO, application_headers=headers,
                         **props),
            exchange="", routing_key=server_id, mandatory=True)
        return cid

    def control_address(self, cid: str) -> str:
        """The control address the first item of stream ``cid`` names."""
        first = self.heard[cid][0]
        assert first.properties["type"] == "rpc.item"
        return str(first.properties["application_headers"]["rpc-control"])

    def grant(self, cid: str, credit: int) -> None:
        self.channel.basic_publish(
            amqp.Message(json.dumps({"credit": credit}).encode(), content_type="application/json",
                         correlation_id=cid, type="rpc.credit"),
            exchange="", routing_key=self.control_address(cid))

    def cancel(self, cid: str, *, server_id: str | None = None) -> None:
        """Cancel stream ``cid``: at its control address, or (before any item came) through the
        fanout exchange of ``server_id``."""
        message = amqp.Message(b"{}", content_type="application/json", correlation_id=cid,
                               type="rpc.cancel")
        if server_id is None:
            self.channel.basic_publish(message, exchange="", routing_key=self.control_address(cid))
        else:
            self.channel.basic_publish(message, exchange=f"rpc.broadcast.{server_id}",
                                       routing_key="")

    def listen(self, seconds: float, until: Callable[[], bool] = lambda: False) -> None:
        """Read for up to ``seconds``, or until ``until()`` holds."""
        deadline = time.monotonic() + seconds
        while not until() and time.monotonic() < deadline:
            try:
                self.conn.drain_events(timeout=0.05)
            except TimeoutError:
                pass

    def items(self, cid: str) -> list[Any]:
        return [json.loads(m.body)["item"] for m in self.heard[cid]
                if m.properties.get("type") == "rpc.item"]

    def replies(self, cid: str) -> list[dict[str, Any]]:
        return [json.loads(m.body) for m in self.heard[cid]
                if m.properties.get("type") == "rpc.reply"]

    def ended(self, cid: str) -> bool:
        return bool(self.replies(cid))

    def consume(self, cid: str, window: int, *, limit: int = 100_000) -> None:
        """Consume stream ``cid`` to its end, granting each half window consumed (the reference
        client's policy), and check that the credit is never overrun."""
        consumed = granted = 0
        given = window
        deadline = time.monotonic() + WAIT
        while not self.ended(cid) and consumed < limit:
            assert time.monotonic() < deadline, "the stream did not end"
            self.listen(0.05)
            consumed = len(self.items(cid))
            assert consumed <= given, "more items than the credit granted"
            while consumed - granted >= window // 2:
                self.grant(cid, window // 2)
                granted += window // 2
                given += window // 2

    def close(self) -> None:
        self.conn.collect()


def eventually(condition: Callable[[], bool], seconds: float = WAIT) -> bool:
    """Whether ``condition()`` comes to hold within ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def idle(server: Server) -> bool:
    """Whether the server comes to have no request in flight (all acknowledged)."""
    return eventually(lambda: server.status()["in_flight"] == 0)


@pytest.fixture
def raw(broker_url: str) -> Iterator[RawStreamClient]:
    client = RawStreamClient(broker_url)
    yield client
    try:
        client.conn.close()
    except Exception:
        client.close()


@pytest.fixture
def make(broker_url: str, server_id: str) -> Iterator[Callable[..., Server]]:
    """Start a server of ``server_id`` on the real broker, with the functions given."""
    servers: list[Server] = []

    def start(*funcs: Callable[..., Any], **options: Any) -> Server:
        server = Server(broker_url, server_id=server_id, **options)
        for func in funcs:
            server.register_function(func)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(grace=5)


class Progress:
    """What a generator got to: the items it yielded, and whether its ``finally`` ran."""

    def __init__(self) -> None:
        self.yielded: list[int] = []
        self.started = threading.Event()
        self.closed = threading.Event()

    def count(self, n: int) -> Iterator[int]:
        self.started.set()
        try:
            for i in range(n):
                self.yielded.append(i)
                yield i
        finally:
            self.closed.set()


@pytest.fixture
def progress() -> Progress:
    return Progress()


def counter(progress: Progress) -> Callable[[int], Iterator[int]]:
    def count(n: int) -> Iterator[int]:
        yield from progress.count(n)

    return count


# -- a stream, end to end --------------------------------------------------------------------------

def test_a_raw_client_consumes_a_stream_from_the_docs(
        raw: RawStreamClient, make: Callable[..., Server], server_id: str) -> None:
    def export(n: int) -> Iterator[dict[str, int]]:
        for i in range(n):
            yield {"row": i}

    server = make(export)
    cid = raw.request(server_id, "export", 250, credit=20, timeout=30)
    raw.consume(cid, 20)
    heard = raw.heard[cid]
    assert [m.properties["type"] for m in heard] == ["rpc.item"] * 250 + ["rpc.reply"]
    assert raw.items(cid) == [{"row": i} for i in range(250)]  # in order, each once
    assert raw.replies(cid) == [{"result": None}]
    first, second = heard[0].properties, heard[1].properties
    assert first["application_headers"]["rpc-control"].startswith(f"rpc.broadcast.{server_id}.")
    assert "rpc-control" not in (second.get("application_headers") or {})
    assert all(m.properties["content_type"] == "application/json" for m in heard)
    assert {m.properties["app_id"] for m in heard} == {server.identity}
    raw.listen(0.3)
    assert len(raw.heard[cid]) == 251  # nothing after the reply
    assert eventually(lambda: server.stats["calls"] == 1)
    assert (server.stats["streams"], server.stats["items"]) == (1, 250)


def test_credit_gates_the_items_and_pauses_the_generator(
        raw: RawStreamClient, make: Callable[..., Server], server_id: str,
        progress: Progress) -> None:
    server = make(counter(progress))
    cid = raw.request(server_id, "count", 1_000_000, credit=5, timeout=30)
    raw.listen(WAIT, lambda: len(raw.items(cid)) >= 5)
    raw.listen(1.0)
    assert raw.items(cid) == [0, 1, 2, 3, 4]
    # Paused, holding the one item it yielded next until the credit allows it.
    assert progress.yielded == [0, 1, 2, 3, 4, 5]
    raw.grant(cid, 3)
    raw.listen(WAIT, lambda: len(raw.items(cid)) >= 8)
    raw.listen(0.5)
    assert raw.items(cid) == list(range(8)) and len(progress.yielded) == 9
    raw.cancel(cid)
    assert progress.closed.wait(WAIT)
    assert idle(server)


# -- cancels ---------------------------------------------------------------------------------------

def test_a_cancel_closes_a_paused_generator_within_a_second(
        raw: RawStreamClient, make: Callable[..., Server], server_id: str,
        progress: Progress) -> None:
    server = make(counter(progress))
    cid = raw.request(server_id, "count", 1_000_000, credit=3)
    raw.listen(WAIT, lambda: len(raw.items(cid)) >= 3)
    started = time.monotonic()
    raw.cancel(cid)
    assert progress.closed.wait(WAIT)
    assert time.monotonic() - started < 1.0
    raw.listen(0.5)
    assert raw.items(cid) == [0, 1, 2] and not raw.replies(cid)  # nothing more is sent
    assert idle(server)  # acknowledged: the worker serves on
    assert server.stats["cancelled"] == 1
    cid = raw.request(server_id, "count", 2, credit=3, timeout=10)
    raw.listen(WAIT, lambda: raw.ended(cid))
    assert raw.items(cid) == [0, 1] and raw.replies(cid) == [{"result": None}]


def test_a_cancel_closes_a_running_generator_at_its_next_item(
        raw: RawStreamClient, make: Callable[..., Server], server_id: str) -> None:
    closed = threading.Event()

    def ticks() -> Iterator[int]:
        try:
            for i in range(1000):
                time.sleep(0.05)
                yield i
        finally:
            closed.set()

    make(ticks)
    cid = raw.request(server_id, "ticks", credit=10_000)
    raw.listen(WAIT, lambda: len(raw.items(cid)) >= 2)
    started = time.monotonic()
    raw.cancel(cid)
    assert closed.wait(WAIT) and time.monotonic() - started < 1.0
    raw.listen(0.3)
    count = len(raw.items(cid))
    raw.listen(0.3)
    assert len(raw.items(cid)) == count and not raw.replies(cid)


def test_a_cancel_through_the_fanout_skips_a_request_still_queued(
        raw: RawStreamClient, make: Callable[..., Server], server_id: str,
        progress: Progress) -> None:
    release = threading.Event()

    def block() -> None:
        release.wait(WAIT)

    server = make(block, counter(progress))
    blocker = raw.request(server_id, "block", timeout=30)
    cid = raw.request(server_id, "count", 5, credit=10, timeout=30)
    raw.listen(0.3)
    raw.cancel(cid, server_id=server_id)  # no item yet: no control address known
    raw.listen(0.3)
    release.set()
    raw.listen(WAIT, lambda: raw.ended(blocker))
    raw.listen(0.5)
    assert not progress.started.is_set()
    assert raw.heard[cid] == []
    assert idle(server) and server.stats["cancelled"] == 1


# -- errors and refusals ---------------------------------------------------------------------------

def test_an_exception_mid_stream_arrives_after_the_items_before_it(
        raw: RawStreamClient, make: Callable[..., Server], server_id: str,
        caplog: pytest.LogCaptureFixture) -> None:
    def shaky(n: int) -> Iterator[int]:
        yield from range(n)
        raise ValueError("disk on fire")

    server = make(shaky)
    with caplog.at_level(logging.ERROR, "rpc.server"):
        cid = raw.request(server_id, "shaky", 3, credit=10, timeout=10)
        raw.listen(WAIT, lambda: raw.ended(cid))
    assert [m.properties["type"] for m in raw.heard[cid]] == ["rpc.item"] * 3 + ["rpc.reply"]
    assert raw.items(cid) == [0, 1, 2]
    [reply] = raw.replies(cid)
    assert reply["error"]["type"] == "ValueError" and reply["error"]["message"] == "disk on fire"
    assert "shaky raised ValueError: disk on fire" in caplog.text
    assert eventually(lambda: server.stats["errors"] == 1)  # counted once it is settled


def test_a_plain_request_for_a_generator_is_a_bad_request(
        raw: RawStreamClient, make: Callable[..., Server], server_id: str,
        progress: Progress) -> None:
    make(counter(progress))
    cid = raw.request(server_id, "count", 3, timeout=10)
    raw.listen(WAIT, lambda: raw.ended(cid))
    [reply] = raw.replies(cid)
    assert reply["error"]["type"] == "rpc.BadRequest"
    assert "proxy.stream.count(...)" in reply["error"]["message"]
    assert raw.items(cid) == [] and not progress.started.is_set()


def test_a_stream_request_for_a_plain_function_is_a_bad_request(
        raw: RawStreamClient, make: Callable[..., Server], server_id: str) -> None:
    ran = threading.Event()

    def add(a: int, b: int) -> int:
        ran.set()
        return a + b

    make(add)
    cid = raw.request(server_id, "add", 1, 2, credit=10, timeout=10)
    raw.listen(WAIT, lambda: raw.ended(cid))
    [reply] = raw.replies(cid)
    assert reply["error"]["type"] == "rpc.BadRequest"
    assert "does not stream" in reply["error"]["message"]
    assert raw.items(cid) == [] and not ran.is_set()


# -- async generators, deadlines, control messages -------------------------------------------------

def test_an_async_generator_streams_and_a_cancel_stops_it_at_its_await(
        raw: RawStreamClient, make: Callable[..., Server], server_id: str) -> None:
    closed = threading.Event()

    async def arange(n: int) -> AsyncIterator[int]:
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    async def forever() -> AsyncIterator[int]:
        try:
            yield 0
            await asyncio.sleep(60)
            yield 1
        finally:
            closed.set()

    server = make(arange, forever)
    cid = raw.request(server_id, "arange", 120, credit=16, timeout=30)
    raw.consume(cid, 16)
    assert raw.items(cid) == list(range(120)) and raw.replies(cid) == [{"result": None}]
    cid = raw.request(server_id, "forever", credit=16)
    raw.listen(WAIT, lambda: len(raw.items(cid)) >= 1)
    started = time.monotonic()
    raw.cancel(cid)
    assert closed.wait(WAIT) and time.monotonic() - started < 1.0
    raw.listen(0.3)
    assert raw.items(cid) == [0] and not raw.replies(cid)
    assert eventually(lambda: server.stats["cancelled"] == 1)


def test_a_stream_whose_deadline_passes_is_abandoned(
        raw: RawStreamClient, make: Callable[..., Server], server_id: str,
        progress: Progress) -> None:
    server = make(counter(progress))
    cid = raw.request(server_id, "count", 1_000_000, credit=2, timeout=1.5)
    raw.listen(WAIT, lambda: len(raw.items(cid)) >= 2)
    assert progress.closed.wait(WAIT)
    raw.listen(0.3)
    assert raw.items(cid) == [0, 1] and not raw.replies(cid)
    assert idle(server) and server.stats["expired"] == 1


def test_malformed_control_messages_are_dropped_and_the_stream_goes_on(
        raw: RawStreamClient, make: Callable[..., Server], server_id: str,
        progress: Progress, caplog: pytest.LogCaptureFixture) -> None:
    make(counter(progress))
    cid = raw.request(server_id, "count", 4, credit=2, timeout=30)
    raw.listen(WAIT, lambda: len(raw.items(cid)) >= 2)
    control = raw.control_address(cid)
    with caplog.at_level(logging.WARNING, "rpc.server"):
        for body, props in [
            (b"not json", {"type": "rpc.credit", "correlation_id": cid}),
            (b'{"credit": -3}', {"type": "rpc.credit", "correlation_id": cid}),
            (b'{"credit": 2}', {"type": "rpc.credit"}),  # no correlation id
        ]:
            raw.channel.basic_publish(amqp.Message(body, content_type="application/json",
                                                   **props), exchange="", routing_key=control)
        raw.listen(0.5)
        assert raw.items(cid) == [0, 1]
        raw.grant(cid, 2)
        raw.listen(WAIT, lambda: raw.ended(cid))
    assert raw.items(cid) == [0, 1, 2, 3] and raw.replies(cid) == [{"result": None}]
    assert caplog.text.count("dropped a control message") == 3


# -- stopping --------------------------------------------------------------------------------------

def test_a_stream_finishes_within_the_grace_of_a_stop(
        raw: RawStreamClient, make: Callable[..., Server], server_id: str,
        progress: Progress) -> None:
    server = make(counter(progress))
    cid = raw.request(server_id, "count", 40, credit=10, timeout=30)
    raw.listen(WAIT, lambda: len(raw.items(cid)) >= 10)
    stopping = threading.Thread(target=server.stop, kwargs={"grace": WAIT}, daemon=True)
    stopping.start()
    raw.listen(0.3)
    raw.consume(cid, 20)  # grants still reach it while the server stops
    assert raw.items(cid) == list(range(40)) and raw.replies(cid) == [{"result": None}]
    stopping.join(WAIT)
    assert not stopping.is_alive()


def test_a_stop_ends_a_paused_stream_once_the_grace_runs_out(
        raw: RawStreamClient, make: Callable[..., Server], server_id: str,
        progress: Progress) -> None:
    server = make(counter(progress))
    cid = raw.request(server_id, "count", 1_000_000, credit=3)
    raw.listen(WAIT, lambda: len(raw.items(cid)) >= 3)
    started = time.monotonic()
    assert server.stop(grace=0.5) == 1  # still running when the grace ran out
    assert progress.closed.wait(WAIT)
    assert time.monotonic() - started < 3.0


def test_an_async_generator_streams_from_the_applications_own_loop(
        raw: RawStreamClient, broker_url: str, server_id: str) -> None:
    closed = threading.Event()

    async def main() -> tuple[list[Any], list[dict[str, Any]], str]:
        loop_thread = threading.current_thread().name

        async def where(n: int) -> AsyncIterator[str]:
            try:
                for _ in range(n):
                    await asyncio.sleep(0)
                    yield threading.current_thread().name
                await asyncio.sleep(60)  # until the cancel below
            finally:
                closed.set()

        server = AsyncServer(broker_url, server_id=server_id)
        server.register_function(where)
        async with server:
            cid = raw.request(server_id, "where", 30, credit=10, timeout=30)
            await asyncio.to_thread(raw.consume, cid, 10, limit=30)
            await asyncio.to_thread(raw.cancel, cid)
            assert await asyncio.to_thread(closed.wait, WAIT)
            return raw.items(cid), raw.replies(cid), loop_thread

    items, replies, loop_thread = asyncio.run(main())
    assert items == [loop_thread] * 30 and replies == []
