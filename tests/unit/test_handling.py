"""rpc.server.handling and rpc.server.replies: one request's way through a server, without a broker.

A fake link records what the server writes: publishes (with the acknowledgement they carry),
acknowledgements and rejections, in order.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from support import pid_address

from rpc.core import protocol
from rpc.core.context import current_call
from rpc.core.dedup import CompletedCalls
from rpc.core.serialization import JSON, MSGPACK
from rpc.server.failures import FailureLog
from rpc.server.handling import EXPIRED, REJECTED, Handler
from rpc.server.loops import HandlerLoop
from rpc.server.options import ServerOptions
from rpc.server.registry import Registry
from rpc.server.replies import Replier
from rpc.server.status import InFlight, Stats
from rpc.transport.link import Incoming, Link

REPLY_TO = "amq.rabbitmq.reply-to.g1h2AA5yZXBseUAxMjM0NTY3OAAAAAAAAAAB"
OTHER_REPLY_TO = "amq.rabbitmq.reply-to.g1h2AA5yZXBseUAxMjM0NTY3OAAAAAAAAAAC"
IDENTITY = "unit@host:1"


class FakeLink(Link):
    """Records every write; ``fail_publish`` makes publishes fail as a lost connection does."""

    def __init__(self) -> None:
        super().__init__(lambda msg: None, None, None, None)
        self.writes: list[tuple[Any, ...]] = []
        self.published = threading.Event()

    def publish(self, routing_key: str, body: bytes, props: dict[str, Any], *,
                mandatory: bool = False, ack: int | None = None, exchange: str = "",
                track: Any = None) -> None:
        self.writes.append(("publish", routing_key, body, props, ack))
        self.published.set()

    def publish_replies(self, replies: list[tuple[str, bytes, dict[str, Any], int | None]]) -> None:
        self.writes.append(("replies", [(to, ack) for to, _, _, ack in replies]))

    def ack(self, delivery_tag: int) -> None:
        self.writes.append(("ack", delivery_tag))

    def reject(self, delivery_tag: int, *, requeue: bool) -> None:
        self.writes.append(("reject", delivery_tag, requeue))

    def close(self) -> None:
        self.closed = True

    def kinds(self) -> list[str]:
        return [write[0] for write in self.writes]

    def reply(self) -> tuple[bool, Any]:
        """The outcome of the one reply published."""
        publishes = [w for w in self.writes if w[0] == "publish"]
        assert len(publishes) == 1, self.writes
        _, _, body, props, _ = publishes[0]
        decoded = msgpack.unpackb(body) if props["content_type"] == MSGPACK else json.loads(body)
        return protocol.parse_reply(decoded)


class Rig:
    """A Handler with everything it talks to, and a link to read what it wrote."""

    def __init__(self, registry: Registry, **options: Any) -> None:
        self.options = ServerOptions(url="memory://", server_id="unit", **options)
        self.stats = Stats()
        self.in_flight = InFlight(self.stats.counts)
        self.stopping = threading.Event()
        self.loop = HandlerLoop("unit-loop", self.options.async_concurrency)
        self.replier = Replier("unit", IDENTITY, self.stats.counts, self.stopping)
        self.errors: list[tuple[BaseException, Any]] = []
        self.handler = Handler(
            options=self.options, registry=registry, completed=CompletedCalls(),
            stats=self.stats, in_flight=self.in_flight, failures=FailureLog(),
            replier=self.replier, loop=self.loop, stopping=self.stopping,
        )
        self.link = FakeLink()
        self.tags = iter(range(1, 1000))

    def message(self, method: str = "add", args: tuple[Any, ...] = (2, 3), *,
                body: bytes | None = None, content_type: str = MSGPACK,
                reply_to: str | None = REPLY_TO, message_id: str | None = "m-1",
                redelivered: bool = False, headers: dict[str, Any] | None = None,
                **props: Any) -> Incoming:
        if body is None:
            body = msgpack.packb(protocol.request_body(method, args, {}))
        all_props: dict[str, Any] = {"content_type": content_type, "correlation_id": "c-1",
                                     "message_id": message_id, "headers": headers or {}, **props}
        if reply_to is not None:
            all_props["reply_to"] = reply_to
        return Incoming(body, all_props, next(self.tags), redelivered, "unit", self.link)

    def handle(self, msg: Incoming) -> str | None:
        """As the I/O thread and a worker would: screen, admit, handle, settle."""
        verdict = self.handler.screen(msg)
        if verdict is not None:
            return verdict
        self.handler.admit()
        outcome = self.handler.handle(msg)
        if outcome is not None:
            self.handler.settle(outcome)
        return outcome


def add(a: int, b: int) -> int:
    return a + b


class Overdrawn(Exception):
    pass


@pytest.fixture
def registry() -> Registry:
    registry = Registry()
    registry.add_function(add)
    return registry


@pytest.fixture
def rig(registry: Registry) -> Iterator[Rig]:
    rig = Rig(registry)
    yield rig
    rig.loop.close()


# -- replies ---------------------------------------------------------------------------------------

def test_a_call_is_answered_and_acknowledged_in_one_write(rig: Rig) -> None:
    assert rig.handle(rig.message()) == "calls"
    assert rig.link.kinds() == ["publish"]
    _, routing_key, _, props, ack = rig.link.writes[0]
    assert routing_key == REPLY_TO and ack == 1
    assert props == {"content_type": MSGPACK, "correlation_id": "c-1",
                     "type": protocol.REPLY_TYPE, "app_id": IDENTITY}
    assert rig.link.reply() == (True, 5)
    assert rig.stats.counts["calls"] == 1 and rig.in_flight.count == 0
    assert len(rig.stats.latencies) == 1


def test_a_reply_goes_in_the_requests_content_type(rig: Rig) -> None:
    body = protocol.request_body("add", (1, 1), {})
    rig.handle(rig.message(body=json.dumps(body).encode(), content_type=JSON))
    assert rig.link.writes[0][3]["content_type"] == JSON
    assert rig.link.reply() == (True, 2)


def test_a_cast_is_acknowledged_without_a_reply(rig: Rig) -> None:
    assert rig.handle(rig.message(reply_to=None)) == "calls"
    assert rig.link.writes == [("ack", 1)]


def test_a_reply_address_that_is_not_one_is_not_written_to(rig: Rig) -> None:
    rig.handle(rig.message(reply_to="some.queue"))
    assert rig.link.writes == [("ack", 1)]


# -- refusals --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("msg_options", "error"), [
    ({"method": "nosuch"}, "rpc.MethodNotFound"),
    ({"args": (1,)}, "rpc.InvalidArguments"),
    ({"body": b"\xc1not msgpack"}, "rpc.BadRequest"),
    ({"content_type": "application/x-python-serialize"}, "rpc.BadRequest"),
])
def test_a_request_that_cannot_run_is_refused_with_its_error(
        rig: Rig, msg_options: dict[str, Any], error: str) -> None:
    assert rig.handle(rig.message(**msg_options)) == "bad_requests"
    ok, payload = rig.link.reply()
    assert not ok and payload["type"] == error
    assert rig.stats.counts["bad_requests"] == 1


def test_an_oversize_request_is_refused_unread(rig: Rig) -> None:
    msg = rig.message()
    msg.body, msg.oversize = b"", 10**9
    rig.handle(msg)
    ok, payload = rig.link.reply()
    assert not ok and payload["type"] == "rpc.BadRequest" and "exceeds" in payload["message"]


def test_a_reply_sent_to_the_request_queue_is_rejected_before_a_worker_sees_it(rig: Rig) -> None:
    assert rig.handler.screen(rig.message(type=protocol.REPLY_TYPE)) == REJECTED
    assert rig.stats.counts["bad_requests"] == 1
    assert rig.link.writes == []  # rejecting is the I/O thread's write


def test_a_request_past_its_deadline_is_screened_out_unread(rig: Rig) -> None:
    msg = rig.message(headers={protocol.DEADLINE_HEADER: time.time() - 1})
    assert rig.handler.screen(msg) == EXPIRED
    assert rig.stats.counts["expired"] == 1


def test_a_request_whose_deadline_passes_in_the_queue_is_acknowledged_unanswered(rig: Rig) -> None:
    msg = rig.message(headers={protocol.DEADLINE_HEADER: time.time() + 0.05})
    assert rig.handler.screen(msg) is None
    time.sleep(0.06)
    rig.handler.admit()
    assert rig.handler.handle(msg) == EXPIRED
    assert rig.link.writes == [("ack", 1)]


# -- failures --------------------------------------------------------------------------------------

def test_a_handler_error_is_the_reply_and_reaches_on_error(registry: Registry) -> None:
    seen: list[tuple[BaseException, Any]] = []

    def divide(a: int, b: int) -> float:
        return a / b

    registry.add_function(divide)
    rig = Rig(registry, on_error=lambda exc, call: seen.append((exc, call)))
    assert rig.handle(rig.message("divide", (1, 0))) == "errors"
    ok, payload = rig.link.reply()
    assert not ok and payload["type"] == "ZeroDivisionError"
    assert isinstance(seen[0][0], ZeroDivisionError) and seen[0][1].method == "divide"


def test_an_expected_error_counts_as_one(registry: Registry) -> None:
    def withdraw(amount: int) -> None:
        raise Overdrawn(amount)

    registry.add_function(withdraw, expected=(Overdrawn,))
    rig = Rig(registry)
    assert rig.handle(rig.message("withdraw", (5,))) == "expected_errors"
    assert rig.stats.counts["expected_errors"] == 1


def test_a_result_that_cannot_be_encoded_becomes_an_error_reply(registry: Registry) -> None:
    registry.add_function(lambda: object(), "opaque")
    rig = Rig(registry)
    rig.handle(rig.message("opaque", ()))
    ok, payload = rig.link.reply()
    assert not ok and payload["type"] == "rpc.SerializationError"


# -- delivery ----------------------------------------------------------------------------------------

def test_at_most_once_acknowledges_before_running(registry: Registry) -> None:
    rig = Rig(registry)
    writes_when_run: list[list[str]] = []

    def once() -> str:
        writes_when_run.append(rig.link.kinds())
        return "ran"

    registry.add_function(once, at_most_once=True)
    rig.handle(rig.message("once", ()))
    assert writes_when_run == [["ack"]]
    assert rig.link.writes[1][0] == "publish" and rig.link.writes[1][4] is None


def test_a_repeat_is_answered_from_the_completed_calls_without_running(registry: Registry) -> None:
    runs: list[int] = []
    registry.add_function(lambda: runs.append(1) or len(runs), "count")
    rig = Rig(registry)
    assert rig.handle(rig.message("count", ())) == "calls"
    assert rig.handle(rig.message("count", ())) == "duplicates"
    assert runs == [1]
    first, second = (w for w in rig.link.writes if w[0] == "publish")
    assert first[2] == second[2] and second[4] == 2  # the same reply, acknowledging the repeat


def test_a_redelivered_request_is_acknowledged_after_its_reply_in_the_same_write(
        rig: Rig) -> None:
    # Acknowledged first, it was lost whenever another reply made the broker close the
    # connection between the two writes.
    rig.handle(rig.message(redelivered=True))
    [(kind, *_, ack)] = rig.link.writes
    assert kind == "publish" and ack == 1
    assert rig.stats.counts["redelivered"] == 1


# -- handler context and coroutines ----------------------------------------------------------------

def test_a_handler_sees_its_call(registry: Registry) -> None:
    registry.add_function(lambda: current_call().correlation_id, "whoami")  # type: ignore[union-attr]
    rig = Rig(registry)
    rig.handle(rig.message("whoami", ()))
    assert rig.link.reply() == (True, "c-1")
    assert current_call() is None


def test_a_handler_gets_the_same_call_info_each_time_it_asks(registry: Registry) -> None:
    registry.add_function(lambda: current_call() is current_call(), "same")
    rig = Rig(registry)
    rig.handle(rig.message("same", ()))
    assert rig.link.reply() == (True, True)


def test_a_failed_call_reports_its_call_info_to_the_error_hook(registry: Registry) -> None:
    def overdraw() -> None:
        raise Overdrawn("no funds")

    registry.add_function(overdraw)
    seen: list[tuple[BaseException, Any]] = []
    rig = Rig(registry, on_error=lambda exc, call: seen.append((exc, call)))
    rig.handle(rig.message("overdraw", ()))
    [(exc, call)] = seen
    assert isinstance(exc, Overdrawn)
    assert (call.method, call.correlation_id, call.server_id) == ("overdraw", "c-1", "unit")


def test_a_coroutine_handler_runs_on_the_loop_and_replies_from_it(registry: Registry) -> None:
    threads: list[str] = []

    async def nap() -> str:
        threads.append(threading.current_thread().name)
        await asyncio.sleep(0.01)
        call = current_call()
        assert call is not None
        return call.method

    registry.add_function(nap)
    rig = Rig(registry)
    try:
        assert rig.handle(rig.message("nap", ())) is None  # handed to the loop
        assert rig.link.published.wait(5)
        assert rig.link.reply() == (True, "nap")
        assert threads == ["unit-loop"]
        deadline = time.monotonic() + 5
        while rig.in_flight.count:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert rig.stats.counts["calls"] == 1
    finally:
        rig.loop.close()


def test_a_coroutine_cut_off_by_a_stop_is_left_to_the_broker(registry: Registry) -> None:
    started = threading.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(60)

    registry.add_function(forever)
    rig = Rig(registry)
    try:
        rig.handle(rig.message("forever", ()))
        assert started.wait(5)
        rig.stopping.set()
        assert rig.loop.cancel_running() == 1
        assert rig.in_flight.wait_idle(5) == 0
        assert rig.link.writes == []  # neither answered nor acknowledged: redelivered
        assert rig.stats.counts["requeued"] == 1
    finally:
        rig.loop.close()


def test_async_concurrency_zero_runs_a_coroutine_on_the_worker(registry: Registry) -> None:
    async def nap() -> str:
        return "done"

    registry.add_function(nap)
    rig = Rig(registry, async_concurrency=0)
    try:
        assert rig.handle(rig.message("nap", ())) == "calls"
        assert rig.link.reply() == (True, "done")
    finally:
        rig.loop.close()


# -- gone callers ----------------------------------------------------------------------------------

def test_a_lone_recent_reply_address_is_the_gone_caller(rig: Rig) -> None:
    rig.handle(rig.message())
    assert rig.replier.closed_on_reply(rig.link) == {REPLY_TO}
    rig.link.writes.clear()
    rig.handle(rig.message(message_id="m-2", redelivered=True))
    assert rig.link.writes == [("ack", 2)]  # acknowledged unanswered
    assert rig.stats.counts["gone_callers"] == 1


def test_once_a_caller_is_found_gone_so_is_every_caller_of_its_node(rig: Rig) -> None:
    # Each would close the connection once more: RabbitMQ does so on a reply to any of them.
    rig.handle(rig.message(reply_to=pid_address("reply@1", 10, 7)))
    assert rig.replier.closed_on_reply(rig.link) == {pid_address("reply@1", 10, 7)}
    rig.link.writes.clear()
    rig.handle(rig.message(message_id="m-2", reply_to=pid_address("reply@1", 11, 7)))
    assert rig.link.writes == [("ack", 2)]  # acknowledged unanswered
    assert rig.stats.counts["gone_callers"] == 1


def test_callers_of_the_restarted_node_are_answered(rig: Rig) -> None:
    rig.handle(rig.message(reply_to=pid_address("reply@1", 10, 7)))
    rig.replier.closed_on_reply(rig.link)
    rig.link.writes.clear()
    rig.handle(rig.message(message_id="m-2", reply_to=pid_address("reply@1", 10, 8)))
    assert [kind for kind, *_ in rig.link.writes] == ["publish"]
    assert rig.stats.counts["gone_callers"] == 0


def test_among_several_addresses_each_is_probed_alone(rig: Rig) -> None:
    rig.handle(rig.message())
    rig.handle(rig.message(message_id="m-2", reply_to=OTHER_REPLY_TO))
    assert rig.replier.closed_on_reply(rig.link) == set()
    assert rig.replier.is_suspect(REPLY_TO) and rig.replier.is_suspect(OTHER_REPLY_TO)
    rig.link.writes.clear()
    began = time.monotonic()
    rig.handle(rig.message(message_id="m-3"))
    assert time.monotonic() - began >= 0.15  # the probe waited for the broker's verdict
    assert rig.link.kinds() == ["publish", "ack"]  # the reply alone, acknowledged once it lived
    assert not rig.replier.is_suspect(REPLY_TO)  # the connection survived: cleared
    assert rig.replier.is_suspect(OTHER_REPLY_TO)


def test_a_close_while_a_probe_is_out_blames_no_one_when_others_were_written_too(
        rig: Rig) -> None:
    # Another reply to a gone caller may be what closed it: blaming the probe would leave a
    # live caller unanswered.
    rig.handle(rig.message())
    rig.handle(rig.message(message_id="m-2", reply_to=OTHER_REPLY_TO))
    rig.replier.closed_on_reply(rig.link)
    rig.replier._probe = REPLY_TO
    rig.replier._recent.extend([(rig.link, REPLY_TO), (rig.link, "amq.rabbitmq.reply-to.third")])
    assert rig.replier.closed_on_reply(rig.link) == set()
    assert rig.replier.is_suspect(REPLY_TO)


def suspect_only_reply_to(rig: Rig) -> None:
    """After a close on replies to REPLY_TO and OTHER_REPLY_TO, only REPLY_TO stays suspect."""
    rig.handle(rig.message())
    rig.handle(rig.message(message_id="m-2", reply_to=OTHER_REPLY_TO))
    rig.replier.closed_on_reply(rig.link)
    rig.replier.suspects.discard(OTHER_REPLY_TO)
    rig.link.writes.clear()


def test_held_replies_go_out_at_flush_in_one_write_with_their_acks(rig: Rig) -> None:
    rig.replier.hold(10)
    rig.handle(rig.message())
    rig.handle(rig.message(message_id="m-2", reply_to=OTHER_REPLY_TO))
    assert rig.link.writes == []
    rig.replier.flush()
    assert rig.link.writes == [("replies", [(REPLY_TO, 1), (OTHER_REPLY_TO, 2)])]
    assert rig.replier.closed_on_reply(rig.link) == set()  # both count as written
    assert rig.replier.is_suspect(REPLY_TO) and rig.replier.is_suspect(OTHER_REPLY_TO)


def test_held_replies_go_out_as_soon_as_there_are_as_many_as_asked(rig: Rig) -> None:
    rig.replier.hold(2)
    for n in range(3):
        rig.handle(rig.message(message_id=f"m-{n}"))
    assert rig.link.writes == [("replies", [(REPLY_TO, 1), (REPLY_TO, 2)])]
    rig.replier.flush()
    assert rig.link.writes[1:] == [("replies", [(REPLY_TO, 3)])]


def test_a_reply_to_a_suspect_sends_the_held_replies_first_and_goes_alone(rig: Rig) -> None:
    suspect_only_reply_to(rig)
    rig.replier.hold(10)
    rig.handle(rig.message(message_id="m-3", reply_to=OTHER_REPLY_TO))
    rig.handle(rig.message(message_id="m-4"))  # to the suspect: a probe
    assert rig.link.kinds() == ["replies", "publish", "ack"]
    assert not rig.replier.holding()


def test_replies_to_other_callers_wait_while_a_probe_is_out(rig: Rig) -> None:
    suspect_only_reply_to(rig)
    probing = threading.Thread(target=rig.handle, args=(rig.message(message_id="m-3"),))
    probing.start()
    time.sleep(0.05)  # the probe is out, waiting for the broker's verdict
    rig.handle(rig.message(message_id="m-4", reply_to=OTHER_REPLY_TO))
    probing.join()
    assert rig.link.kinds() == ["publish", "ack", "publish"]  # the probe, its ack, then m-4


def test_a_reply_waiting_behind_a_probe_is_not_blamed_for_the_probes_close(rig: Rig) -> None:
    # Counted as written while it waited, it made every close look shared, and the gone
    # caller's requests came back for ever.
    rig.handle(rig.message())
    rig.handle(rig.message(message_id="m-2", reply_to=OTHER_REPLY_TO))
    rig.replier.closed_on_reply(rig.link)  # both suspects
    probes = [threading.Thread(target=rig.handle, args=(rig.message(message_id=f"m-{n}",
                                                                    reply_to=to),))
              for n, to in ((3, REPLY_TO), (4, OTHER_REPLY_TO))]
    probes[0].start()
    time.sleep(0.05)  # the first probe is out
    probes[1].start()
    time.sleep(0.05)  # the second waits for the first's verdict
    assert rig.replier.closed_on_reply(rig.link) == {REPLY_TO}
    for probe in probes:
        probe.join()


def test_a_write_to_a_connection_already_lost_is_not_blamed_for_the_next_ones_close(
        rig: Rig) -> None:
    # A worker still replying through the old connection must not make every close of the new
    # one look shared, or a gone caller's requests come back for ever.
    old = rig.link
    rig.link = FakeLink()
    rig.handle(rig.message(reply_to=OTHER_REPLY_TO, message_id="m-1"))
    old.closed = True
    rig.replier._recent.append((old, REPLY_TO))
    rig.handle(rig.message(message_id="m-2"))
    assert rig.replier.closed_on_reply(rig.link) == set()  # two addresses on this one
    rig.handle(rig.message(message_id="m-3", reply_to=OTHER_REPLY_TO))
    rig.replier._recent.append((old, REPLY_TO))
    assert rig.replier.closed_on_reply(rig.link) == {OTHER_REPLY_TO}


def test_a_probe_that_closes_the_connection_marks_its_address_gone(rig: Rig) -> None:
    rig.handle(rig.message())
    rig.handle(rig.message(message_id="m-2", reply_to=OTHER_REPLY_TO))
    rig.replier.closed_on_reply(rig.link)
    gone: list[set[str]] = []
    # The broker closes the connection while the probe waits: its address is the culprit.
    closer = threading.Timer(0.05, lambda: gone.append(rig.replier.closed_on_reply(rig.link)))
    closer.start()
    rig.handle(rig.message(message_id="m-3"))
    closer.join()
    assert gone == [{REPLY_TO}]
    rig.link.writes.clear()
    rig.handle(rig.message(message_id="m-4"))
    assert rig.link.writes == [("ack", 4)]
