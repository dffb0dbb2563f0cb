"""rpc.core.frames: the AMQP 0-9-1 frames of the per-call path, checked against py-amqp's own codec."""

from __future__ import annotations

import types
from struct import pack, unpack_from
from typing import Any

import pytest
from amqp import spec
from amqp.basic_message import Message
from amqp.method_framing import frame_writer
from amqp.serialization import decode_properties_basic, dumps, loads

from rpc.core import frames
from rpc.core.frames import (
    FRAME_BODY,
    FRAME_END,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    ack_frame,
    encode_properties,
    heartbeat_frame,
    method_frame,
    parse_close,
    parse_return,
    publish_frames,
    read_shortstr,
    reject_frame,
    shortstr,
)

FRAME_MAX = 131_072

REQUEST_PROPS: dict[str, Any] = {
    "content_type": "application/x-msgpack",
    "correlation_id": "4f2a9c1e.1f",
    "reply_to": "amq.rabbitmq.reply-to.g1h2AA5yZXBseUAyNzM2NjQ4NwAAIWsAAAAAXZ7eDw==",
    "expiration": "2500",
    "headers": {"rpc-deadline": 1_700_000_002.123456},
}

# frames' property names -> py-amqp's
PY_AMQP_NAMES = {"headers": "application_headers"}


def split_frames(data: bytes) -> list[tuple[int, int, bytes]]:
    """Split a buffer into (type, channel, payload), checking sizes and frame-end octets."""
    out = []
    offset = 0
    while offset < len(data):
        kind, channel, size = unpack_from(">BHI", data, offset)
        payload = data[offset + 7:offset + 7 + size]
        assert len(payload) == size, "truncated frame"
        assert data[offset + 7 + size] == FRAME_END, "missing frame-end octet"
        out.append((kind, channel, bytes(payload)))
        offset += 8 + size
    return out


def py_amqp_publish(
    channel: int, routing_key: str, body: bytes, props: dict[str, Any], *, mandatory: bool,
    frame_max: int, exchange: str = "",
) -> bytes:
    """The bytes py-amqp itself writes for the same basic.publish."""
    written = bytearray()
    transport = types.SimpleNamespace(write=lambda data: written.extend(bytes(data)))
    connection = types.SimpleNamespace(frame_max=frame_max, bytes_sent=0)
    write_frame = frame_writer(connection, transport)
    args = dumps("Bssbb", (0, exchange, routing_key, mandatory, False))
    message = Message(body, **{PY_AMQP_NAMES.get(k, k): v for k, v in props.items()})
    write_frame(FRAME_METHOD, channel, spec.Basic.Publish, args, message)
    return bytes(written)


def method_id(payload: bytes) -> tuple[int, int]:
    """The class and method ids that open a method frame's payload."""
    return unpack_from(">HH", payload)


def parse_content_header(payload: bytes) -> tuple[int, dict[str, Any]]:
    """A content header's body size and properties, as the session reads them."""
    return int.from_bytes(payload[4:12], "big"), frames.decode_properties(payload, 12)


def decoded_props(props: dict[str, Any]) -> dict[str, Any]:
    properties, end = decode_properties_basic(encode_properties(props), 0)
    assert end == len(encode_properties(props))
    return properties


# -- publish ---------------------------------------------------------------------------------------

def test_publish_is_a_method_a_header_and_a_body_frame() -> None:
    data = publish_frames(1, "calc", b"payload", REQUEST_PROPS, mandatory=True,
                          frame_max=FRAME_MAX)
    assert [(kind, channel) for kind, channel, _ in split_frames(data)] == [
        (FRAME_METHOD, 1), (FRAME_HEADER, 1), (FRAME_BODY, 1)]


def test_publish_method_frame_decodes_as_basic_publish() -> None:
    data = publish_frames(3, "calc", b"x", {}, mandatory=True, frame_max=FRAME_MAX)
    _, _, payload = split_frames(data)[0]
    assert method_id(payload) == spec.Basic.Publish
    assert loads("Bssbb", payload, 4)[0] == [0, "", "calc", True, False]


def test_publish_without_mandatory_clears_the_bit() -> None:
    data = publish_frames(1, "amq.gen-abc", b"x", {}, mandatory=False, frame_max=FRAME_MAX)
    assert loads("Bssbb", split_frames(data)[0][2], 4)[0] == [0, "", "amq.gen-abc", False, False]


def test_publish_to_a_named_exchange() -> None:
    data = publish_frames(1, "key", b"x", {}, mandatory=False, frame_max=FRAME_MAX,
                          exchange="amq.direct")
    assert loads("Bssbb", split_frames(data)[0][2], 4)[0][1:3] == ["amq.direct", "key"]


def test_publish_header_frame_carries_the_body_size_and_properties() -> None:
    body = b"b" * 1234
    data = publish_frames(1, "calc", body, REQUEST_PROPS, mandatory=True, frame_max=FRAME_MAX)
    _, _, header = split_frames(data)[1]
    assert unpack_from(">HH", header, 0) == (60, 0)  # class basic, weight 0
    size, props = parse_content_header(header)
    assert size == 1234
    assert props == REQUEST_PROPS


def test_publish_body_frame_carries_the_body() -> None:
    data = publish_frames(1, "calc", b"\x00body\xce", {}, mandatory=True, frame_max=FRAME_MAX)
    assert split_frames(data)[2][2] == b"\x00body\xce"


@pytest.mark.parametrize("mandatory", [True, False])
@pytest.mark.parametrize("props", [
    {},
    REQUEST_PROPS,
    {"content_type": "application/json", "correlation_id": "c", "type": "rpc.reply",
     "delivery_mode": 2},
], ids=["none", "request", "reply"])
def test_publish_frames_are_byte_identical_to_py_amqps(
    mandatory: bool, props: dict[str, Any],
) -> None:
    body = b'{"method": "add", "args": [2, 3], "kwargs": {}}'
    ours = publish_frames(5, "calc", body, props, mandatory=mandatory, frame_max=FRAME_MAX)
    assert ours == py_amqp_publish(5, "calc", body, props, mandatory=mandatory,
                                   frame_max=FRAME_MAX)


def test_a_large_body_is_split_at_frame_max() -> None:
    body = bytes(range(256)) * 40  # 10,240 bytes
    data = publish_frames(1, "calc", body, {}, mandatory=True, frame_max=4096)
    parts = split_frames(data)[2:]
    assert [len(p) for _, _, p in parts] == [4088, 4088, 2064]
    assert all(kind == FRAME_BODY and channel == 1 for kind, channel, _ in parts)
    assert b"".join(p for _, _, p in parts) == body
    assert all(8 + len(p) <= 4096 for _, _, p in split_frames(data))


def test_a_large_body_is_split_byte_identically_to_py_amqp() -> None:
    body = bytes(range(256)) * 40
    assert publish_frames(1, "calc", body, REQUEST_PROPS, mandatory=True, frame_max=4096) == (
        py_amqp_publish(1, "calc", body, REQUEST_PROPS, mandatory=True, frame_max=4096))


def test_a_body_of_exactly_one_frame_is_not_split() -> None:
    data = publish_frames(1, "calc", b"x" * 4088, {}, mandatory=True, frame_max=4096)
    assert [len(p) for _, _, p in split_frames(data)[2:]] == [4088]


def test_a_body_one_byte_over_a_frame_is_split_in_two() -> None:
    data = publish_frames(1, "calc", b"x" * 4089, {}, mandatory=True, frame_max=4096)
    assert [len(p) for _, _, p in split_frames(data)[2:]] == [4088, 1]


@pytest.mark.parametrize("body", [b"", b"payload", bytes(range(256)) * 40])
def test_a_publish_with_an_ack_is_the_publish_then_the_ack_frame(body: bytes) -> None:
    alone = publish_frames(1, "amq.gen-abc", body, REQUEST_PROPS, mandatory=False, frame_max=4096)
    assert publish_frames(1, "amq.gen-abc", body, REQUEST_PROPS, mandatory=False, frame_max=4096,
                          ack=2**40 + 3) == alone + ack_frame(1, 2**40 + 3)


def test_an_empty_body_sends_no_body_frame() -> None:
    data = publish_frames(1, "calc", b"", {}, mandatory=True, frame_max=FRAME_MAX)
    kinds = [kind for kind, _, _ in split_frames(data)]
    assert kinds == [FRAME_METHOD, FRAME_HEADER]
    assert parse_content_header(split_frames(data)[1][2])[0] == 0
    assert data == py_amqp_publish(1, "calc", b"", {}, mandatory=True, frame_max=FRAME_MAX)


def test_a_routing_key_of_255_bytes_is_accepted() -> None:
    key = "é" * 127 + "k"  # 255 bytes of UTF-8
    data = publish_frames(1, key, b"x", {}, mandatory=True, frame_max=FRAME_MAX)
    assert loads("Bssbb", split_frames(data)[0][2], 4)[0][2] == key


def test_a_routing_key_over_255_bytes_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="255"):
        publish_frames(1, "é" * 128, b"x", {}, mandatory=True, frame_max=FRAME_MAX)


# -- properties ------------------------------------------------------------------------------------

def test_properties_round_trip_through_py_amqps_decoder() -> None:
    props = {
        "content_type": "application/json", "headers": {"rpc-deadline": 1_700_000_000.987654,
                                                        "other": "x", "n": 5},
        "delivery_mode": 2, "correlation_id": "cid-1", "reply_to": "amq.gen-abc",
        "expiration": "1000", "message_id": "mid", "type": "rpc.reply", "user_id": "guest",
    }
    assert decoded_props(props) == {PY_AMQP_NAMES.get(k, k): v for k, v in props.items()}


def test_a_float_deadline_header_comes_back_exactly() -> None:
    deadline = 1_700_000_000.123456789
    headers = decoded_props({"headers": {"rpc-deadline": deadline}})["application_headers"]
    assert headers["rpc-deadline"] == deadline
    assert isinstance(headers["rpc-deadline"], float)


def test_no_properties_is_an_empty_flag_word() -> None:
    assert encode_properties({}) == b"\x00\x00"


def test_none_values_are_left_out() -> None:
    assert encode_properties({"content_type": None, "correlation_id": None, "headers": None}) == (
        b"\x00\x00")


def test_empty_headers_are_left_out() -> None:
    assert decoded_props({"headers": {}, "content_type": "a"}) == {"content_type": "a"}


@pytest.mark.parametrize("name, flag", [
    ("content_type", 0x8000), ("correlation_id", 0x0400), ("reply_to", 0x0200),
    ("expiration", 0x0100), ("message_id", 0x0080), ("type", 0x0020), ("user_id", 0x0010),
])
def test_each_property_sets_its_flag(name: str, flag: int) -> None:
    encoded = encode_properties({name: "v"})
    assert encoded == pack(">H", flag) + b"\x01v"


@pytest.mark.parametrize("value", [{1, 2}, object(), [object()], {5: "five"}])
def test_a_header_value_a_field_table_has_no_encoding_for_is_a_type_error(value: Any) -> None:
    with pytest.raises(TypeError, match="AMQP header"):
        encode_properties({"headers": {"k": value}})


@pytest.mark.parametrize("headers", [{"k": 2**70}, {"k" * 256: 1}, {"k": {"k" * 256: 1}}])
def test_a_header_integer_outside_64_bits_or_key_over_255_bytes_is_a_value_error(
        headers: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="integer outside 64 bits or a key over 255 bytes"):
        encode_properties({"headers": headers})


def test_properties_too_large_for_one_frame_are_a_value_error_and_just_fitting_ones_are_not(
) -> None:
    fits = FRAME_MAX - 8 - 12 - len(encode_properties({"headers": {"k": ""}}))
    publish_frames(1, "q", b"x", {"headers": {"k": "x" * fits}}, mandatory=True,
                   frame_max=FRAME_MAX)
    with pytest.raises(ValueError, match="do not fit in one AMQP frame"):
        publish_frames(1, "q", b"x", {"headers": {"k": "x" * (fits + 1)}}, mandatory=True,
                       frame_max=FRAME_MAX)


def test_a_property_over_255_bytes_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        encode_properties({"correlation_id": "c" * 256})


@pytest.mark.parametrize("name", ["content_type", "type", "app_id"])
def test_a_repeated_property_encodes_alike_each_time_and_over_255_bytes_is_a_value_error(
    name: str,
) -> None:
    first = encode_properties({name: "é-v"})
    assert encode_properties({name: "é-v"}) == first
    assert first[2:] == shortstr("é-v")
    with pytest.raises(ValueError, match="255"):
        encode_properties({name: "x" * 256})


# -- ack, reject, heartbeat, any method ------------------------------------------------------------

@pytest.mark.parametrize("tag", [1, 2**32 + 7, 2**64 - 1])
def test_ack_frame_is_basic_ack_of_one_delivery(tag: int) -> None:
    ((kind, channel, payload),) = split_frames(ack_frame(7, tag))
    assert (kind, channel) == (FRAME_METHOD, 7)
    assert method_id(payload) == spec.Basic.Ack
    assert loads("Lb", payload, 4)[0] == [tag, False]  # delivery tag, not multiple


@pytest.mark.parametrize("requeue", [True, False])
def test_reject_frame_is_basic_reject_with_the_requeue_bit(requeue: bool) -> None:
    ((kind, channel, payload),) = split_frames(reject_frame(2, 99, requeue))
    assert (kind, channel) == (FRAME_METHOD, 2)
    assert method_id(payload) == spec.Basic.Reject
    assert loads("Lb", payload, 4)[0] == [99, requeue]


def test_ack_and_reject_frames_are_byte_identical_to_py_amqps() -> None:
    def written(method_sig: tuple[int, int], args: bytes) -> bytes:
        out = bytearray()
        transport = types.SimpleNamespace(write=lambda data: out.extend(bytes(data)))
        write_frame = frame_writer(types.SimpleNamespace(frame_max=FRAME_MAX, bytes_sent=0),
                                   transport)
        write_frame(FRAME_METHOD, 4, method_sig, args, None)
        return bytes(out)

    assert ack_frame(4, 12345) == written(spec.Basic.Ack, dumps("Lb", (12345, False)))
    assert reject_frame(4, 12345, True) == written(spec.Basic.Reject, dumps("Lb", (12345, True)))
    assert reject_frame(4, 12345, False) == written(spec.Basic.Reject,
                                                    dumps("Lb", (12345, False)))


def test_heartbeat_frame_is_an_empty_frame_of_type_8_on_channel_0() -> None:
    assert heartbeat_frame() == bytes([FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END])


def test_method_frame_wraps_class_method_and_arguments() -> None:
    args = dumps("BsBB", (200, "bye", 0, 0))
    ((kind, channel, payload),) = split_frames(method_frame(0, 10, 50, args))
    assert (kind, channel) == (FRAME_METHOD, 0)
    assert method_id(payload) == spec.Connection.Close
    assert payload[4:] == args


def test_method_frame_without_arguments() -> None:
    ((_, _, payload),) = split_frames(method_frame(1, 20, 41))
    assert payload == pack(">HH", 20, 41)


# -- parsing what the broker sends -----------------------------------------------------------------

def test_parse_return_reads_py_amqps_encoding() -> None:
    payload = pack(">HH", *spec.Basic.Return) + dumps(
        "Bsss", (312, "NO_ROUTE", "", "no-such-server"))
    assert parse_return(payload) == (312, "NO_ROUTE", "", "no-such-server")


@pytest.mark.parametrize("method_sig", [spec.Channel.Close, spec.Connection.Close])
def test_parse_close_reads_code_and_text(method_sig: tuple[int, int]) -> None:
    payload = pack(">HH", *method_sig) + dumps(
        "BsBB", (406, "PRECONDITION_FAILED - unknown delivery tag 1", 60, 80))
    assert parse_close(payload) == (406, "PRECONDITION_FAILED - unknown delivery tag 1")


def test_parse_content_header_reads_py_amqps_encoding_with_headers_named_headers() -> None:
    message = Message(b"", content_type="application/json", correlation_id="c1",
                      application_headers={"rpc-deadline": 12.5}, type="rpc.reply")
    payload = pack(">HHQ", 60, 0, 77) + message._serialize_properties()
    assert parse_content_header(payload) == (77, {
        "content_type": "application/json", "correlation_id": "c1",
        "headers": {"rpc-deadline": 12.5}, "type": "rpc.reply"})


def test_parse_content_header_reads_what_encode_properties_writes() -> None:
    props = {"content_type": "application/x-msgpack", "headers": {"rpc-deadline": 1.25},
             "correlation_id": "c", "reply_to": "amq.gen-x", "expiration": "5", "type": "t"}
    assert parse_content_header(pack(">HHQ", 60, 0, 3) + encode_properties(props)) == (3, props)


def test_method_id_reads_class_and_method() -> None:
    assert method_id(ack_frame(1, 1)[7:]) == (60, 80)


# -- short strings ---------------------------------------------------------------------------------

def test_shortstr_is_a_length_octet_and_utf8() -> None:
    assert shortstr("") == b"\x00"
    assert shortstr("calc") == b"\x04calc"
    assert shortstr("é") == b"\x02\xc3\xa9"


def test_shortstr_accepts_255_bytes() -> None:
    assert shortstr("a" * 255) == b"\xff" + b"a" * 255


@pytest.mark.parametrize("value", ["a" * 256, "é" * 128, "€" * 86],
                         ids=["ascii", "2-byte", "3-byte"])
def test_shortstr_over_255_bytes_is_a_value_error(value: str) -> None:
    with pytest.raises(ValueError):
        shortstr(value)


def test_shortstr_matches_py_amqps() -> None:
    for value in ("", "calc", "ünï", "x" * 255):
        assert shortstr(value) == dumps("s", (value,))


def test_read_shortstr_returns_the_string_and_the_next_offset() -> None:
    buf = b"xx" + shortstr("calc") + b"rest"
    assert read_shortstr(buf, 2) == ("calc", 7)


def test_read_shortstr_replaces_invalid_utf8() -> None:
    assert read_shortstr(b"\x02\xff\xfe", 0) == ("\ufffd\ufffd", 3)


def test_frame_constants_match_the_amqp_spec() -> None:
    assert (frames.BASIC, frames.BASIC_PUBLISH) == spec.Basic.Publish
    assert (frames.BASIC, frames.BASIC_DELIVER) == spec.Basic.Deliver
    assert (frames.BASIC, frames.BASIC_RETURN) == spec.Basic.Return
    assert (frames.BASIC, frames.BASIC_ACK) == spec.Basic.Ack
    assert (frames.BASIC, frames.BASIC_REJECT) == spec.Basic.Reject
    assert (frames.BASIC, frames.BASIC_NACK) == spec.Basic.Nack
    assert (frames.BASIC, frames.BASIC_QOS) == spec.Basic.Qos
    assert (frames.BASIC, frames.BASIC_CONSUME) == spec.Basic.Consume
    assert (frames.BASIC, frames.BASIC_CANCEL) == spec.Basic.Cancel
    assert (frames.BASIC, frames.BASIC_CANCEL_OK) == spec.Basic.CancelOk
    assert (frames.CHANNEL, frames.CHANNEL_CLOSE) == spec.Channel.Close
    assert (frames.CHANNEL, frames.CHANNEL_CLOSE_OK) == spec.Channel.CloseOk
    assert (frames.CONNECTION, frames.CONNECTION_CLOSE) == spec.Connection.Close
    assert (frames.CONNECTION, frames.CONNECTION_CLOSE_OK) == spec.Connection.CloseOk
    assert (frames.CONNECTION, frames.CONNECTION_BLOCKED) == spec.Connection.Blocked
    assert (frames.CONNECTION, frames.CONNECTION_UNBLOCKED) == spec.Connection.Unblocked


# -- queue inspection --------------------------------------------------------------------------------

def test_a_passive_declare_carries_the_arguments_py_amqp_would_send() -> None:
    frame = frames.passive_declare_frame(7, "calc")
    kind, channel, size = unpack_from(">BHI", frame)
    assert (kind, channel) == (frames.FRAME_METHOD, 7)
    payload = frame[7:7 + size]
    assert unpack_from(">HH", payload) == spec.Queue.Declare
    expected = dumps("Bsbbbbb", (0, "calc", True, False, False, False, False)) + dumps("F", [{}])
    assert payload[4:] == expected


def test_a_declare_ok_gives_the_message_and_consumer_counts() -> None:
    payload = pack(">HH", *spec.Queue.DeclareOk) + dumps("sll", ("calc", 12, 3))
    assert frames.parse_declare_ok(payload) == ("calc", 12, 3)


def test_a_channel_open_frame_is_what_py_amqp_sends() -> None:
    frame = frames.channel_open_frame(3)
    assert frame[7:-1] == pack(">HH", *spec.Channel.Open) + dumps("s", ("",))


def test_the_confirm_mark_is_one_byte_over_a_lone_confirm_frame() -> None:
    # basic.ack has the same layout both ways: the broker's confirm is as long as our ack.
    assert frames.CONFIRM_MARK == len(frames.ack_frame(1, 2**64 - 1)) + 1
