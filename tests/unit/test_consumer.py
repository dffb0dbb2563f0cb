"""The server's I/O thread (rpc.server.consumer) without a broker: the requests it defers to
run itself, in order, and what becomes of them when the read that brought them fails or
reading passes to another thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from rpc import ConnectionLost
from rpc.core.session import Incoming
from rpc.server import consumer as consumer_module
from rpc.server.consumer import Consumer
from rpc.server.options import ServerOptions


class FailingRead:
    """A link whose one read brings ``count`` requests, then finds the connection gone."""

    closed = False

    def __init__(self, count: int = 1) -> None:
        self.count = count
        self.reads = 0
        self.consumer: Consumer | None = None

    def read(self, timeout: float | None) -> bool:
        assert self.consumer is not None
        self.reads += 1
        for tag in range(1, self.count + 1):
            self.consumer.on_message(Incoming(b"{}", {}, tag, False, "unit", self))
        raise ConnectionLost("the broker closed the connection")

    def tick(self) -> None:
        raise AssertionError("no tick after a failed read")

    def close(self) -> None:
        self.closed = True


def io_thread(link: FailingRead, run_deferred: Callable[[Incoming], Any],
              hand_off: Callable[[Incoming], Any], steps: list[str] | None = None) -> Consumer:
    """A consumer whose I/O thread is this one, defers every request, and stops after a loss;
    ``steps`` hears when it holds and flushes replies."""
    steps = [] if steps is None else steps
    stopping = threading.Event()
    stopping.set()  # a stop is under way: no reconnecting
    consumer = Consumer(
        ServerOptions(url="memory://", server_id="unit"), prefetch=link.count,
        on_message=lambda msg: consumer.deferred.append(msg), run_deferred=run_deferred,
        hand_off=hand_off, hold=lambda: steps.append("hold"),
        flush=lambda: steps.append("flush"), stopping=stopping, idle=lambda: link.reads > 0,
        on_lost=lambda exc: None, on_reconnected=lambda: None,
    )
    link.consumer = consumer
    consumer.link = link
    consumer._thread = threading.current_thread()
    return consumer


def test_a_request_deferred_in_a_read_that_fails_still_runs_and_settles() -> None:
    ran: list[Incoming] = []
    io_thread(FailingRead(), ran.append, hand_off=ran.append).run()
    assert [msg.delivery_tag for msg in ran] == [1]


def test_the_requests_deferred_in_one_read_run_in_their_order() -> None:
    ran: list[Incoming] = []
    handed: list[Incoming] = []
    io_thread(FailingRead(4), ran.append, handed.append).run()
    assert [msg.delivery_tag for msg in ran] == [1, 2, 3, 4]
    assert handed == []


def test_the_replies_of_the_requests_of_one_read_are_held_and_sent_once_all_ran() -> None:
    steps: list[str] = []
    io_thread(FailingRead(3), lambda msg: steps.append(f"run {msg.delivery_tag}"),
              hand_off=lambda msg: None, steps=steps).run()
    assert steps == ["hold", "run 1", "run 2", "run 3", "flush"]


def test_a_lone_request_sends_its_reply_at_once() -> None:
    steps: list[str] = []
    io_thread(FailingRead(1), lambda msg: steps.append("run"), lambda msg: None, steps).run()
    assert steps == ["run"]


def handed_over_during_the_first(requests: int) -> tuple[int, list[int], list[int]]:
    """Run an I/O thread over one read of ``requests`` requests, the first of which runs long
    enough for the watchdog to start a new I/O thread: (reads made, the delivery tags run on
    this thread, those handed to the workers)."""
    ran: list[Incoming] = []
    handed: list[Incoming] = []

    def run_deferred(msg: Incoming) -> None:
        ran.append(msg)
        consumer._thread = threading.Thread()  # the watchdog started a new I/O thread

    link = FailingRead(requests)
    consumer = io_thread(link, run_deferred, handed.append)
    consumer.run()  # returns once reading has passed to the new thread
    return link.reads, [m.delivery_tag for m in ran], [m.delivery_tag for m in handed]


def test_once_reading_passes_to_another_thread_the_requests_not_yet_run_go_to_the_workers() -> None:
    assert handed_over_during_the_first(3) == (1, [1], [2, 3])


def test_a_lone_request_during_which_reading_passes_to_another_thread_ends_this_one() -> None:
    # It returns at once: the new thread reads (and hears of the loss) from now on.
    assert handed_over_during_the_first(1) == (1, [1], [])


def test_the_watchdog_gives_the_requests_not_yet_started_to_the_workers_as_it_hands_over() -> None:
    handed: list[Incoming] = []
    started, release = threading.Event(), threading.Event()

    def run_deferred(msg: Incoming) -> None:  # the first request runs long
        started.set()
        release.wait(5)

    consumer = io_thread(FailingRead(3), run_deferred, handed.append)
    consumer._reader = lambda: threading.Thread(target=lambda: None)  # type: ignore[method-assign]
    io = threading.Thread(target=consumer.run)
    consumer._thread = io
    watchdog = threading.Thread(target=consumer.watch)
    io.start()
    watchdog.start()
    try:
        assert started.wait(5)
        deadline = time.monotonic() + 5
        while len(handed) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [msg.delivery_tag for msg in handed] == [2, 3]  # while the first still runs
    finally:
        release.set()
        io.join(5)
        consumer._closed.set()
        consumer._watching.set()
        watchdog.join(5)


class ClosingRole:
    """The consumer's role lock, taken just as the server closes."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer

    def __enter__(self) -> None:
        self.consumer._closed.set()

    def __exit__(self, *exc: object) -> None:
        return None


def test_the_watchdog_ends_quietly_when_the_server_closes_as_a_run_overruns() -> None:
    consumer = io_thread(FailingRead(), lambda msg: None, lambda msg: None)
    now = time.monotonic()
    consumer._inline_since = now - 1.0  # a run on the I/O thread, well past the limit
    consumer._last_inline = now
    consumer._watching.set()
    consumer._role = ClosingRole(consumer)  # type: ignore[assignment]
    consumer.watch()  # returns: no new I/O thread for a closed server, and no error


def test_closing_cuts_short_the_watchdogs_sleep_until_a_run_could_overrun(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumer_module, "INLINE_LIMIT", 60.0)
    consumer = io_thread(FailingRead(), lambda msg: None, lambda msg: None)
    consumer._thread = None  # no I/O thread to wait for: only the watchdog
    now = time.monotonic()
    consumer._inline_since = consumer._last_inline = now  # a run began: it sleeps a minute
    consumer._watching.set()
    watchdog = consumer._watchdog = threading.Thread(target=consumer.watch)
    watchdog.start()
    time.sleep(0.2)
    began = time.monotonic()
    consumer.close()
    assert not watchdog.is_alive()
    assert time.monotonic() - began < 1.0
