"""Closing a blocking link must not lose what was written just before the close.

A server's graceful stop publishes the last replies (each with its request's ack) and then closes
its connection. AMQP 0-9-1 has the broker handle every frame written before ``connection.close``
and only then answer close-ok; a client that closes its socket without waiting for close-ok
makes RabbitMQ see the connection drop ("client unexpectedly closed TCP connection") and tear
the channel down, with the publishes and acks it has not handled yet. The reply is then lost,
its request goes back to a queue nobody consumes any more, and the caller times out
(tests/test_serve_async.py::test_async_server_start_and_stop_return_the_calls_abandoned failed
so about once in a thousand runs under CPU load).

So ``close()`` must return only once the broker has what was written before it: a queue's depth,
read right after each close, counts every message published before it.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from rpc.core.session import QueueInfo
from rpc.transport.connect import open_connection
from rpc.transport.link import Incoming, Link, open_link

pytestmark = pytest.mark.integration

#: Connections opened, each publishing one message and closed at once.
ROUNDS = 20
WAIT = 10.0  # seconds: the bound on a queue inspection


def ignore(msg: Incoming) -> None:
    del msg


def depth(link: Link, queue: str) -> int:
    """The queue's message count, read on this thread (the link's only reader)."""
    answer: list[QueueInfo | None] = []
    got = threading.Event()

    def on_info(info: QueueInfo | None) -> None:
        answer.append(info)
        got.set()

    link.inspect_queue(queue, on_info)
    for _ in range(int(WAIT / 0.1)):
        if got.is_set():
            break
        link.read(0.1)
    info = answer[0] if answer else None
    assert info is not None, f"no answer about queue {queue!r}"
    return info.messages


def test_a_link_closed_right_after_a_publish_has_delivered_it_when_close_returns(broker_url):
    queue = f"test-link-close-{uuid.uuid4().hex[:12]}"
    watcher = open_link(open_connection(broker_url, heartbeat=None, retry_for=5.0,
                                        name="test-link-close-watcher"), ignore)
    try:
        # Transient, and deleted by the broker a minute after its last use.
        watcher.declare_queue(queue, durable=False, arguments={"x-expires": 60_000})
        for sent in range(1, ROUNDS + 1):
            link = open_link(open_connection(broker_url, retry_for=5.0,
                                             name="test-link-close"), ignore)
            link.publish(queue, b"x", {"delivery_mode": 1})
            link.close()
            assert depth(watcher, queue) == sent, f"round {sent}: the publish was not in yet"
    finally:
        watcher.close()


def test_a_link_in_confirm_mode_closes_as_soon_as_the_close_ok_comes(broker_url):
    """The close-ok is smaller than the receive mark that holds a lone confirm back: close()
    must not wait out a read step for it."""
    link = open_link(open_connection(broker_url, retry_for=5.0, name="test-link-close-confirms"),
                     ignore)
    link.enable_confirms(lambda key: None)
    link.publish("test-link-close-nowhere", b"x", {"delivery_mode": 1}, track="one")
    for _ in range(int(WAIT / 0.1)):  # the confirm read: the close-ok will come alone
        if not link.session.awaiting_confirms:
            break
        link.read(0.1)
    assert not link.session.awaiting_confirms
    begun = time.monotonic()
    link.close()
    assert time.monotonic() - begun < 0.2
