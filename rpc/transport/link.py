"""Links: the thin I/O layer between the server or proxy and one broker connection.

A link publishes (from any thread), acknowledges, and reads and dispatches incoming messages
(from one reader thread at a time). Two kinds, chosen by :func:`open_link`:

* :class:`rpc.transport.amqp.AMQPLink` for RabbitMQ through py-amqp: after py-amqp has
  connected and declared, the link feeds the socket's bytes to a sans-I/O
  :class:`rpc.core.session.Session` and writes the bytes it returns, so that a publish is one
  ``send`` and a burst of deliveries one ``recv``; it sends heartbeats from :meth:`Link.tick`.
* :class:`rpc.transport.kombu.KombuLink` for every other kombu transport (``memory://``,
  ``redis://``): kombu's own producer and consumer, serialised by one lock.

:mod:`rpc.transport.aio` drives either from an asyncio event loop.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, TypeAlias

from kombu.connection import Connection

from ..core import session
from ..core.session import OnQueueInfo, QueueInfo

__all__ = ["Incoming", "Link", "OnCancel", "OnMessage", "OnQueueInfo", "OnReturn", "QueueInfo",
           "open_link"]

logger = logging.getLogger(__name__)

#: Whether a link may hold a lone confirm back with the socket's receive low-water mark
#: (:data:`rpc.core.frames.CONFIRM_MARK`): only on Linux, whose non-blocking read takes what
#: waits below the mark (BSD's refuses it). Never under TLS, whose records the mark would count.
CAN_MARK = sys.platform == "linux"

#: One message read from the broker through a :class:`Link` (see :class:`rpc.core.session.Incoming`).
Incoming: TypeAlias = session.Incoming["Link"]
OnMessage: TypeAlias = Callable[[Incoming], None]
OnReturn: TypeAlias = Callable[[Incoming, int, str], None]
OnCancel = Callable[[str], None]
#: A reply to publish: its routing key, body, properties, and the delivery it acknowledges.
Reply = tuple[str, bytes, dict[str, Any], "int | None"]


def _ignore_return(msg: Incoming, code: int, text: str) -> None:
    logger.debug("message to %r returned: %s %s", msg.routing_key, code, text)


def _ignore_cancel(tag: str) -> None:
    logger.warning("broker cancelled consumer %s", tag)


class Link:
    """What the server and the proxy need from a connection; see the module docstring."""

    #: Whether the broker offers RabbitMQ's direct reply-to.
    direct_reply_to = False
    #: The heartbeat interval in seconds the connection negotiated (0: none).
    heartbeat = 0.0

    def __init__(
        self, on_message: OnMessage, on_return: OnReturn | None, on_cancel: OnCancel | None,
        max_body: int | None,
    ) -> None:
        self.on_message = on_message
        #: Bodies larger than this are dropped as they arrive and delivered with ``oversize`` set.
        self.max_body = max_body
        self.on_return: OnReturn = on_return or _ignore_return
        self.on_cancel: OnCancel = on_cancel or _ignore_cancel
        self.closed = False

    @property
    def blocked(self) -> str | None:
        """Why the broker blocks publishing (a resource alarm), or None while it does not."""
        return None

    def declare_queue(self, name: str, *, durable: bool, arguments: dict[str, Any] | None = None) -> str:
        raise NotImplementedError

    def reply_queue(self) -> str:
        """Start consuming replies; returns the ``reply_to`` address to publish with."""
        raise NotImplementedError

    def consume(self, queue: str, *, prefetch: int) -> str:
        """Start consuming ``queue`` with manual acks; returns the consumer tag."""
        raise NotImplementedError

    def broadcast_queue(self, exchange: str) -> str:
        """Declare the fanout ``exchange`` and an exclusive queue bound to it; returns its name.

        The queue is named ``<exchange>.<uuid>`` so that a server user's permissions on ``rpc.*``
        names cover it.
        """
        raise NotImplementedError

    def declare_fanout(self, exchange: str) -> None:
        """Declare the fanout ``exchange`` (safe while another thread reads)."""
        raise NotImplementedError

    def cancel(self, consumer_tag: str) -> None:
        """Stop deliveries to ``consumer_tag`` (those already sent still arrive)."""
        raise NotImplementedError

    def inspect_queue(self, queue: str, on_info: OnQueueInfo) -> None:
        """Ask the broker for ``queue``'s message and consumer counts, from any thread.

        ``on_info`` runs on the thread that reads the answer (or at once on transports that
        answer synchronously); a missing queue gives None.
        """
        raise NotImplementedError

    def publish(
        self, routing_key: str, body: bytes, props: dict[str, Any], *,
        mandatory: bool = False, ack: int | None = None, exchange: str = "",
        track: Any = None,
    ) -> None:
        """Publish a message; ``ack`` acknowledges that delivery in the same write.

        ``track`` names the publish to the ``on_nack`` callback when confirms are on.

        Raises:
            BrokerBlocked: the broker has blocked publishing (a resource alarm).
            ConnectionLost: the connection failed.
        """
        raise NotImplementedError

    def publish_replies(self, replies: list[Reply]) -> None:
        """Publish several ``(routing_key, body, props, ack)`` with their acks, in one write
        where the transport can (a burst of requests answered together).

        Raises:
            ConnectionLost: the connection failed.
        """
        for routing_key, body, props, ack in replies:
            self.publish(routing_key, body, props, ack=ack)

    def enable_confirms(
        self, on_nack: Callable[[Any], None],
        on_blocked: Callable[[list[Any], str], None] | None = None,
    ) -> None:
        """Track publishes with publisher confirms where the transport has them.

        Nothing waits for a confirm: acks retire the tracking entries, ``on_nack(key)`` hears
        of each refused publish, and ``on_blocked(keys, reason)`` of those still unconfirmed
        when the broker blocks publishing (it sends ``connection.blocked`` only after a publish).
        """
        return None

    def ack(self, delivery_tag: int) -> None:
        raise NotImplementedError

    def reject(self, delivery_tag: int, *, requeue: bool) -> None:
        raise NotImplementedError

    def read(self, timeout: float | None) -> bool:
        """Read and dispatch what arrives within ``timeout`` (None blocks); False if nothing did.

        Raises:
            ConnectionLost: the connection or channel failed or was closed.
        """
        raise NotImplementedError

    def tick(self) -> None:
        """Send a heartbeat if due; raise ConnectionLost if the broker fell silent."""

    def close(self) -> None:
        raise NotImplementedError

    def abandon(self) -> None:
        """In a child process just forked: leave the connection to the parent. Nothing is
        sent, and the socket is not shut down (closing it from here would close it there);
        the link is closed in this process from now on."""
        self.closed = True


def open_link(
    conn: Connection,
    on_message: OnMessage,
    on_return: OnReturn | None = None,
    on_cancel: OnCancel | None = None,
    *,
    max_body: int | None = None,
) -> Link:
    """The fastest link for ``conn``'s transport."""
    from .amqp import AMQPLink  # the drivers build on this module's Link
    from .kombu import KombuLink

    if conn.transport.driver_type == "amqp" and hasattr(conn.connection, "frame_writer"):
        return AMQPLink(conn, on_message, on_return, on_cancel, max_body)
    return KombuLink(conn, on_message, on_return, on_cancel, max_body)
