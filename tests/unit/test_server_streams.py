"""rpc.server.streams and the stream side of rpc.server.handling, without a broker.

A fake link records what the server writes (publishes, with the acknowledgement they carry, and
acknowledgements). Streams that pause for credit run on a thread of their own here, as on a
worker; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgpack
import pytest

from rpc.core import protocol
from rpc.core.context import current_call
from rpc.core.dedup import CompletedCalls
from rpc.core.errors import ConnectionLost
from rpc.core.ratelimit import RepeatLimiter
from rpc.core.serialization import MSGPACK
from rpc.server.failures import FailureLog
from rpc.server.handling import CANCELLED, Handler
from rpc.server.loops import HandlerLoop
from rpc.server.options import ServerOptions
from rpc.server.registry import Registry
from rpc.server.replies import Replier
from rpc.server.status import InFlight, Stats
from rpc.server.streams import Stream, StreamCancelled, StreamExpired, Streams
from rpc.transport.link import Incoming, Link

REPLY_TO = "amq.rabbitmq.reply-to.g1h2AA5yZXBseUAxMjM0NTY3OAAAAAAAAAAB"
CONTROL = "rpc.broadcast.unit.0123456789abcdef"
IDENTITY = "unit@host:1"
WAIT = 5.0


class FakeLink(Link):
    """Records every write, and wakes whoever waits for a number of them."""

    def __init__(self) -> None:
        super().__init__(lambda msg: None, None, None, None)
        self.writes: list[tuple[Any, ...]] = []
        self.changed = threading.Condition()

    def publish(self, routing_key: str, body: bytes, props: dict[str, Any], *,
                mandatory: bool = False, ack: int | None = None, exchange: str = "",
                track: Any = None) -> None:
        if self.closed:
            raise ConnectionLost("the connection is closed")
        self._write(("publish", routing_key, body, props, ack))

    def ack(self, delivery_tag: int) -> None:
        self._write(("ack", delivery_tag))

    def reject(self, delivery_tag: int, *, requeue: bool) -> None:
        self._write(("reject", delivery_tag, requeue))

    def close(self) -> None:
        self.closed = True

    def _write(self, write: tuple[Any, ...]) -> None:
        with self.changed:
            self.writes.append(write)
            self.changed.notify_all()

    def wait_for(self, count: int) -> None:
        """Wait until ``count`` writes are in."""
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.writes) >= count, WAIT), self.writes

    def published(self) -> list[tuple[str, Any, dict[str, Any], int | None]]:
        """``(type, decoded body, properties, ack)`` of each publish, in order."""
        out = []
        for write in list(self.writes):
            if write[0] == "publish":
                _, _, body, props, ack = write
                out.append((props["type"], msgpack.unpackb(body), props, ack))
        return out

    def items(self) -> list[Any]:
        return [body["item"] for kind, body, _, _ in self.published() if kind == protocol.ITEM_TYPE]


class Rig:
    """A Handler with a stream table and a fake link, as a runtime wires them."""

    def __init__(self, registry: Registry, **options: Any) -> None:
        self.options = ServerOptions(url="memory://", server_id="unit", **options)
        self.stats = Stats()
        self.in_flight = InFlight(self.stats.counts)
        self.stopping = threading.Event()
        self.loop = HandlerLoop("unit-loop", self.options.async_concurrency)
        self.replier = Replier("unit", IDENTITY, self.stats.counts, self.stopping)
        self.streams = Streams("unit")
        self.handler = Handler(
            options=self.options, registry=registry, completed=CompletedCalls(),
            stats=self.stats, in_flight=self.in_flight, failures=FailureLog(),
            replier=self.replier, loop=self.loop, stopping=self.stopping,
            streams=self.streams, control_address=lambda: CONTROL,
        )
        self.link = FakeLink()
        self.tags = iter(range(1, 1000))
        self.outcomes: list[str | None] = []

    def message(self, method: str, args: tuple[Any, ...] = (), *, credit: int | None = 5,
                cid: str = "c-1", redelivered: bool = False, deadline: float | None = None,
                reply_to: str = REPLY_TO) -> Incoming:
        headers: dict[str, Any] = {}
        if credit is not None:
            headers[protocol.STREAM_HEADER] = credit
        if deadline is not None:
            headers[protocol.DEADLINE_HEADER] = deadline
        props = {"content_type": MSGPACK, "correlation_id": cid, "message_id": cid,
                 "reply_to": reply_to, "headers": headers}
        body = msgpack.packb(protocol.request_body(method, args, {}))
        return Incoming(body, props, next(self.tags), redelivered, "unit", self.link)

    def control(self, kind: str, cid: str = "c-1", body: bytes | None = None) -> Incoming:
        default, props = protocol.control_message(kind, cid, 3)
        return Incoming(default if body is None else body, props, next(self.tags), False,
                        CONTROL, self.link)

    def handle(self, msg: Incoming) -> str | None:
        """As the I/O thread and a worker would: screen, admit, handle, settle."""
        assert self.handler.screen(msg) is None
        self.handler.admit()
        outcome = self.handler.handle(msg)
        if outcome is not None:
            self.handler.settle(outcome)
        self.outcomes.append(outcome)
        return outcome

    def start(self, msg: Incoming) -> threading.Thread:
        """Handle ``msg`` on a thread of its own (a worker), since a stream may pause."""
        thread = threading.Thread(target=self.handle, args=(msg,), daemon=True)
        thread.start()
        return thread

    def settled(self) -> None:
        """Wait until nothing is in flight (an async stream settles on the loop)."""
        assert self.in_flight.wait_idle(WAIT) == 0


def counting(n: int, notes: list[Any]) -> Iterator[int]:
    """Yields 0..n-1 and notes each before it yields it, and its closing."""
    try:
        for i in range(n):
            notes.append(i)
            yield i
    finally:
        notes.append("closed")


def add(a: int, b: int) -> int:
    return a + b


@pytest.fixture
def notes() -> list[Any]:
    return []


@pytest.fixture
def rig(notes: list[Any]) -> Iterator[Rig]:
    registry = Registry()
    registry.add_function(lambda n: counting(n, notes), "wrapped")  # not a generator function
    registry.add_function(add)

    def count(n: int) -> Iterator[int]:
        yield from counting(n, notes)

    def failing(n: int) -> Iterator[int]:
        yield from range(n)
        raise ValueError("boom")

    def who() -> Iterator[Any]:
        call = current_call()
        yield call.correlation_id if call is not None else None

    async def acount(n: int) -> AsyncIterator[int]:
        try:
            for i in range(n):
                notes.append(i)
                await asyncio.sleep(0)
                yield i
        finally:
            notes.append("closed")

    async def asleeper() -> AsyncIterator[int]:
        try:
            yield 0
            await asyncio.sleep(60)
            yield 1
        finally:
            notes.append("closed")

    def unencodable() -> Iterator[Any]:
        yield 1
        yield object()
        yield 3

    for func in (count, failing, who, acount, asleeper, unencodable):
        registry.add_function(func)
    rig = Rig(registry)
    yield rig
    rig.loop.close()


# -- the registry ------------------------------------------------------------------------------------

def test_generators_are_streams_resolved_at_registration() -> None:
    class Exports:
        def rows(self) -> Iterator[int]:
            yield 1

        async def arows(self) -> AsyncIterator[int]:
            yield 1

        def plain(self) -> int:
            return 1

        async def coro(self) -> int:
            return 1

    registry = Registry()
    registry.add_instance(Exports(), "exports")
    kinds = {name: (registry.resolve(name).is_stream, registry.resolve(name).is_async)
             for name in registry.names()}
    assert kinds == {"exports.rows": (True, False), "exports.arows": (True, True),
                     "exports.plain": (False, False), "exports.coro": (False, True)}
    assert registry.has_async()


# -- credit ----------------------------------------------------------------------------------------

def test_a_stream_takes_its_credit_then_waits_for_a_grant() -> None:
    link = FakeLink()
    stream = Stream("c", 2, None)
    stream.take(link)
    stream.take(link)
    assert stream.credit == 0
    threading.Timer(0.1, stream.grant, (1,)).start()
    started = time.monotonic()
    stream.take(link)
    assert 0.05 < time.monotonic() - started < WAIT


def test_a_cancel_wakes_a_paused_stream() -> None:
    stream = Stream("c", 0, None)
    threading.Timer(0.1, stream.cancel).start()
    with pytest.raises(StreamCancelled):
        stream.take(FakeLink())


def test_a_paused_stream_gives_up_at_its_deadline() -> None:
    stream = Stream("c", 0, time.time() + 0.2)
    started = time.monotonic()
    with pytest.raises(StreamExpired):
        stream.take(FakeLink())
    assert time.monotonic() - started < 1.5


def test_a_paused_stream_ends_when_its_connection_closes() -> None:
    link = FakeLink()
    stream = Stream("c", 0, None)

    def close() -> None:
        link.close()
        stream.wake()

    threading.Timer(0.1, close).start()
    with pytest.raises(ConnectionLost):
        stream.take(link)


def test_an_async_stream_waits_for_a_grant_on_its_loop() -> None:
    async def main() -> None:
        stream = Stream("c", 1, None)
        task = asyncio.current_task()
        assert task is not None
        stream.attach(task)
        link = FakeLink()
        await stream.take_async(link)
        threading.Timer(0.1, stream.grant, (1,)).start()
        await asyncio.wait_for(stream.take_async(link), WAIT)
        assert stream.credit == 0

    asyncio.run(main())


# -- the table and its control messages ------------------------------------------------------------

def test_a_grant_adds_credit_to_the_stream_it_names(rig: Rig) -> None:
    stream = rig.streams.open("c-1", 1, None)
    assert stream is not None
    rig.streams.control(rig.control(protocol.CREDIT_TYPE))
    assert stream.credit == 4
    assert rig.link.writes == [("ack", 1)]
    rig.streams.control(rig.control(protocol.CREDIT_TYPE, cid="someone-else"))  # ignored
    assert stream.credit == 4


def test_a_cancel_for_a_call_not_running_is_remembered_for_a_while() -> None:
    streams = Streams("unit", ttl=0.2, size=3)
    streams.cancel("early")
    assert streams.cancelled("early")
    assert streams.open("early", 5, None) is None
    time.sleep(0.3)
    assert not streams.cancelled("early")
    for cid in ("a", "b", "c", "d"):
        streams.cancel(cid)
    assert not streams.cancelled("a") and streams.cancelled("d")  # at most 3, oldest forgotten


@pytest.mark.parametrize(("kind", "body"), [
    (protocol.CREDIT_TYPE, b"not json"),
    (protocol.CREDIT_TYPE, b'{"credit": 0}'),
    (protocol.CREDIT_TYPE, b'{"credit": "5"}'),
    (protocol.CREDIT_TYPE, b'{"credit": 10001}'),
    (protocol.CREDIT_TYPE, b"[1]"),
], ids=["undecodable", "zero", "string", "too-much", "not-a-map"])
def test_a_malformed_control_message_is_acknowledged_logged_and_dropped(
        rig: Rig, kind: str, body: bytes, caplog: pytest.LogCaptureFixture) -> None:
    stream = rig.streams.open("c-1", 1, None)
    assert stream is not None
    with caplog.at_level(logging.WARNING, "rpc.server"):
        rig.streams.control(rig.control(kind, body=body))
    assert rig.link.writes == [("ack", 1)]
    assert stream.credit == 1
    assert "dropped a control message" in caplog.text


def test_a_control_message_without_a_correlation_id_is_dropped(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    msg = rig.control(protocol.CANCEL_TYPE)
    del msg.props["correlation_id"]
    with caplog.at_level(logging.WARNING, "rpc.server"):
        rig.streams.control(msg)
    assert rig.link.writes == [("ack", 1)] and "correlation_id" in caplog.text


def test_warnings_about_control_messages_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    streams = Streams("unit", limiter=RepeatLimiter(burst=2, window=60))
    link = FakeLink()
    with caplog.at_level(logging.WARNING, "rpc.server"):
        for tag in range(10):
            streams.control(Incoming(b"?", {"type": protocol.CREDIT_TYPE, "correlation_id": "c"},
                                     tag, False, CONTROL, link))
    assert caplog.text.count("dropped a control message") == 2
    assert len(link.writes) == 10


# -- streams through the handler -------------------------------------------------------------------

def test_a_stream_sends_its_items_then_the_reply_that_ends_it(rig: Rig, notes: list[Any]) -> None:
    assert rig.handle(rig.message("count", (3,))) == "calls"
    published = rig.link.published()
    assert [kind for kind, _, _, _ in published] == [protocol.ITEM_TYPE] * 3 + [protocol.REPLY_TYPE]
    assert rig.link.items() == [0, 1, 2]
    first, second = published[0][2], published[1][2]
    assert first == {"content_type": MSGPACK, "correlation_id": "c-1", "type": protocol.ITEM_TYPE,
                     "app_id": IDENTITY, "headers": {protocol.CONTROL_HEADER: CONTROL}}
    assert "headers" not in second
    assert published[-1][1] == {"result": None} and published[-1][3] == 1  # acknowledged with it
    assert all(ack is None for _, _, _, ack in published[:-1])
    assert notes == [0, 1, 2, "closed"]
    counts = rig.stats.counts
    assert (counts["streams"], counts["items"], counts["calls"]) == (1, 3, 1)
    assert len(rig.stats.latencies) == 0  # a stream's life is not a handler duration


def test_an_empty_stream_is_just_its_reply(rig: Rig) -> None:
    rig.handle(rig.message("count", (0,)))
    assert [kind for kind, _, _, _ in rig.link.published()] == [protocol.REPLY_TYPE]


def test_the_generator_runs_with_current_call_set(rig: Rig) -> None:
    rig.handle(rig.message("who", cid="c-who"))
    assert rig.link.items() == ["c-who"]


def test_no_more_items_than_the_credit_until_a_grant(rig: Rig, notes: list[Any]) -> None:
    worker = rig.start(rig.message("count", (100,), credit=5))
    rig.link.wait_for(5)
    time.sleep(0.3)
    assert rig.link.items() == [0, 1, 2, 3, 4]
    assert notes == [0, 1, 2, 3, 4, 5]  # paused, holding the item it yielded next
    rig.streams.grant("c-1", 3)
    rig.link.wait_for(8)
    time.sleep(0.2)
    assert rig.link.items() == list(range(8))
    rig.streams.cancel("c-1")
    worker.join(WAIT)
    assert rig.outcomes == ["cancelled"]
    assert notes[-1] == "closed"
    assert rig.link.writes[-1] == ("ack", 1) and len(rig.link.published()) == 8


def test_the_reply_that_ends_a_stream_needs_no_credit(rig: Rig) -> None:
    rig.handle(rig.message("count", (2,), credit=2))
    assert [kind for kind, _, _, _ in rig.link.published()][-1] == protocol.REPLY_TYPE


def test_an_exception_mid_stream_is_the_reply_after_the_items_before_it(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, "rpc.server"):
        assert rig.handle(rig.message("failing", (2,))) == "errors"
    published = rig.link.published()
    assert rig.link.items() == [0, 1]
    kind, body, _, ack = published[-1]
    assert kind == protocol.REPLY_TYPE and ack == 1
    assert body["error"]["type"] == "ValueError" and body["error"]["message"] == "boom"
    assert "failing raised ValueError: boom" in caplog.text


def test_an_item_that_cannot_be_encoded_ends_the_stream_with_an_error(rig: Rig) -> None:
    assert rig.handle(rig.message("unencodable")) == "errors"
    assert rig.link.items() == [1]
    error = rig.link.published()[-1][1]["error"]
    assert error["type"] == "rpc.SerializationError" and "item 2" in error["message"]


def test_a_cancelled_stream_request_is_screened_out_when_it_comes(
        rig: Rig, notes: list[Any]) -> None:
    rig.streams.cancel("c-late")
    assert rig.handler.screen(rig.message("count", (3,), cid="c-late")) == CANCELLED
    assert rig.link.writes == [] and notes == []  # acknowledging it is the I/O thread's write
    assert rig.stats.counts["cancelled"] == 1


def test_a_stream_cancelled_while_it_waits_for_a_worker_is_skipped(
        rig: Rig, notes: list[Any]) -> None:
    msg = rig.message("count", (3,), cid="c-late")
    assert rig.handler.screen(msg) is None
    rig.handler.admit()
    rig.streams.cancel("c-late")
    outcome = rig.handler.handle(msg)
    assert outcome == "cancelled"
    rig.handler.settle(outcome)
    assert rig.link.writes == [("ack", 1)] and notes == []
    assert rig.stats.counts["cancelled"] == 1


def test_a_stream_past_its_deadline_is_abandoned(rig: Rig, notes: list[Any]) -> None:
    worker = rig.start(rig.message("count", (100,), credit=2, deadline=time.time() + 0.3))
    worker.join(WAIT)
    assert rig.outcomes == ["expired"]
    assert rig.link.items() == [0, 1] and notes[-1] == "closed"
    assert rig.link.writes[-1] == ("ack", 1)
    assert rig.stats.counts["expired"] == 1


def test_a_redelivered_stream_is_acknowledged_before_its_first_item(rig: Rig) -> None:
    rig.handle(rig.message("count", (2,), redelivered=True))
    assert rig.link.writes[0] == ("ack", 1)
    assert rig.link.published()[-1][3] is None  # the reply carries no second acknowledgement


def test_a_stream_for_a_gone_caller_is_acknowledged_unrun(rig: Rig, notes: list[Any]) -> None:
    rig.replier._recent.append((rig.link, REPLY_TO))
    rig.replier.closed_on_reply(rig.link)
    assert rig.handle(rig.message("count", (2,))) == "gone_callers"
    assert rig.link.writes == [("ack", 1)] and notes == []


@pytest.mark.parametrize(("method", "credit", "says"), [
    ("count", None, "proxy.stream.count(...)"),
    ("wrapped", 5, "does not stream"),
    ("add", 5, "does not stream"),
], ids=["plain-request-for-a-generator", "stream-request-for-a-function",
        "stream-request-for-another"])
def test_stream_and_plain_must_agree_or_the_request_is_refused(
        rig: Rig, notes: list[Any], method: str, credit: int | None, says: str) -> None:
    assert rig.handle(rig.message(method, (1, 2) if method == "add" else (3,),
                                  credit=credit)) == "bad_requests"
    [(kind, body, _, ack)] = rig.link.published()
    assert kind == protocol.REPLY_TYPE and ack == 1
    assert body["error"]["type"] == "rpc.BadRequest" and says in body["error"]["message"]
    assert notes == []


@pytest.mark.parametrize("credit", [0, -1, 10_001, "5", 2.0])
def test_a_malformed_credit_is_refused(rig: Rig, credit: Any) -> None:
    assert rig.handle(rig.message("count", (3,), credit=credit)) == "bad_requests"
    assert rig.link.published()[0][1]["error"]["type"] == "rpc.BadRequest"


def test_a_stream_without_a_reply_address_is_refused_unrun(rig: Rig, notes: list[Any]) -> None:
    assert rig.handle(rig.message("count", (3,), reply_to="some.queue")) == "bad_requests"
    assert rig.link.writes == [("ack", 1)] and notes == []


# -- async generators ------------------------------------------------------------------------------

def test_an_async_generator_streams_on_the_loop(rig: Rig, notes: list[Any]) -> None:
    assert rig.handle(rig.message("acount", (3,))) is None  # it runs on, on the loop
    rig.settled()
    assert rig.link.items() == [0, 1, 2]
    assert rig.link.published()[-1][1] == {"result": None}
    assert notes[-1] == "closed" and rig.stats.counts["calls"] == 1


def test_an_async_generator_pauses_for_credit(rig: Rig, notes: list[Any]) -> None:
    rig.handle(rig.message("acount", (100,), credit=4))
    rig.link.wait_for(4)
    time.sleep(0.3)
    assert rig.link.items() == [0, 1, 2, 3] and notes == [0, 1, 2, 3, 4]
    rig.streams.grant("c-1", 100)
    rig.settled()
    assert rig.link.items() == list(range(100))


def test_a_cancel_stops_an_async_generator_at_its_await(rig: Rig, notes: list[Any]) -> None:
    rig.handle(rig.message("asleeper"))
    rig.link.wait_for(1)
    started = time.monotonic()
    rig.streams.cancel("c-1")
    rig.settled()
    assert time.monotonic() - started < 1.0
    assert notes == ["closed"] and rig.link.writes[-1] == ("ack", 1)
    assert rig.stats.counts["cancelled"] == 1 and len(rig.link.published()) == 1


def test_an_async_generator_runs_on_the_worker_without_async_concurrency(notes: list[Any]) -> None:
    async def acount(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    registry = Registry()
    registry.add_function(acount)
    rig = Rig(registry, async_concurrency=0)
    try:
        assert rig.handle(rig.message("acount", (3,))) == "calls"
        assert rig.link.items() == [0, 1, 2]
    finally:
        rig.loop.close()


def test_control_messages_decode_as_json_whatever_the_call() -> None:
    body, props = protocol.control_message(protocol.CREDIT_TYPE, "c", 7)
    assert json.loads(body) == {"credit": 7} and props["content_type"] == "application/json"


def test_an_async_generator_that_never_awaits_still_lets_the_loop_run() -> None:
    async def busy(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    registry = Registry()
    registry.add_function(busy)
    rig = Rig(registry)
    seen: list[int] = []  # items written, as a task beside the stream saw them

    async def watch() -> None:
        while len(seen) < 100_000 and (not seen or seen[-1] < 10_001):
            seen.append(len(rig.link.writes))
            await asyncio.sleep(0)

    try:
        watching = asyncio.run_coroutine_threadsafe(watch(), rig.loop.loop)
        rig.handle(rig.message("busy", (10_000,), credit=10_000))
        rig.settled()
        watching.result(WAIT)
        assert len(rig.link.items()) == 10_000
        assert any(0 < count < 10_000 for count in seen)  # it had turns mid-stream
    finally:
        rig.loop.close()
