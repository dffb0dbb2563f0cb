"""The server's I/O thread (rpc.server.consumer) without a broker: what it does with a request
it deferred to run itself when the read that brought it fails."""

from __future__ import annotations

import threading
from typing import Any

from rpc import ConnectionLost
from rpc.core.session import Incoming
from rpc.server.consumer import Consumer
from rpc.server.options import ServerOptions


class FailingRead:
    """A link whose one read brings a request, then finds the connection gone."""

    closed = False

    def __init__(self) -> None:
        self.consumer: Consumer | None = None

    def read(self, timeout: float | None) -> bool:
        assert self.consumer is not None
        self.consumer.on_message(Incoming(b"{}", {}, 1, False, "unit", self))
        raise ConnectionLost("the broker closed the connection")

    def tick(self) -> None:
        raise AssertionError("no tick after a failed read")


def test_a_request_deferred_in_a_read_that_fails_still_runs_and_settles() -> None:
    ran: list[Any] = []
    stopping = threading.Event()
    stopping.set()  # a stop is under way: no reconnecting
    link = FailingRead()
    consumer = Consumer(
        ServerOptions(url="memory://", server_id="unit"), prefetch=1,
        on_message=lambda msg: consumer.defer(msg), run_deferred=ran.append,
        stopping=stopping, idle=lambda: bool(ran), on_lost=lambda exc: None,
        on_reconnected=lambda: None,
    )
    link.consumer = consumer
    consumer.link = link
    consumer._thread = threading.current_thread()
    consumer.run()
    assert [msg.delivery_tag for msg in ran] == [1]
