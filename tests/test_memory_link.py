"""The link on kombu's in-process ``memory://`` transport: a reader wakes when a message comes.

kombu's memory transport has nothing to wait on, so its reader sleeps between polls (a second
unless told otherwise). These tests make that sleep a minute: a reader that waited for its next
poll would not answer within the tests' bounds.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from kombu import Connection
from kombu.transport import memory

from rpc.transport.kombu import KombuLink
from rpc.transport.link import Incoming, Link, open_link

POLL = 60.0  # kombu's sleep between polls, and the link's longest wait, in these tests
WITHIN = 10.0  # what a woken reader takes at most, on the slowest machine


@pytest.fixture(autouse=True)
def slow_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory.Transport, "polling_interval", POLL)
    monkeypatch.setattr(KombuLink, "_SLICE", POLL)


@pytest.fixture
def links() -> Iterator[list[Link]]:
    opened: list[Link] = []
    yield opened
    for link in opened:
        link.close()


def open_memory_link(links: list[Link], got: list[Incoming]) -> Link:
    link = open_link(Connection("memory://"), got.append)
    links.append(link)
    return link


def publish_soon(link: Link, queue: str) -> threading.Thread:
    def publish() -> None:
        time.sleep(0.1)  # the reader is waiting by then
        link.publish(queue, b"x", {"content_type": "application/x-msgpack"})

    thread = threading.Thread(target=publish)
    thread.start()
    return thread


def test_a_reader_on_memory_wakes_when_a_message_is_published_not_at_its_next_poll(
        links: list[Link]) -> None:
    got: list[Incoming] = []
    queue = f"test-{uuid.uuid4().hex[:12]}"
    reader = open_memory_link(links, got)
    reader.declare_queue(queue, durable=False)
    reader.consume(queue, prefetch=10)
    publisher = publish_soon(open_memory_link(links, []), queue)

    started = time.monotonic()
    assert reader.read(POLL)
    assert time.monotonic() - started < WITHIN
    assert [msg.body for msg in got] == [b"x"]
    publisher.join()


def test_a_reader_at_its_prefetch_wakes_when_an_ack_frees_a_slot(links: list[Link]) -> None:
    got: list[Incoming] = []
    queue = f"test-{uuid.uuid4().hex[:12]}"
    reader = open_memory_link(links, got)
    reader.declare_queue(queue, durable=False)
    reader.consume(queue, prefetch=1)
    publisher = open_memory_link(links, [])
    publisher.publish(queue, b"1", {"content_type": "application/x-msgpack"})
    publisher.publish(queue, b"2", {"content_type": "application/x-msgpack"})
    assert reader.read(POLL) and [msg.body for msg in got] == [b"1"]

    tag = got[0].delivery_tag
    assert tag is not None
    acker = threading.Timer(0.1, reader.ack, (tag,))  # from another thread, as a worker acks
    acker.start()
    started = time.monotonic()
    assert reader.read(POLL)
    assert time.monotonic() - started < WITHIN
    assert [msg.body for msg in got] == [b"1", b"2"]
    acker.join()
