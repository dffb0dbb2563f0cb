"""AMQP 0-9-1 frames for the per-call path, as a codec: values in, bytes out, and back (no I/O).

py-amqp opens the connection and declares; once consuming, the link writes and parses the few
frames a call needs itself (:class:`rpc.core.session.Session` holds the state), so that a publish
(or a reply plus its ack) is one ``send`` and a burst of deliveries is one ``recv``: py-amqp
reads each frame in two or three small ``recv`` calls, which is most of its per-call cost.

Content properties are decoded here too, for every property of ``basic``; a header table holding
a type other than the common ones (strings, floats, integers, booleans) is handed to py-amqp's
decoder, so an unusual table decodes exactly as py-amqp would.
"""

from __future__ import annotations

import struct
from struct import Struct
from typing import Any

from amqp.exceptions import FrameSyntaxError
from amqp.serialization import dumps, loads

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = 0xCE
FRAME_OVERHEAD = 8  # 7-byte header + frame-end octet
#: The receive low-water mark that holds back a lone publisher confirm: one byte more than a
#: ``basic.ack`` or ``basic.nack`` frame (header, class and method, delivery tag, flags, end), so
#: a call's confirm comes with the reply that follows it, in one wake-up.
CONFIRM_MARK = FRAME_OVERHEAD + 4 + 8 + 1 + 1

CONNECTION, CONNECTION_CLOSE, CONNECTION_CLOSE_OK = 10, 50, 51
CONNECTION_BLOCKED, CONNECTION_UNBLOCKED = 60, 61
CHANNEL, CHANNEL_OPEN, CHANNEL_CLOSE, CHANNEL_CLOSE_OK = 20, 10, 40, 41
EXCHANGE, EXCHANGE_DECLARE = 40, 10
QUEUE, QUEUE_DECLARE, QUEUE_DECLARE_OK = 50, 10, 11
BASIC = 60
BASIC_QOS, BASIC_CONSUME, BASIC_CANCEL, BASIC_CANCEL_OK = 10, 20, 30, 31
BASIC_PUBLISH, BASIC_RETURN, BASIC_DELIVER = 40, 50, 60
BASIC_ACK, BASIC_REJECT, BASIC_NACK = 80, 90, 120


def method_key(class_id: int, method_id: int) -> int:
    """A method's class and method ids as the one 32-bit number that opens its frame payload."""
    return class_id << 16 | method_id


FRAME_HEADER_STRUCT = Struct(">BHI")
#: The first four bytes of a method payload, read as one number (see :func:`method_key`).
METHOD_KEY = Struct(">I")
_METHOD_ID = Struct(">HH")
_ACK = Struct(">BHIHHQBB")
_SHORT = Struct(">H")
_LONG = Struct(">I")
_SIGNED_LONG = Struct(">i")
_LONGLONG = Struct(">q")
_ULONGLONG = Struct(">Q")
_DOUBLE = Struct(">d")
#: A delivery tag and the bit octet after it (redelivered, or the multiple flag of a confirm).
DELIVERY_TAG = Struct(">QB")
#: A content header's body size, after its class id and weight.
BODY_SIZE = Struct(">Q")
_COUNTS = Struct(">II")
_HEARTBEAT = bytes([FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END])

# Property flags, in the order their values follow the flags on the wire.
_F_CONTENT_TYPE = 1 << 15
_F_CONTENT_ENCODING = 1 << 14
_F_HEADERS = 1 << 13
_F_DELIVERY_MODE = 1 << 12
_F_PRIORITY = 1 << 11
_F_CORRELATION_ID = 1 << 10
_F_REPLY_TO = 1 << 9
_F_EXPIRATION = 1 << 8
_F_MESSAGE_ID = 1 << 7
_F_TIMESTAMP = 1 << 6
_F_TYPE = 1 << 5
_F_USER_ID = 1 << 4
_F_APP_ID = 1 << 3
_F_CLUSTER_ID = 1 << 2


# -- encoding ----------------------------------------------------------------------------------

def shortstr(value: str) -> bytes:
    """An AMQP short string: a length octet and at most 255 bytes of UTF-8."""
    raw = value.encode()
    if len(raw) > 255:
        raise ValueError(f"AMQP short string longer than 255 bytes: {value[:40]!r}...")
    return _LENGTH[len(raw)] + raw


#: The length octet of a short string, by length (indexing is cheaper than a call).
_LENGTH = tuple(bytes((n,)) for n in range(256))


def encode_properties(props: dict[str, Any]) -> bytes:
    """Property flags and values for the properties the protocol uses.

    Those are ``content_type``, ``headers``, ``delivery_mode``, ``correlation_id``,
    ``reply_to``, ``expiration``, ``message_id``, ``type``, ``user_id`` and ``app_id``; None
    values and empty headers are left out.

    Raises:
        ValueError: a string property is over 255 bytes of UTF-8.
    """
    flags = 0
    parts: list[bytes] = []
    length = _LENGTH
    repeated = _REPEATED
    try:
        value = props.get("content_type")
        if value is not None:
            flags |= _F_CONTENT_TYPE
            parts.append(repeated.get(value) or _repeated(value))
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
            raw = value.encode()
            parts.append(length[len(raw)] + raw)
        value = props.get("reply_to")
        if value is not None:
            flags |= _F_REPLY_TO
            parts.append(repeated.get(value) or _repeated(value))
        value = props.get("expiration")
        if value is not None:
            flags |= _F_EXPIRATION
            parts.append(repeated.get(value) or _repeated(value))
        value = props.get("message_id")
        if value is not None:
            flags |= _F_MESSAGE_ID
            raw = value.encode()
            parts.append(length[len(raw)] + raw)
        value = props.get("type")
        if value is not None:
            flags |= _F_TYPE
            parts.append(repeated.get(value) or _repeated(value))
        value = props.get("user_id")
        if value is not None:
            flags |= _F_USER_ID
            raw = value.encode()
            parts.append(length[len(raw)] + raw)
        value = props.get("app_id")
        if value is not None:
            flags |= _F_APP_ID
            parts.append(repeated.get(value) or _repeated(value))
    except IndexError:
        raise ValueError(f"AMQP short string property longer than 255 bytes: {value!r:.60}") from None
    return _SHORT.pack(flags) + b"".join(parts)


#: Encoded short strings that repeat from message to message, by value: the properties
#: ``content_type``, ``reply_to``, ``expiration``, ``type`` and ``app_id``, and table keys.
_REPEATED: dict[str, bytes] = {}


def _repeated(value: str) -> bytes:
    """``value`` as a short string, remembered in :data:`_REPEATED`.

    Raises:
        ValueError: it is over 255 bytes of UTF-8.
    """
    encoded = shortstr(value)
    if len(_REPEATED) >= 1024:  # an application's own types and ids are few
        _REPEATED.clear()
    _REPEATED[value] = encoded
    return encoded


def encode_table(table: dict[str, Any]) -> bytes:
    """An AMQP field table; string keys with float or string values are encoded here directly
    (the deadline header of every call), anything else by py-amqp.

    Raises:
        TypeError: a value of a type a field table has no encoding for (a set, an object), or
            a map with keys that are not strings.
        ValueError: an integer outside 64 bits, or a key over 255 bytes.
    """
    parts = []
    for key, value in table.items():
        if type(value) is float:
            parts.append((_REPEATED.get(key) or _repeated(key)) + b"d" + _DOUBLE.pack(value))
        elif type(value) is str:
            raw = value.encode()
            parts.append(shortstr(key) + b"S" + _LONG.pack(len(raw)) + raw)
        else:
            return _encode_any_table(table)
    body = b"".join(parts)
    return _LONG.pack(len(body)) + body


def _encode_any_table(table: dict[str, Any]) -> bytes:
    """py-amqp's encoding of a field table; its errors become TypeError and ValueError."""
    try:
        return bytes(dumps("F", [table]))
    except FrameSyntaxError as exc:  # a type it has no encoding for
        reason = " ".join(str(exc.reply_text).split())
        raise TypeError(f"an AMQP header cannot carry this value ({reason})") from None
    except (struct.error, OverflowError) as exc:  # a field too long for its length prefix
        raise ValueError(f"an AMQP header cannot carry an integer outside 64 bits or a key "
                         f"over 255 bytes ({exc})") from None
    except TypeError as exc:  # len() of a key that is not a string
        raise TypeError(f"an AMQP header's map keys must be strings: {exc}") from None


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return FRAME_HEADER_STRUCT.pack(kind, channel, len(payload)) + payload + b"\xce"


#: A content header frame up to its properties: frame header, class, weight, body size.
_CONTENT_HEADER = Struct(">BHIHHQ")
#: The frame-end octet of one frame and the header of the body frame after it.
_END_AND_BODY = Struct(">BBHI")
_PUBLISH_METHODS: dict[tuple[int, str, str, bool], bytes] = {}


def _publish_method(channel: int, exchange: str, routing_key: str, mandatory: bool) -> bytes:
    """The whole ``basic.publish`` method frame, cached: a proxy publishes to few addresses."""
    frame = _frame(FRAME_METHOD, channel, (
        _METHOD_ID.pack(BASIC, BASIC_PUBLISH) + b"\x00\x00" + shortstr(exchange)
        + shortstr(routing_key) + (b"\x01" if mandatory else b"\x00")))
    if len(_PUBLISH_METHODS) >= 1024:  # reply addresses are many on a busy server
        _PUBLISH_METHODS.clear()
    _PUBLISH_METHODS[(channel, exchange, routing_key, mandatory)] = frame
    return frame


def publish_frames(
    channel: int,
    routing_key: str,
    body: bytes,
    props: dict[str, Any],
    *,
    mandatory: bool,
    frame_max: int,
    exchange: str = "",
    ack: int | None = None,
) -> bytes:
    """The method, header and body frames of one ``basic.publish``, as one buffer, followed by
    the ``basic.ack`` of delivery ``ack`` (a reply and its request's ack, in one write).

    Raises:
        ValueError: the routing key, the exchange or a property is over 255 bytes, or the
            properties do not fit in one frame (the broker would close the connection).
        TypeError: a header value a field table cannot carry.
    """
    size = len(body)
    properties = encode_properties(props)
    if len(properties) > frame_max - FRAME_OVERHEAD - 12:  # the content header is one frame
        raise ValueError(f"message properties of {len(properties)} bytes do not fit in one "
                         f"AMQP frame of {frame_max} bytes: send large values as arguments")
    method = (_PUBLISH_METHODS.get((channel, exchange, routing_key, mandatory))
              or _publish_method(channel, exchange, routing_key, mandatory))
    header = _CONTENT_HEADER.pack(FRAME_HEADER, channel, 12 + len(properties), BASIC, 0, size)
    chunk = frame_max - FRAME_OVERHEAD
    tail = b"\xce" if ack is None else \
        b"\xce" + _ACK.pack(FRAME_METHOD, channel, 13, BASIC, BASIC_ACK, ack, 0, FRAME_END)
    if size <= chunk:
        if not size:
            return b"".join((method, header, properties, tail))
        return b"".join((method, header, properties,
                         _END_AND_BODY.pack(FRAME_END, FRAME_BODY, channel, size), body, tail))
    out: list[bytes | memoryview] = [method, header, properties, b"\xce"]
    pack = FRAME_HEADER_STRUCT.pack
    view = memoryview(body)
    for start in range(0, size, chunk):
        part = view[start:start + chunk]
        out.append(pack(FRAME_BODY, channel, len(part)))
        out.append(part)
        out.append(b"\xce")
    out[-1] = tail
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
    """A ``channel.open``."""
    return method_frame(channel, CHANNEL, CHANNEL_OPEN, b"\x00")


def cancel_frame(channel: int, consumer_tag: str) -> bytes:
    """A ``basic.cancel`` of ``consumer_tag`` (the broker answers with cancel-ok)."""
    return method_frame(channel, BASIC, BASIC_CANCEL, shortstr(consumer_tag) + b"\x00")


def cancel_ok_frame(channel: int, consumer_tag: str) -> bytes:
    """A ``basic.cancel-ok``, the answer to the broker cancelling a consumer."""
    return method_frame(channel, BASIC, BASIC_CANCEL_OK, shortstr(consumer_tag))


def close_frame(channel: int, code: int = 200, text: str = "bye") -> bytes:
    """A ``connection.close`` (on channel 0) or a ``channel.close``, not caused by any method."""
    class_id, method = (CONNECTION, CONNECTION_CLOSE) if channel == 0 else (CHANNEL, CHANNEL_CLOSE)
    return method_frame(channel, class_id, method,
                        _SHORT.pack(code) + shortstr(text) + b"\x00\x00\x00\x00")


def close_ok_frame(channel: int) -> bytes:
    """The answer to the broker closing the connection (channel 0) or a channel."""
    if channel == 0:
        return method_frame(0, CONNECTION, CONNECTION_CLOSE_OK)
    return method_frame(channel, CHANNEL, CHANNEL_CLOSE_OK)


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


# -- decoding ----------------------------------------------------------------------------------

def read_shortstr(buf: bytes, offset: int) -> tuple[str, int]:
    """A short string at ``offset`` and the offset after it (invalid UTF-8 is replaced)."""
    length = buf[offset]
    end = offset + 1 + length
    return buf[offset + 1:end].decode("utf-8", "replace"), end


def parse_return(payload: bytes) -> tuple[int, str, str, str]:
    """``basic.return`` arguments: reply code, reply text, exchange, routing key."""
    (code,) = _SHORT.unpack_from(payload, 4)
    text, offset = read_shortstr(payload, 6)
    exchange, offset = read_shortstr(payload, offset)
    routing_key, _ = read_shortstr(payload, offset)
    return code, text, exchange, routing_key


def parse_confirm(payload: bytes) -> tuple[int, bool]:
    """``basic.ack`` / ``basic.nack`` arguments: delivery tag and the multiple flag."""
    delivery_tag, bits = DELIVERY_TAG.unpack_from(payload, 4)
    return delivery_tag, bool(bits & 1)


def parse_close(payload: bytes) -> tuple[int, str]:
    """``channel.close`` / ``connection.close`` arguments: reply code and text."""
    (code,) = _SHORT.unpack_from(payload, 4)
    text, _ = read_shortstr(payload, 6)
    return code, text


def parse_declare_ok(payload: bytes) -> tuple[str, int, int]:
    """``queue.declare-ok`` arguments: queue name, message count, consumer count."""
    name, offset = read_shortstr(payload, 4)
    messages, consumers = _COUNTS.unpack_from(payload, offset)
    return name, messages, consumers


def decode_properties(buf: bytes, offset: int, errors: str = "surrogatepass") -> dict[str, Any]:
    """The ``basic`` content properties at ``offset``: what py-amqp's ``decode_properties_basic``
    gives, with the header table named ``headers``.

    Short strings that are not UTF-8 (py-amqp raises on them) are decoded with replacement
    characters, so a hostile publisher cannot stop a reader.
    """
    start = offset
    try:
        (flags,) = _SHORT.unpack_from(buf, offset)
        offset += 2
        props: dict[str, Any] = {}
        if flags & _F_CONTENT_TYPE:
            end = offset + 1 + buf[offset]
            props["content_type"] = buf[offset + 1:end].decode("utf-8", errors)
            offset = end
        if flags & _F_CONTENT_ENCODING:
            end = offset + 1 + buf[offset]
            props["content_encoding"] = buf[offset + 1:end].decode("utf-8", errors)
            offset = end
        if flags & _F_HEADERS:
            props["headers"], offset = decode_table(buf, offset)
        if flags & _F_DELIVERY_MODE:
            props["delivery_mode"] = buf[offset]
            offset += 1
        if flags & _F_PRIORITY:
            props["priority"] = buf[offset]
            offset += 1
        if flags & _F_CORRELATION_ID:
            end = offset + 1 + buf[offset]
            props["correlation_id"] = buf[offset + 1:end].decode("utf-8", errors)
            offset = end
        if flags & _F_REPLY_TO:
            end = offset + 1 + buf[offset]
            props["reply_to"] = buf[offset + 1:end].decode("utf-8", errors)
            offset = end
        if flags & _F_EXPIRATION:
            end = offset + 1 + buf[offset]
            props["expiration"] = buf[offset + 1:end].decode("utf-8", errors)
            offset = end
        if flags & _F_MESSAGE_ID:
            end = offset + 1 + buf[offset]
            props["message_id"] = buf[offset + 1:end].decode("utf-8", errors)
            offset = end
        if flags & _F_TIMESTAMP:
            (props["timestamp"],) = _ULONGLONG.unpack_from(buf, offset)
            offset += 8
        if flags & _F_TYPE:
            end = offset + 1 + buf[offset]
            props["type"] = buf[offset + 1:end].decode("utf-8", errors)
            offset = end
        if flags & _F_USER_ID:
            end = offset + 1 + buf[offset]
            props["user_id"] = buf[offset + 1:end].decode("utf-8", errors)
            offset = end
        if flags & _F_APP_ID:
            end = offset + 1 + buf[offset]
            props["app_id"] = buf[offset + 1:end].decode("utf-8", errors)
            offset = end
        if flags & _F_CLUSTER_ID:
            end = offset + 1 + buf[offset]
            props["cluster_id"] = buf[offset + 1:end].decode("utf-8", errors)
        return props
    except UnicodeDecodeError:
        if errors == "replace":
            raise
        return decode_properties(buf, start, "replace")


# Field-table value types decoded here; any other goes to py-amqp's decoder.
_T_LONGSTR, _T_DOUBLE, _T_LONGLONG, _T_LONG, _T_BOOL, _T_VOID = b"SdlItV"


def decode_table(buf: bytes, offset: int) -> tuple[dict[Any, Any], int]:
    """A field table at ``offset`` and the offset after it, as py-amqp decodes it.

    Long strings, doubles, 32- and 64-bit signed integers, booleans and voids are decoded here;
    a table with any other value type is decoded by py-amqp (``amqp.serialization.loads``).
    """
    start = offset
    (size,) = _LONG.unpack_from(buf, offset)
    offset += 4
    limit = offset + size
    table: dict[Any, Any] = {}
    while offset < limit:
        end = offset + 1 + buf[offset]
        raw = buf[offset + 1:end]
        kind = buf[end]
        offset = end + 1
        try:
            key: Any = raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            key = raw
        if kind == _T_DOUBLE:
            (table[key],) = _DOUBLE.unpack_from(buf, offset)
            offset += 8
        elif kind == _T_LONGSTR:
            (length,) = _LONG.unpack_from(buf, offset)
            raw = buf[offset + 4:offset + 4 + length]
            offset += 4 + length
            try:
                table[key] = raw.decode("utf-8", "surrogatepass")
            except UnicodeDecodeError:
                table[key] = raw
        elif kind == _T_LONGLONG:
            (table[key],) = _LONGLONG.unpack_from(buf, offset)
            offset += 8
        elif kind == _T_LONG:
            (table[key],) = _SIGNED_LONG.unpack_from(buf, offset)
            offset += 4
        elif kind == _T_BOOL:
            table[key] = bool(buf[offset])
            offset += 1
        elif kind == _T_VOID:
            table[key] = None
        else:
            (decoded,), offset = loads("F", buf, start)
            return decoded, offset
    if offset != limit:
        raise ValueError("malformed AMQP field table")
    return table, limit
