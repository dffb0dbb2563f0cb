"""The wire case: an RPC loop on raw sockets that does only what rpc's wire format needs.

Each side makes one write and one read per message. The client publishes each request as
``rpc.Proxy`` does: protocol v1's properties (correlation and message id, deadline header,
expiration, reply-to), mandatory, on a channel in confirm mode, to direct reply-to. The server
decodes the properties and the msgpack body, runs the function, and writes the reply with the
request's ack in one send. Nothing else: no call table, retries, deadlines, dedup, metrics or
threads. What ``rpc seq add`` costs above this case is rpc's own Python, since the broker does
the same work for both.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
from kombu import Connection

from rpc.core import frames, protocol
from rpc.core.serialization import MSGPACK

#: The receive timeout of the server's blocking reads: how often it looks for a stop.
STOP_POLL_S = 0.5
#: Seconds a wire call waits for its reply.
CALL_TIMEOUT_S = 10.0

_DELIVER = frames.method_key(frames.BASIC, 60)
_RETURN = frames.method_key(frames.BASIC, 50)
_NACK = frames.method_key(frames.BASIC, 120)


class Frames:
    """Splits the byte stream into frames, keeping an incomplete one for the next read."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes, int, int]]:
        """``(kind, buffer, payload start, payload end)`` of each frame completed by ``data``."""
        buf = self._rest + data if self._rest else data
        pos, end = 0, len(buf)
        unpack = frames.FRAME_HEADER_STRUCT.unpack_from
        while end - pos >= 8:
            kind, _, size = unpack(buf, pos)
            stop = pos + 7 + size
            if stop >= end:
                break
            yield kind, buf, pos + 7, stop
            pos = stop + 1
        self._rest = buf[pos:]


def _method(buf: bytes, start: int) -> int:
    return int(frames.METHOD_KEY.unpack_from(buf, start)[0])


def _raw_socket(conn: Connection, timeout: float) -> socket.socket:
    """The connection's socket, blocking with a receive timeout: one syscall per read."""
    sock: socket.socket = conn.connection.transport.sock
    sock.settimeout(None)
    whole = int(timeout)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                    struct.pack("ll", whole, int((timeout - whole) * 1_000_000)))
    return sock


def serve(url: str, queue: str, functions: dict[str, Callable[..., Any]], prefetch: int,
          stop: threading.Event, ready: Callable[[], None]) -> None:
    """Answer requests on ``queue`` (declared as an rpc server declares it) until ``stop``."""
    conn = Connection(url)
    channel = conn.connection.channel()
    channel.queue_declare(queue, durable=True, auto_delete=False)
    channel.basic_qos(0, prefetch, False)
    channel.basic_consume(queue, no_ack=False, callback=lambda message: None)
    frame_max = conn.connection.frame_max
    sock = _raw_socket(conn, STOP_POLL_S)
    identity = f"{socket.gethostname()}:{os.getpid()}"
    parser = Frames()
    tag = 0
    props: dict[str, Any] = {}
    out: list[bytes] = []
    ready()
    try:
        while not stop.is_set():
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            if not data:
                return
            for kind, buf, start, end in parser.feed(data):
                if kind == frames.FRAME_METHOD and _method(buf, start) == _DELIVER:
                    offset = start + 5 + buf[start + 4]  # past the consumer tag
                    tag = frames.DELIVERY_TAG.unpack_from(buf, offset)[0]
                elif kind == frames.FRAME_HEADER:
                    props = frames.decode_properties(buf, start + 12)
                elif kind == frames.FRAME_BODY:
                    request = protocol.parse_request(msgpack.unpackb(buf[start:end]))
                    value = functions[request.method](*request.args, **request.kwargs)
                    reply = msgpack.packb(protocol.result_body(value))
                    reply_props = protocol.reply_properties(props["correlation_id"], MSGPACK,
                                                            identity)
                    out.append(frames.publish_frames(1, props["reply_to"], reply, reply_props,
                                                     mandatory=False, frame_max=frame_max))
                    out.append(frames.ack_frame(1, tag))
            if out:
                sock.sendall(b"".join(out))
                out.clear()
    finally:
        conn.release()


class Caller:
    """Calls on ``queue`` one at a time, each request published as rpc.Proxy publishes it."""

    def __init__(self, url: str, queue: str) -> None:
        self._conn = Connection(url)
        channel = self._conn.connection.channel()
        channel.confirm_select()
        channel.basic_consume(protocol.DIRECT_REPLY_TO, no_ack=True,
                              callback=lambda message: None)
        self._frame_max = self._conn.connection.frame_max
        self._sock = _raw_socket(self._conn, CALL_TIMEOUT_S)
        self._queue = queue
        self._parser = Frames()
        self._prefix = os.urandom(8).hex() + "."
        self._counter = 0

    def call(self, method: str, args: list[Any]) -> Any:
        """The result of ``method(*args)``.

        Raises:
            RuntimeError: the broker returned or refused the request.
            TimeoutError: no reply came in time.
        """
        self._counter += 1
        cid = f"{self._prefix}{self._counter:x}"
        props = protocol.request_properties(cid, MSGPACK, CALL_TIMEOUT_S, time.time())
        props["reply_to"] = protocol.DIRECT_REPLY_TO
        body = msgpack.packb(protocol.request_body(method, tuple(args), {}))
        self._sock.sendall(frames.publish_frames(1, self._queue, body, props, mandatory=True,
                                                 frame_max=self._frame_max))
        reply_cid = None
        while True:
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                raise TimeoutError(f"no reply to {cid}") from None
            for kind, buf, start, end in self._parser.feed(data):
                if kind == frames.FRAME_METHOD and _method(buf, start) in (_RETURN, _NACK):
                    raise RuntimeError(f"the broker did not take request {cid}")
                if kind == frames.FRAME_HEADER:
                    reply_cid = frames.decode_properties(buf, start + 12).get("correlation_id")
                elif kind == frames.FRAME_BODY and reply_cid == cid:
                    return msgpack.unpackb(buf[start:end])["result"]

    def close(self) -> None:
        self._conn.release()
