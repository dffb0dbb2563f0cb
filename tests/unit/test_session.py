"""rpc.core.session: the sans-I/O channel, fed what py-amqp's own encoder writes as the broker."""

from __future__ import annotations

import math
import types
from decimal import Decimal
from struct import unpack_from
from typing import Any

import pytest
from amqp import spec
from amqp.basic_message import Message
from amqp.method_framing import frame_writer
from amqp.serialization import decode_properties_basic, dumps
from hypothesis import given, settings
from hypothesis import strategies as st

from rpc import BrokerBlocked, ConnectionLost
from rpc.core import frames
from rpc.core.session import Heartbeat, Incoming, QueueInfo, Session

FRAME_MAX = 131_072
CHANNEL = 1
AUX = (2, 3)
OWNER = object()


def written_by_py_amqp(channel: int, method: tuple[int, int], fmt: str, args: tuple[Any, ...],
                       message: Message | None = None, frame_max: int = FRAME_MAX) -> bytes:
    """The bytes py-amqp's frame writer produces for a method (and its content)."""
    out = bytearray()
    transport = types.SimpleNamespace(write=lambda data: out.extend(bytes(data)))
    write_frame = frame_writer(types.SimpleNamespace(frame_max=frame_max, bytes_sent=0), transport)
    write_frame(frames.FRAME_METHOD, channel, method, dumps(fmt, args), message)
    return bytes(out)


def deliver(tag: int, body: bytes = b"body", *, key: str = "calc", redelivered: bool = False,
            frame_max: int = FRAME_MAX, channel: int = CHANNEL, **props: Any) -> bytes:
    return written_by_py_amqp(channel, spec.Basic.Deliver, "sLbss",
                              ("amq.ctag-1", tag, redelivered, "", key),
                              Message(body, **props), frame_max)


def returned(body: bytes, key: str, code: int = 312, text: str = "NO_ROUTE", **props: Any) -> bytes:
    return written_by_py_amqp(CHANNEL, spec.Basic.Return, "Bsss", (code, text, "", key),
                              Message(body, **props))


def confirm(tag: int, *, multiple: bool = False, ok: bool = True) -> bytes:
    if ok:
        return written_by_py_amqp(CHANNEL, spec.Basic.Ack, "Lb", (tag, multiple))
    return written_by_py_amqp(CHANNEL, spec.Basic.Nack, "Lbb", (tag, multiple, False))


def close(channel: int, code: int, text: str) -> bytes:
    method = spec.Connection.Close if channel == 0 else spec.Channel.Close
    return written_by_py_amqp(channel, method, "BsBB", (code, text, 60, 40))


def heartbeat() -> bytes:
    return frames.heartbeat_frame()


class Heard:
    """A session and everything its callbacks heard."""

    def __init__(self, *, max_body: int | None = None, frame_max: int = FRAME_MAX) -> None:
        self.messages: list[Incoming[object]] = []
        self.returns: list[tuple[Incoming[object], int, str]] = []
        self.cancels: list[str] = []
        self.nacks: list[Any] = []
        self.blocked: list[tuple[list[Any], str]] = []
        self.session: Session[object] = Session(
            OWNER, channel=CHANNEL, aux_channels=AUX, frame_max=frame_max,
            on_message=self.messages.append,
            on_return=lambda msg, code, text: self.returns.append((msg, code, text)),
            on_cancel=self.cancels.append, max_body=max_body,
        )

    def confirms(self) -> Heard:
        self.session.enable_confirms(self.nacks.append,
                                     lambda keys, reason: self.blocked.append((keys, reason)))
        return self

    def feed(self, *chunks: bytes) -> Heard:
        for chunk in chunks:
            self.session.receive(chunk)
        return self

    def facts(self) -> list[tuple[Any, ...]]:
        return [(m.body, m.delivery_tag, m.redelivered, m.routing_key, m.props, m.oversize)
                for m in self.messages]


# -- deliveries ----------------------------------------------------------------------------------

REQUEST_PROPS: dict[str, Any] = {
    "content_type": "application/x-msgpack", "correlation_id": "4f2a9c1e.1f",
    "message_id": "4f2a9c1e.1f", "expiration": "2500",
    "reply_to": "amq.rabbitmq.reply-to.g1h2AA5yZXBseUAyNzM2NjQ4NwAAIWsAAAAAXZ7eDw==",
}
TWO = (deliver(1, b"first", application_headers={"rpc-deadline": 1_700_000_002.5}, **REQUEST_PROPS)
       + deliver(2**40 + 3, b"second", key="amq.rabbitmq.reply-to.abc", redelivered=True,
                 content_type="application/json"))
EXPECTED_TWO = [
    (b"first", 1, False, "calc", {**REQUEST_PROPS, "headers": {"rpc-deadline": 1_700_000_002.5}}, 0),
    (b"second", 2**40 + 3, True, "amq.rabbitmq.reply-to.abc", {"content_type": "application/json"}, 0),
]


def test_deliveries_in_one_burst_reach_on_message_in_order() -> None:
    heard = Heard().feed(TWO)
    assert heard.facts() == EXPECTED_TWO
    assert all(msg.link is OWNER for msg in heard.messages)
    assert heard.session.data_to_send() == b""


def test_deliveries_split_at_every_byte_boundary_come_out_the_same() -> None:
    for cut in range(len(TWO) + 1):
        assert Heard().feed(TWO[:cut], TWO[cut:]).facts() == EXPECTED_TWO, cut


def test_deliveries_fed_one_byte_at_a_time_come_out_the_same() -> None:
    heard = Heard()
    for i in range(len(TWO)):
        heard.feed(TWO[i:i + 1])
    assert heard.facts() == EXPECTED_TWO


def test_long_unicode_names_and_an_exchange_are_read_past() -> None:
    tag, key = "ç" * 127, "ü" * 127
    data = written_by_py_amqp(CHANNEL, spec.Basic.Deliver, "sLbss", (tag, 5, True, "amq.direct", key),
                              Message(b"b", type="t"))
    assert Heard().feed(data).facts() == [(b"b", 5, True, key, {"type": "t"}, 0)]


def test_memoryview_and_bytearray_chunks_are_accepted() -> None:
    chunk = bytearray(TWO)
    heard = Heard().feed(memoryview(chunk)[:50], bytearray(chunk[50:]))  # type: ignore[arg-type]
    assert heard.facts() == EXPECTED_TWO


def test_a_body_over_frame_max_is_joined_at_every_split_point() -> None:
    body = bytes(range(256)) * 10  # 2,560 bytes in frames of at most 1,016
    data = deliver(7, body, frame_max=1024, correlation_id="big") + deliver(8, b"after")
    assert [kind for kind, _, _ in split(data)][:5] == [1, 2, 3, 3, 3]
    for cut in range(0, len(data) + 1, 7):
        heard = Heard(frame_max=1024).feed(data[:cut], data[cut:])
        assert [(m.body, m.delivery_tag) for m in heard.messages] == [(body, 7), (b"after", 8)]


def test_an_empty_body_completes_at_its_header() -> None:
    data = deliver(3, b"", correlation_id="e")
    assert [kind for kind, _, _ in split(data)] == [1, 2]  # no body frame at all
    for cut in range(len(data) + 1):
        heard = Heard().feed(data[:cut], data[cut:])
        assert heard.facts() == [(b"", 3, False, "calc", {"correlation_id": "e"}, 0)]


def test_heartbeats_between_frames_are_skipped() -> None:
    frames_of = [payload_frame for payload_frame in frames_raw(TWO)]
    mixed = heartbeat() + b"".join(f + heartbeat() for f in frames_of)
    assert Heard().feed(mixed).facts() == EXPECTED_TWO


def test_a_body_over_max_body_is_dropped_unread_and_flagged() -> None:
    big = bytes(1000)
    data = deliver(1, big, frame_max=256) + deliver(2, b"small")
    heard = Heard(max_body=100, frame_max=256).feed(data)
    assert [(m.body, m.delivery_tag, m.oversize) for m in heard.messages] == [
        (b"", 1, 1000), (b"small", 2, 0)]


def test_a_body_of_exactly_max_body_is_kept() -> None:
    heard = Heard(max_body=5).feed(deliver(1, b"12345"))
    assert [(m.body, m.oversize) for m in heard.messages] == [(b"12345", 0)]


def test_a_callback_that_raises_leaves_the_rest_of_the_burst_for_the_next_receive() -> None:
    heard = Heard()
    calls = []

    def on_message(msg: Incoming[object]) -> None:
        calls.append(msg.delivery_tag)
        if len(calls) == 1:
            raise RuntimeError("handler bug")

    heard.session.on_message = on_message
    with pytest.raises(RuntimeError):
        heard.feed(TWO)
    heard.feed(b"")
    assert calls == [1, 2**40 + 3]


def test_a_malformed_frame_end_is_a_lost_connection() -> None:
    data = bytearray(deliver(1))
    data[split_end(data)] = 0
    with pytest.raises(ConnectionLost, match="malformed"):
        Heard().feed(bytes(data))


def test_a_method_frame_too_short_for_its_method_id_is_a_lost_connection() -> None:
    with pytest.raises(ConnectionLost, match="malformed"):
        Heard().feed(frame(frames.FRAME_METHOD, CHANNEL, b"\x00\x3c"))


def test_a_delivery_whose_consumer_tag_runs_past_its_frame_is_a_lost_connection() -> None:
    data = bytearray(deliver(1))
    data[7 + 4] = 255  # the consumer tag's length
    with pytest.raises(ConnectionLost, match="malformed"):
        Heard().feed(bytes(data))


def test_a_confirm_too_short_for_its_delivery_tag_is_a_lost_connection() -> None:
    with pytest.raises(ConnectionLost, match="malformed"):
        Heard().confirms().feed(frame(frames.FRAME_METHOD, CHANNEL, confirm(5)[7:-1][:-3]))


def test_a_content_header_too_short_for_its_body_size_is_a_lost_connection() -> None:
    method, header, _ = frames_raw(deliver(1))
    with pytest.raises(ConnectionLost, match="malformed"):
        Heard().feed(method, frame(frames.FRAME_HEADER, CHANNEL, header[7:-1][:8]))


def test_a_channel_close_too_short_for_its_reply_code_is_a_lost_connection() -> None:
    cut = close(CHANNEL, 406, "PRECONDITION_FAILED")[7:-1][:5]
    with pytest.raises(ConnectionLost, match="malformed"):
        Heard().feed(frame(frames.FRAME_METHOD, CHANNEL, cut))


STREAMS = [
    deliver(1, b"x" * 10, correlation_id="c1", reply_to="amq.rabbitmq.reply-to.abc",
            headers={"rpc-deadline": 1.5, "a": [1, "b"]}, content_type="application/msgpack"),
    deliver(2, b"y" * 300, frame_max=64),
    returned(b"body", "calc", correlation_id="c2"),
    confirm(5), confirm(6, ok=False), confirm(7, multiple=True),
    close(CHANNEL, 406, "PRECONDITION_FAILED"),
    heartbeat(),
]


@settings(max_examples=300, derandomize=True, database=None)
@given(
    picks=st.lists(st.sampled_from(STREAMS), min_size=1, max_size=4),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                   min_size=1, max_size=6),
    cut=st.floats(0, 1),
)
def test_a_corrupted_stream_from_the_broker_only_ever_loses_the_connection(
        picks: list[bytes], edits: list[tuple[float, int]], cut: float) -> None:
    data = bytearray(b"".join(picks))
    for where, value in edits:
        data[int(where * len(data))] = value
    at = int(cut * len(data))
    heard = Heard().confirms()
    try:
        heard.feed(bytes(data[:at]), bytes(data[at:]))
    except (ConnectionLost, BrokerBlocked):
        pass


# -- returns, confirms, blocking -----------------------------------------------------------------

def test_a_returned_message_reaches_on_return_with_code_and_text() -> None:
    heard = Heard().feed(returned(b"nobody", "no-such-server", correlation_id="c7"), deliver(1))
    ((msg, code, text),) = heard.returns
    assert (msg.body, msg.delivery_tag, msg.routing_key, msg.props) == (
        b"nobody", None, "no-such-server", {"correlation_id": "c7"})
    assert (code, text) == (312, "NO_ROUTE")
    assert [m.delivery_tag for m in heard.messages] == [1]


def publish(heard: Heard, *tracks: Any) -> None:
    for track in tracks:
        heard.session.publish("calc", b"x", {})
        heard.session.published(track)


def test_acks_retire_tracked_publishes_singly_and_in_batches() -> None:
    heard = Heard().confirms()
    publish(heard, "a", None, "c", "d", "e")  # seq 1..5; seq 2 is untracked
    heard.feed(confirm(3), confirm(2, multiple=True), confirm(4))
    heard.feed(block("low on memory"))
    assert heard.blocked == [(["e"], "low on memory")]
    assert heard.nacks == []


def test_nacks_name_the_refused_publishes() -> None:
    heard = Heard().confirms()
    publish(heard, "a", "b", "c", "d")
    heard.feed(confirm(2, ok=False), confirm(4, multiple=True, ok=False))
    assert heard.nacks == ["b", "a", "c", "d"]


def test_publishes_before_confirms_are_not_counted() -> None:
    heard = Heard()
    publish(heard, "before")
    heard.confirms()
    publish(heard, "first")
    heard.feed(confirm(1, ok=False))
    assert heard.nacks == ["first"]


def test_blocked_broker_refuses_publishes_until_unblocked() -> None:
    heard = Heard().confirms()
    publish(heard, "a", "b")
    heard.feed(block("disk alarm"))
    assert heard.session.blocked == "disk alarm"
    assert heard.blocked == [(["a", "b"], "disk alarm")]
    with pytest.raises(BrokerBlocked, match="disk alarm"):
        heard.session.publish("calc", b"x", {})
    heard.feed(written_by_py_amqp(0, spec.Connection.Unblocked, "", ()))
    assert heard.session.blocked is None
    assert heard.session.publish("calc", b"x", {})


def block(reason: str) -> bytes:
    return written_by_py_amqp(0, spec.Connection.Blocked, "s", (reason,))


# -- closes and cancels ------------------------------------------------------------------------

def test_the_broker_closing_the_channel_is_a_lost_connection_answered_with_close_ok() -> None:
    heard = Heard()
    with pytest.raises(ConnectionLost, match="PRECONDITION_FAILED") as info:
        heard.feed(deliver(1) + close(CHANNEL, 406, "PRECONDITION_FAILED - unknown tag") + deliver(2))
    assert info.value.code == 406
    assert [m.delivery_tag for m in heard.messages] == [1]  # what came before, only
    assert heard.session.data_to_send() == written_by_py_amqp(CHANNEL, spec.Channel.CloseOk, "", ())


def test_the_broker_closing_the_connection_is_a_lost_connection_answered_with_close_ok() -> None:
    heard = Heard()
    with pytest.raises(ConnectionLost, match="CONNECTION_FORCED") as info:
        heard.feed(close(0, 320, "CONNECTION_FORCED - broker forced connection closure"))
    assert info.value.code == 320
    assert heard.session.data_to_send() == written_by_py_amqp(0, spec.Connection.CloseOk, "", ())


def test_our_close_is_written_like_py_amqps_and_its_close_ok_ends_the_session() -> None:
    heard = Heard()
    assert heard.session.close() == written_by_py_amqp(0, spec.Connection.Close, "BsBB",
                                                       (200, "bye", 0, 0))
    assert not heard.session.closed_ok
    with pytest.raises(ConnectionLost):
        heard.feed(deliver(1) + written_by_py_amqp(0, spec.Connection.CloseOk, "", ()))
    assert heard.session.closed_ok
    assert [m.delivery_tag for m in heard.messages] == [1]  # what came before is still heard
    assert heard.session.data_to_send() == b""  # a close-ok is answered with nothing


@pytest.mark.parametrize("nowait", [False, True])
def test_a_consumer_cancelled_by_the_broker_is_heard_and_answered(nowait: bool) -> None:
    heard = Heard().feed(written_by_py_amqp(CHANNEL, spec.Basic.Cancel, "sb", ("amq.ctag-9", nowait)))
    assert heard.cancels == ["amq.ctag-9"]
    expected = b"" if nowait else written_by_py_amqp(CHANNEL, spec.Basic.CancelOk, "s", ("amq.ctag-9",))
    assert heard.session.data_to_send() == expected
    assert heard.session.data_to_send() == b""  # taken once


def test_answers_to_our_own_commands_are_ignored() -> None:
    heard = Heard().feed(written_by_py_amqp(CHANNEL, spec.Basic.CancelOk, "s", ("amq.ctag-1",)),
                         written_by_py_amqp(CHANNEL, spec.Basic.QosOk, "", ()), deliver(1))
    assert [m.delivery_tag for m in heard.messages] == [1]
    assert heard.session.data_to_send() == b""


# -- queue inspections ---------------------------------------------------------------------------

def declare_ok(channel: int, queue: str, messages: int, consumers: int) -> bytes:
    return written_by_py_amqp(channel, spec.Queue.DeclareOk, "sll", (queue, messages, consumers))


def test_an_inspection_opens_its_channel_once_and_hears_the_counts() -> None:
    heard = Heard()
    answers: list[QueueInfo | None] = []
    first = heard.session.inspect_queue("calc", answers.append)
    assert [(kind, channel) for kind, channel, _ in split(first)] == [(1, 2), (1, 2)]
    assert first.startswith(frames.channel_open_frame(2))
    assert first.endswith(frames.passive_declare_frame(2, "calc"))
    assert heard.session.inspect_queue("calc", answers.append) == frames.passive_declare_frame(2, "calc")
    heard.feed(written_by_py_amqp(2, spec.Channel.OpenOk, "s", ("",)),
               declare_ok(2, "calc", 12, 3), declare_ok(2, "calc", 13, 2))
    assert answers == [QueueInfo(12, 3), QueueInfo(13, 2)]


def test_a_missing_queue_answers_none_and_the_next_inspection_opens_the_other_channel() -> None:
    heard = Heard()
    answers: list[QueueInfo | None] = []
    heard.session.inspect_queue("missing", answers.append)
    heard.session.inspect_queue("calc", answers.append)  # sent before the broker closed
    heard.feed(close(2, 404, "NOT_FOUND - no queue 'missing'"))
    assert answers == [None, QueueInfo(0, None)]
    assert heard.session.data_to_send() == written_by_py_amqp(2, spec.Channel.CloseOk, "", ())
    again = heard.session.inspect_queue("calc", answers.append)
    assert again.startswith(frames.channel_open_frame(3))
    heard.feed(declare_ok(3, "calc", 1, 1))
    assert answers[-1] == QueueInfo(1, 1)
    heard.feed(close(3, 404, "NOT_FOUND"))  # nothing waits: nothing is answered
    assert heard.session.inspect_queue("x", answers.append).startswith(frames.channel_open_frame(2))


def test_an_inspection_asked_on_a_channel_closing_under_it_is_answered_with_the_next() -> None:
    heard = Heard()
    answers: list[Any] = []
    heard.session.inspect_queue("missing", lambda info: answers.append(("first", info)))
    # another thread reads the old channel's generation, the reader closes it, then it queues
    generation = heard.session._aux_gen
    heard.feed(close(2, 404, "NOT_FOUND"))
    heard.session._aux_gen = generation
    heard.session.inspect_queue("calc", lambda info: answers.append(("stale", info)))
    heard.session._aux_gen = generation + 1
    heard.session.inspect_queue("calc", lambda info: answers.append(("next", info)))
    heard.feed(declare_ok(3, "calc", 4, 1))
    assert answers == [("first", None), ("stale", QueueInfo(0, None)), ("next", QueueInfo(4, 1))]


def test_an_inspection_not_written_can_be_forgotten() -> None:
    heard = Heard()
    answers: list[QueueInfo | None] = []
    heard.session.inspect_queue("a", answers.append)
    heard.session.inspect_queue("b", lambda info: pytest.fail("forgotten"))
    heard.session.forget_inspection()
    heard.feed(declare_ok(2, "a", 0, 1))
    assert answers == [QueueInfo(0, 1)]


def test_an_answer_on_a_closed_generations_channel_is_ignored() -> None:
    heard = Heard()
    heard.feed(declare_ok(3, "calc", 1, 1))  # channel 3 is not the current one


# -- commands ------------------------------------------------------------------------------------

def test_publish_is_the_frames_codecs_publish_and_ack_in_one_buffer() -> None:
    session = Heard().session
    data = session.publish("calc", b"body", REQUEST_PROPS, mandatory=True, ack=77)
    assert data == frames.publish_frames(CHANNEL, "calc", b"body", REQUEST_PROPS, mandatory=True,
                                         frame_max=FRAME_MAX) + frames.ack_frame(CHANNEL, 77)


def test_commands_are_the_frames_py_amqp_would_write() -> None:
    session = Heard().session
    assert session.ack(5) == written_by_py_amqp(CHANNEL, spec.Basic.Ack, "Lb", (5, False))
    assert session.reject(5, requeue=True) == written_by_py_amqp(
        CHANNEL, spec.Basic.Reject, "Lb", (5, True))
    assert session.cancel("amq.ctag-1") == written_by_py_amqp(
        CHANNEL, spec.Basic.Cancel, "sb", ("amq.ctag-1", False))
    assert session.declare_fanout("rpc.broadcast.calc") == written_by_py_amqp(
        CHANNEL, spec.Exchange.Declare, "BssbbbbbF",
        (0, "rpc.broadcast.calc", "fanout", False, True, False, False, True, {}))
    assert session.close() == written_by_py_amqp(0, spec.Connection.Close, "BsBB", (200, "bye", 0, 0))
    assert session.heartbeat() == bytes([8, 0, 0, 0, 0, 0, 0, 0xCE])


# -- properties against py-amqp's decoder --------------------------------------------------------

@pytest.mark.parametrize("props", [
    {},
    REQUEST_PROPS,
    {"content_type": "a", "content_encoding": "binary", "delivery_mode": 2, "priority": 9,
     "correlation_id": "c", "reply_to": "r", "expiration": "10", "message_id": "m",
     "timestamp": 1_700_000_000, "type": "rpc.reply", "user_id": "guest", "app_id": "host:1",
     "cluster_id": "x"},
    {"application_headers": {"s": "text", "d": 1.25, "i": 7, "big": -2**40, "t": True,
                             "f": False, "v": None, "u": "ünï"}},
    {"application_headers": {"dec": Decimal("1.5"), "arr": [1, "a"], "nested": {"k": 1.0},
                             "bytes": b"\xff\x00"}, "type": "t"},
], ids=["none", "request", "every-property", "common-table", "unusual-table"])
def test_properties_decode_as_py_amqp_decodes_them(props: dict[str, Any]) -> None:
    encoded = Message(b"", **props)._serialize_properties()
    expected, _ = decode_properties_basic(encoded, 0)
    if "application_headers" in expected:
        expected["headers"] = expected.pop("application_headers")
    assert frames.decode_properties(encoded, 0) == expected


def test_a_string_that_is_not_utf8_decodes_with_replacement_characters() -> None:
    encoded = frames.encode_properties({"correlation_id": "c", "type": "t"}).replace(b"\x01c", b"\x01\xff")
    assert frames.decode_properties(encoded, 0) == {"correlation_id": "\ufffd", "type": "t"}


def test_a_long_string_header_that_is_not_utf8_stays_bytes_as_in_py_amqp() -> None:
    table = b"k" + b"S" + (2).to_bytes(4, "big") + b"\xff\xfe"
    encoded = (0x2000).to_bytes(2, "big") + len(b"\x01" + table).to_bytes(4, "big") + b"\x01" + table
    assert frames.decode_properties(encoded, 0) == {"headers": {"k": b"\xff\xfe"}}


def test_undecodable_properties_deliver_the_message_without_them() -> None:
    data = bytearray(deliver(1, b"x", application_headers={"a": 1.0}))
    header_start = 8 + unpack_from(">I", data, 3)[0]
    data[header_start + 7 + 14 + 4 + 2] = ord("?")  # the value type of "a": not an AMQP type
    heard = Heard().feed(bytes(data))
    assert [(m.body, m.props) for m in heard.messages] == [(b"x", {})]


# -- heartbeats ------------------------------------------------------------------------------------

def test_a_heartbeat_is_due_half_an_interval_after_the_last_write() -> None:
    beat = Heartbeat(10.0, now=100.0)
    assert not beat.check(104.9)
    assert beat.check(105.0)
    beat.last_sent = 105.0
    assert beat.next_check(105.0) == pytest.approx(5.0)


def test_a_broker_silent_for_two_intervals_is_a_lost_connection() -> None:
    beat = Heartbeat(10.0, now=100.0)
    beat.last_sent = 119.0
    assert not beat.check(119.9)
    with pytest.raises(ConnectionLost, match="no data from the broker for 20.1 s"):
        beat.check(120.1)


def test_ticks_count_a_write_as_made_at_the_previous_tick() -> None:
    beat = Heartbeat(8.0, now=0.0)
    assert beat.tick(2.0, received=True, sent=False) == (False, 2.0)
    assert beat.tick(4.0, received=True, sent=True) == (False, 2.0)  # written after 2.0
    due, delay = beat.tick(6.0, received=True, sent=False)
    assert (due, delay) == (True, 2.0)  # 6.0 - 2.0 >= 4.0; the heartbeat counts as sent
    assert beat.last_sent == 6.0
    with pytest.raises(ConnectionLost):
        beat.tick(22.5, received=False, sent=True)


def test_next_check_never_spins() -> None:
    beat = Heartbeat(1.0, now=0.0)
    assert beat.next_check(10.0) == pytest.approx(0.05)
    assert not math.isnan(beat.next_check(0.0))


# -- helpers ---------------------------------------------------------------------------------------

def frame(kind: int, channel: int, payload: bytes) -> bytes:
    return bytes((kind,)) + channel.to_bytes(2, "big") + len(payload).to_bytes(4, "big") + \
        payload + b"\xce"


def frames_raw(data: bytes) -> list[bytes]:
    out, offset = [], 0
    while offset < len(data):
        size = unpack_from(">I", data, offset + 3)[0]
        out.append(data[offset:offset + 8 + size])
        offset += 8 + size
    return out


def split(data: bytes) -> list[tuple[int, int, bytes]]:
    return [(f[0], unpack_from(">H", f, 1)[0], f[7:-1]) for f in frames_raw(data)]


def split_end(data: bytes | bytearray) -> int:
    """The offset of the first frame's frame-end octet."""
    return 7 + int(unpack_from(">I", data, 3)[0])
