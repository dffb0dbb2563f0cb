"""rpc.transport.aio: the asyncio link on the session's RabbitMQ (and memory:// through the bridge).

Every queue is named per test (uuid) and expires on its own; every callback must run on the
loop's thread.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlsplit

import pytest
from faults.tcpproxy import TCPProxy

from rpc import ConnectionLost
from rpc.core.session import QueueInfo
from rpc.transport.aio import AsyncIncoming, AsyncLink, open_async_link
from rpc.transport.connect import open_connection
from rpc.transport.link import Incoming, Link, open_link

WAIT = 15.0  # seconds: the bound on every wait in this module
EXPIRES = {"x-expires": 60_000}  # every queue here is gone a minute after its last use


def run(scenario: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(scenario, WAIT * 2))


def queue_name() -> str:
    return f"test-async-link-{uuid.uuid4().hex[:12]}"


class Ends:
    """What one async link's callbacks heard, each checked to run on the loop's thread."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.thread = threading.get_ident()
        self.messages: asyncio.Queue[AsyncIncoming] = asyncio.Queue()
        self.returns: asyncio.Queue[tuple[AsyncIncoming, int, str]] = asyncio.Queue()
        self.cancels: asyncio.Queue[str] = asyncio.Queue()
        self.nacks: list[Any] = []
        self.lost: list[ConnectionLost] = []
        self.lost_event = asyncio.Event()
        self.wrong_thread: list[str] = []

    def _here(self, what: str) -> None:
        if threading.get_ident() != self.thread:
            self.wrong_thread.append(what)

    def on_message(self, msg: Incoming) -> None:
        self._here("on_message")
        self.messages.put_nowait(msg)  # type: ignore[arg-type]  # its link is the async one

    def on_return(self, msg: Incoming, code: int, text: str) -> None:
        self._here("on_return")
        self.returns.put_nowait((msg, code, text))  # type: ignore[arg-type]

    def on_cancel(self, tag: str) -> None:
        self._here("on_cancel")
        self.cancels.put_nowait(tag)

    def on_nack(self, key: Any) -> None:
        self._here("on_nack")
        self.nacks.append(key)

    def on_lost(self, exc: ConnectionLost) -> None:
        self._here("on_lost")
        self.lost.append(exc)
        self.lost_event.set()

    async def next_message(self) -> AsyncIncoming:
        return await asyncio.wait_for(self.messages.get(), WAIT)


async def connect(
    url: str, ends: Ends, setup: Callable[[Link], Any] = lambda link: None, *,
    heartbeat: float = 10.0, ssl: dict[str, Any] | None = None,
) -> tuple[AsyncLink, Any]:
    """An async link on a fresh connection, and what ``setup`` returned in the executor."""
    made: list[Any] = []

    def open_blocking() -> Link:
        conn = open_connection(url, heartbeat=heartbeat, retry_for=5.0, name="test-async-link",
                               ssl=ssl)
        link = open_link(conn, ends.on_message, ends.on_return, ends.on_cancel)
        try:
            made.append(setup(link))
        except BaseException:
            link.close()
            raise
        return link

    link = await open_async_link(open_blocking, on_lost=ends.on_lost)
    return link, made[0]


def consumer(queue: str, *, prefetch: int = 10) -> Callable[[Link], str]:
    def setup(link: Link) -> str:
        link.declare_queue(queue, durable=False, arguments=EXPIRES)
        return link.consume(queue, prefetch=prefetch)

    return setup


def client(link: Link) -> str:
    reply_to = link.reply_queue()
    return reply_to


@pytest.fixture
def amqp_url(broker_url: str) -> str:
    return broker_url


# -- publishing and consuming ------------------------------------------------------------------

def test_published_messages_reach_a_consumer_on_a_fresh_connection(url: str) -> None:
    queue = queue_name()

    async def scenario() -> None:
        ends_in, ends_out = Ends(), Ends()
        reader, _ = await connect(url, ends_in, consumer(queue))
        writer, _ = await connect(url, ends_out)
        try:
            assert reader.direct_reply_to is writer.direct_reply_to is url.startswith("amqp")
            for i in range(20):
                writer.publish(queue, f"m{i}".encode(),
                               {"content_type": "text/plain", "correlation_id": f"c{i}",
                                "headers": {"rpc-deadline": 1.5, "n": "x"}})
            for i in range(20):
                msg = await ends_in.next_message()
                assert (msg.body, msg.props["correlation_id"]) == (f"m{i}".encode(), f"c{i}")
                assert msg.props["content_type"] == "text/plain"
                assert msg.props["headers"]["rpc-deadline"] == 1.5
                assert msg.link is reader
                assert msg.delivery_tag is not None and not msg.redelivered
                assert msg.routing_key == queue
                reader.ack(msg.delivery_tag)
        finally:
            await reader.close()
            await writer.close()
        assert ends_in.wrong_thread == ends_out.wrong_thread == []
        assert ends_in.lost == ends_out.lost == []

    run(scenario())


def test_a_rejected_message_comes_back_redelivered(url: str) -> None:
    queue = queue_name()

    async def scenario() -> None:
        ends = Ends()
        link, _ = await connect(url, ends, consumer(queue))
        try:
            link.publish(queue, b"again", {})
            first = await ends.next_message()
            assert first.delivery_tag is not None
            link.reject(first.delivery_tag, requeue=True)
            second = await ends.next_message()
            assert second.body == b"again"
            assert second.redelivered is url.startswith("amqp")  # kombu's memory:// never says
            assert second.delivery_tag is not None
            link.ack(second.delivery_tag)
        finally:
            await link.close()

    run(scenario())


def test_a_callback_that_raises_costs_only_its_own_message(
        url: str, caplog: pytest.LogCaptureFixture) -> None:
    queue = queue_name()

    async def scenario() -> None:
        ends = Ends()
        received = ends.on_message

        def on_message(msg: Incoming) -> None:
            if msg.body == b"bad":
                raise RuntimeError("a handler bug")
            received(msg)

        ends.on_message = on_message  # type: ignore[method-assign]
        link, _ = await connect(url, ends, consumer(queue, prefetch=0))
        try:
            for body in (b"one", b"bad", b"two", b"three"):
                link.publish(queue, body, {})
            bodies = [(await ends.next_message()).body for _ in range(3)]
            assert bodies == [b"one", b"two", b"three"]
            assert not link.closed and ends.lost == []
        finally:
            await link.close()

    run(scenario())
    assert "a handler bug" in caplog.text


def test_direct_reply_to_round_trip_with_confirms(url: str) -> None:
    queue = queue_name()

    async def scenario() -> None:
        server_ends, client_ends = Ends(), Ends()

        def client_setup(link: Link) -> str:
            reply_to = link.reply_queue()
            link.enable_confirms(client_ends.on_nack)
            return reply_to

        server, _ = await connect(url, server_ends, consumer(queue))
        caller, reply_to = await connect(url, client_ends, client_setup)
        try:
            for i in range(10):
                caller.publish(queue, b"ping %d" % i, {"reply_to": reply_to,
                                                       "correlation_id": str(i)},
                               mandatory=True, track=i)
                request = await server_ends.next_message()
                assert request.body == b"ping %d" % i
                server.publish(request.props["reply_to"], b"pong %d" % i,
                               {"correlation_id": request.props["correlation_id"]},
                               ack=request.delivery_tag)
                reply = await client_ends.next_message()
                assert (reply.body, reply.props["correlation_id"]) == (b"pong %d" % i, str(i))
        finally:
            await caller.close()
            await server.close()
        assert client_ends.nacks == []
        assert server_ends.wrong_thread == client_ends.wrong_thread == []

    run(scenario())


def test_an_unroutable_mandatory_publish_is_returned_on_the_loop(url: str) -> None:
    async def scenario() -> None:
        ends = Ends()
        link, _ = await connect(url, ends)
        try:
            link.publish(queue_name(), b"nobody", {"correlation_id": "r"}, mandatory=True)
            msg, code, text = await asyncio.wait_for(ends.returns.get(), WAIT)
            assert (msg.body, msg.props["correlation_id"], code) == (b"nobody", "r", 312)
            assert "NO_ROUTE" in text
        finally:
            await link.close()
        assert ends.wrong_thread == []

    run(scenario())


@pytest.mark.parametrize("size", [131_072 * 3 + 17, 8 * 1024 * 1024], ids=["3-frames", "8MiB"])
def test_a_body_over_frame_max_goes_both_ways(amqp_url: str, size: int) -> None:
    queue = queue_name()
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)

    async def scenario() -> None:
        ends = Ends()
        link, _ = await connect(amqp_url, ends, consumer(queue))
        try:
            link.publish(queue, body, {"correlation_id": "big"})  # more than one send can take
            link.publish(queue, b"", {"correlation_id": "empty"})  # queued behind it
            big, empty = await ends.next_message(), await ends.next_message()
            assert (len(big.body), big.body == body, big.props) == (size, True,
                                                                     {"correlation_id": "big"})
            assert (empty.body, empty.props) == (b"", {"correlation_id": "empty"})
            for msg in (big, empty):
                assert msg.delivery_tag is not None
                link.ack(msg.delivery_tag)
        finally:
            await link.close()

    run(scenario())


def test_the_broker_cancelling_a_consumer_is_heard_on_the_loop(amqp_url: str) -> None:
    queue = queue_name()

    async def scenario() -> None:
        ends = Ends()
        link, tag = await connect(amqp_url, ends, consumer(queue))
        try:
            await asyncio.get_running_loop().run_in_executor(None, delete_queue, amqp_url, queue)
            assert await asyncio.wait_for(ends.cancels.get(), WAIT) == tag
            link.publish(queue_name(), b"still open", {})  # the connection lives on
            await asyncio.sleep(0.2)
            assert ends.lost == []
        finally:
            await link.close()
        assert ends.wrong_thread == []

    run(scenario())


def delete_queue(url: str, queue: str) -> None:
    conn = open_connection(url, retry_for=5.0, name="test-async-link-admin")
    try:
        conn.default_channel.queue_delete(queue)
    finally:
        conn.release()


# -- queue inspections -------------------------------------------------------------------------

def test_inspecting_a_missing_and_an_existing_queue(url: str) -> None:
    queue = queue_name()

    async def scenario() -> None:
        ends = Ends()
        link, _ = await connect(url, ends, lambda link: link.declare_queue(
            queue, durable=False, arguments=EXPIRES))
        loop = asyncio.get_running_loop()

        async def inspect(name: str) -> QueueInfo | None:
            answer: asyncio.Future[QueueInfo | None] = loop.create_future()

            def on_info(info: QueueInfo | None) -> None:
                ends._here("on_info")
                answer.set_result(info)

            link.inspect_queue(name, on_info)
            return await asyncio.wait_for(answer, WAIT)

        try:
            link.publish(queue, b"waiting", {})
            await asyncio.sleep(0.2)
            consumers = 0 if url.startswith("amqp") else None
            assert await inspect(queue_name()) is None
            assert await inspect(queue) == QueueInfo(1, consumers)
            assert await inspect(queue_name()) is None  # the other inspection channel
            assert await inspect(queue_name()) is None  # and back to the first
            assert await inspect(queue) == QueueInfo(1, consumers)
            assert not link.closed and ends.lost == []
        finally:
            await link.close()
        assert ends.wrong_thread == []

    run(scenario())


# -- losing the connection ---------------------------------------------------------------------

def test_on_lost_fires_once_when_the_broker_closes_the_connection(amqp_url: str) -> None:
    async def scenario() -> None:
        ends = Ends()
        link, _ = await connect(amqp_url, ends)
        # RabbitMQ refuses a NaN in a header table by closing the publisher's connection.
        link.publish(queue_name(), b"x", {"headers": {"bad": float("nan")}})
        await asyncio.wait_for(ends.lost_event.wait(), WAIT)
        assert link.closed
        with pytest.raises(ConnectionLost):
            link.publish(queue_name(), b"x", {})
        with pytest.raises(ConnectionLost):
            link.inspect_queue(queue_name(), lambda info: None)
        await link.close()
        await asyncio.sleep(0.1)
        assert len(ends.lost) == 1
        assert ends.lost[0].code == 541
        assert ends.wrong_thread == []

    run(scenario())


def test_on_lost_fires_when_the_socket_dies(amqp_url: str) -> None:
    parts = urlsplit(amqp_url)
    with TCPProxy((parts.hostname or "127.0.0.1", parts.port or 5672)) as proxy:

        async def scenario() -> None:
            ends = Ends()
            link, _ = await connect(proxy.url(), ends)
            proxy.reset_all()
            await asyncio.wait_for(ends.lost_event.wait(), WAIT)
            assert link.closed and len(ends.lost) == 1
            await link.close()

        run(scenario())


def test_on_lost_fires_when_the_broker_falls_silent(amqp_url: str) -> None:
    parts = urlsplit(amqp_url)
    with TCPProxy((parts.hostname or "127.0.0.1", parts.port or 5672)) as proxy:

        async def scenario() -> None:
            ends = Ends()
            link, _ = await connect(proxy.url(), ends, heartbeat=1.0)
            await asyncio.sleep(2.5)  # heartbeats keep an idle connection alive
            assert ends.lost == []
            proxy.blackhole()
            started = asyncio.get_running_loop().time()
            await asyncio.wait_for(ends.lost_event.wait(), WAIT)
            assert asyncio.get_running_loop().time() - started < 4.0
            assert "no data from the broker" in str(ends.lost[0])
            await link.close()

        run(scenario())


def test_close_does_not_call_on_lost_and_later_publishes_fail(url: str) -> None:
    async def scenario() -> None:
        ends = Ends()
        link, _ = await connect(url, ends)
        await link.close()
        await link.close()  # closing twice is harmless
        assert link.closed
        with pytest.raises(ConnectionLost):
            link.publish(queue_name(), b"x", {})
        await asyncio.sleep(0.2)
        assert ends.lost == []

    run(scenario())


def test_close_from_another_loop_closes_the_link_on_its_own(url: str) -> None:
    own = asyncio.new_event_loop()
    thread = threading.Thread(target=own.run_forever, daemon=True)
    thread.start()
    try:
        async def opened() -> tuple[AsyncLink, Ends]:
            ends = Ends()
            link, _ = await connect(url, ends)
            return link, ends

        link, ends = asyncio.run_coroutine_threadsafe(opened(), own).result(WAIT)
        run(link.close())  # on this thread's loop, not the link's

        async def closed() -> None:
            while not link.closed:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)

        asyncio.run_coroutine_threadsafe(closed(), own).result(WAIT)
        assert ends.lost == []
    finally:
        own.call_soon_threadsafe(own.stop)
        thread.join(WAIT)
        own.close()


# -- TLS -----------------------------------------------------------------------------------------

def test_a_tls_connection_carries_messages_both_ways(tls_broker: dict[str, Any]) -> None:
    queue = queue_name()
    body = b"t" * 300_000  # several TLS records

    async def scenario() -> None:
        ends = Ends()
        link, _ = await connect(tls_broker["url"], ends, consumer(queue),
                                ssl={"context": {"cafile": tls_broker["ca"]}})
        try:
            for i in range(5):
                link.publish(queue, body + b"%d" % i, {"correlation_id": str(i)})
            for i in range(5):
                msg = await ends.next_message()
                assert msg.body == body + b"%d" % i
                assert msg.delivery_tag is not None
                link.ack(msg.delivery_tag)
        finally:
            await link.close()
        assert ends.wrong_thread == [] and ends.lost == []

    run(scenario())


# -- closing without losing the last writes ----------------------------------------------------

def test_a_link_closed_right_after_a_publish_has_delivered_it_when_close_returns(
        amqp_url: str) -> None:
    """The broker handles what was written before connection.close, then answers close-ok; a
    socket closed before close-ok makes it drop the channel with the publishes not yet handled."""
    queue = queue_name()

    async def scenario() -> None:
        watcher_ends = Ends()
        watcher, _ = await connect(amqp_url, watcher_ends, lambda link: link.declare_queue(
            queue, durable=False, arguments=EXPIRES))
        loop = asyncio.get_running_loop()

        async def depth() -> int:
            answer: asyncio.Future[QueueInfo | None] = loop.create_future()
            watcher.inspect_queue(queue, answer.set_result)
            info = await asyncio.wait_for(answer, WAIT)
            assert info is not None
            return info.messages

        try:
            for sent in range(1, 21):
                ends = Ends()
                link, _ = await connect(amqp_url, ends)
                link.publish(queue, b"x", {"delivery_mode": 1})
                await link.close()
                assert await depth() == sent, f"round {sent}: the publish was not in yet"
                assert ends.lost == []
        finally:
            await watcher.close()

    run(scenario())
