"""AMQP 0-9-1 frames for the per-call path: publish, ack, reject, and parsing deliveries (no I/O).

py-amqp opens the connection and declares; once consuming, the link writes and parses the few
frames a call needs itself, so that a publish (or a reply plus its ack) is one ``send`` and a
burst of deliveries is one ``recv``: py-amqp reads each frame in two or three small ``recv``
calls, which is most of its per-call cost.
"""

from __future__ import annotations

from struct import Struct
from typing import Any

from amqp.serialization import decode_properties_basic, dumps

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = 0xCE
FRAME_OVERHEAD = 8  # 7-byte header + frame-end octet

BASIC = 60
BASIC_QOS, BASIC_CONSUME, BASIC_CANCEL, BASIC_CANCEL_OK = 10, 20, 30, 31
BASIC_PUBLISH, BASIC_RETURN, BASIC_DELIVER = 40, 50, 60
BASIC_ACK, BASIC_REJECT, BASIC_NACK = 80, 90, 120
CHANNEL, CHANNEL_OPEN, CHANNEL_OPEN_OK, CHANNEL_CLOSE, CHANNEL_CLOSE_OK = 20, 10, 11, 40, 41
QUEUE, QUEUE_DECLARE, QUEUE_DECLARE_OK = 50, 10, 11
CONNECTION, CONNECTION_CLOSE, CONNECTION_CLOSE_OK = 10, 50, 51
CONNECTION_BLOCKED, CONNECTION_UNBLOCKED = 60, 61

FRAME_HEADER_STRUCT = Struct(">BHI")
_METHOD_ID = Struct(">HH")
_ACK = Struct(">BHIHHQBB")
_SHORT = Struct(">H")
_DELIVERY_TAG = Struct(">QB")
_COUNTS = Struct(">II")
_HEARTBEAT = bytes([FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END])

# Property flags, in the order their values follow the flags on the wire.
_F_CONTENT_TYPE = 1 << 15
_F_HEADERS = 1 << 13
_F_DELIVERY_MODE = 1 << 12
_F_CORRELATION_ID = 1 << 10
_F_REPLY_TO = 1 << 9
_F_EXPIRATION = 1 << 8
_F_MESSAGE_ID = 1 << 7
_F_TYPE = 1 << 5
_F_USER_ID = 1 << 4
_F_APP_ID = 1 << 3
EXCHANGE, EXCHANGE_DECLARE = 40, 10


def shortstr(value: str) -> bytes:
    """An AMQP short string: a length octet and at most 255 bytes of UTF-8."""
    raw = value.encode()
    if len(raw) > 255:
        raise ValueError(f"AMQP short string longer than 255 bytes: {value[:40]!r}...")
    return bytes((len(raw),)) + raw


def encode_properties(props: dict[str, Any]) -> bytes:
    """Property flags and values for the properties the protocol uses."""
    flags = 0
    parts: list[bytes] = []
    value = props.get("content_type")
    if value is not None:
        flags |= _F_CONTENT_TYPE
        parts.append(shortstr(value))
    value = props.get("headers")
    if value:
        flags |= _F_HEADERS
        parts.append(encode_table(value))
    value = props.get("delivery_mode")
    if value is not None:
        flags |= _F_DELIVERY_MODE
        parts.append(bytes((value,)))
    value = props.get("correlation_id")
    if value is not None:
        flags |= _F_CORRELATION_ID
        parts.append(shortstr(value))
    value = props.get("reply_to")
    if value is not None:
        flags |= _F_REPLY_TO
        parts.append(shortstr(value))
    value = props.get("expiration")
    if value is not None:
        flags |= _F_EXPIRATION
        parts.append(shortstr(value))
    value = props.get("message_id")
    if value is not None:
        flags |= _F_MESSAGE_ID
        parts.append(shortstr(value))
    value = props.get("type")
    if value is not None:
        flags |= _F_TYPE
        parts.append(shortstr(value))
    value = props.get("user_id")
    if value is not None:
        flags |= _F_USER_ID
        parts.append(shortstr(value))
    value = props.get("app_id")
    if value is not None:
        flags |= _F_APP_ID
        parts.append(shortstr(value))
    return _SHORT.pack(flags) + b"".join(parts)


_DOUBLE = Struct(">d")
_LONG = Struct(">I")


def encode_table(table: dict[str, Any]) -> bytes:
    """An AMQP field table; string keys with float or string values are encoded here directly
    (the deadline header of every call), anything else by py-amqp."""
    parts = []
    for key, value in table.items():
        if type(value) is float:
            parts.append(shortstr(key) + b"d" + _DOUBLE.pack(value))
        elif type(value) is str:
            raw = value.encode()
            parts.append(shortstr(key) + b"S" + _LONG.pack(len(raw)) + raw)
        else:
            return bytes(dumps("F", [table]))
    body = b"".join(parts)
    return _LONG.pack(len(body)) + body


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return FRAME_HEADER_STRUCT.pack(kind, channel, len(payload)) + payload + b"\xce"


def publish_frames(
    channel: int,
    routing_key: str,
    body: bytes,
    props: dict[str, Any],
    *,
    mandatory: bool,
    frame_max: int,
    exchange: str = "",
) -> bytes:
    """The method, header and body frames of one ``basic.publish``, as one buffer."""
    method = (
        _METHOD_ID.pack(BASIC, BASIC_PUBLISH) + b"\x00\x00" + shortstr(exchange)
        + shortstr(routing_key) + (b"\x01" if mandatory else b"\x00")
    )
    header = _METHOD_ID.pack(BASIC, 0) + len(body).to_bytes(8, "big") + encode_properties(props)
    out = [_frame(FRAME_METHOD, channel, method), _frame(FRAME_HEADER, channel, header)]
    chunk = frame_max - FRAME_OVERHEAD
    view = memoryview(body)
    for start in range(0, len(body), chunk):
        part = view[start:start + chunk]
        out.append(FRAME_HEADER_STRUCT.pack(FRAME_BODY, channel, len(part)))
        out.append(bytes(part))
        out.append(b"\xce")
    return b"".join(out)


def declare_fanout_frame(channel: int, exchange: str) -> bytes:
    """An ``exchange.declare`` of a durable fanout exchange, without waiting for the answer."""
    nowait_durable = (1 << 4) | (1 << 1)
    args = b"\x00\x00" + shortstr(exchange) + shortstr("fanout") + bytes((nowait_durable,))
    return method_frame(channel, EXCHANGE, EXCHANGE_DECLARE, args + b"\x00\x00\x00\x00")


def passive_declare_frame(channel: int, queue: str) -> bytes:
    """A passive ``queue.declare``: the broker answers with the queue's message and consumer
    counts, or closes the channel with 404 when there is no such queue."""
    passive = 1
    args = b"\x00\x00" + shortstr(queue) + bytes((passive,)) + b"\x00\x00\x00\x00"
    return method_frame(channel, QUEUE, QUEUE_DECLARE, args)


def channel_open_frame(channel: int) -> bytes:
    """A ``channel.open`` (to reopen a channel the broker closed)."""
    return method_frame(channel, CHANNEL, CHANNEL_OPEN, b"\x00")


def parse_declare_ok(payload: bytes) -> tuple[str, int, int]:
    """``queue.declare-ok`` arguments: queue name, message count, consumer count."""
    name, offset = read_shortstr(payload, 4)
    messages, consumers = _COUNTS.unpack_from(payload, offset)
    return name, messages, consumers


def ack_frame(channel: int, delivery_tag: int) -> bytes:
    """A ``basic.ack`` of one delivery."""
    return _ACK.pack(FRAME_METHOD, channel, 13, BASIC, BASIC_ACK, delivery_tag, 0, FRAME_END)


def reject_frame(channel: int, delivery_tag: int, requeue: bool) -> bytes:
    """A ``basic.reject`` of one delivery."""
    return _ACK.pack(
        FRAME_METHOD, channel, 13, BASIC, BASIC_REJECT, delivery_tag, int(requeue), FRAME_END
    )


def heartbeat_frame() -> bytes:
    """A heartbeat frame."""
    return _HEARTBEAT


def method_frame(channel: int, class_id: int, method_id: int, args: bytes = b"") -> bytes:
    """Any method frame, from its already encoded arguments."""
    return _frame(FRAME_METHOD, channel, _METHOD_ID.pack(class_id, method_id) + args)


def read_shortstr(buf: bytes, offset: int) -> tuple[str, int]:
    """A short string at ``offset`` and the offset after it."""
    length = buf[offset]
    end = offset + 1 + length
    return buf[offset + 1:end].decode("utf-8", "replace"), end


def parse_deliver(payload: bytes) -> tuple[str, int, bool, str, str]:
    """``basic.deliver`` arguments: consumer tag, delivery tag, redelivered, exchange, key."""
    tag, offset = read_shortstr(payload, 4)
    delivery_tag, bits = _DELIVERY_TAG.unpack_from(payload, offset)
    exchange, offset = read_shortstr(payload, offset + 9)
    routing_key, _ = read_shortstr(payload, offset)
    return tag, delivery_tag, bool(bits & 1), exchange, routing_key


def parse_return(payload: bytes) -> tuple[int, str, str, str]:
    """``basic.return`` arguments: reply code, reply text, exchange, routing key."""
    (code,) = _SHORT.unpack_from(payload, 4)
    text, offset = read_shortstr(payload, 6)
    exchange, offset = read_shortstr(payload, offset)
    routing_key, _ = read_shortstr(payload, offset)
    return code, text, exchange, routing_key


def parse_confirm(payload: bytes) -> tuple[int, bool]:
    """``basic.ack`` / ``basic.nack`` arguments: delivery tag and the multiple flag."""
    delivery_tag, bits = _DELIVERY_TAG.unpack_from(payload, 4)
    return delivery_tag, bool(bits & 1)


def parse_close(payload: bytes) -> tuple[int, str]:
    """``channel.close`` / ``connection.close`` arguments: reply code and text."""
    (code,) = _SHORT.unpack_from(payload, 4)
    text, _ = read_shortstr(payload, 6)
    return code, text


def parse_content_header(payload: bytes) -> tuple[int, dict[str, Any]]:
    """A content header's body size and properties."""
    body_size = int.from_bytes(payload[4:12], "big")
    props, _ = decode_properties_basic(payload, 12)
    if "application_headers" in props:  # py-amqp's name for the headers table
        props["headers"] = props.pop("application_headers")
    return body_size, props


def method_id(payload: bytes) -> tuple[int, int]:
    """The class and method ids that open a method frame's payload."""
    return _METHOD_ID.unpack_from(payload, 0)
