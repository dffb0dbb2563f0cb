"""Sending replies, and telling which callers are gone from the replies that fail.

RabbitMQ closes a server's whole connection (541 INTERNAL_ERROR) when a reply goes to a direct
reply-to address whose caller's node died. The request then comes back redelivered, and a
server that answered it the same way again would lose its connection for ever. So the replier
remembers the addresses it lately wrote to: after such a close, a lone recent address is the
culprit; among several, each becomes a suspect, and the next reply to a suspect is sent alone and
given a moment (a probe): the broker closes the connection again only if its caller is gone. An
address found gone is remembered for a while, and its requests are acknowledged unanswered; so
are those of every address of the same node lifetime (:func:`rpc.core.protocol.reply_origin`),
which would each have closed the connection once more.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from typing import Any

from ..core import protocol
from ..transport.link import Incoming, Link, Reply
from .failures import LOGGER_NAME

logger = logging.getLogger(LOGGER_NAME)

#: The AMQP code RabbitMQ closes a connection with when a reply goes to a caller that is gone.
INTERNAL_ERROR = 541
#: Seconds a reply to a suspect address waits for such a close before it counts as delivered.
PROBE_WAIT = 0.2
#: Seconds a reply address found dead is remembered (its requests are acknowledged unanswered).
GONE_CALLER_TTL = 120.0
#: Reply addresses remembered as lately written to.
RECENT_REPLIES = 64


class _Held(threading.local):
    """A thread's held replies (None: not holding). The class defaults spare every reply the
    exception a ``getattr`` on a plain ``threading.local`` raises and swallows."""

    replies: list[tuple[Link, Reply]] | None = None
    most = 0


class Replier:
    """Publishes each reply and acknowledges its request, in one write where that is safe.

    Args:
        server_id: the server's id, for the log.
        identity: the server's ``app_id`` on every reply (``server_id@host:pid``).
        counts: the server's counters; ``gone_callers`` counts requests of gone callers.
        stopping: set when the server stops; it cuts a probe's wait short.
    """

    def __init__(self, server_id: str, identity: str, counts: dict[str, int],
                 stopping: threading.Event) -> None:
        self.server_id = server_id
        self.identity = identity
        self._counts = counts
        self._stopping = stopping
        #: The addresses lately written to, each with the connection it went through: a write
        #: to a connection already lost cannot close the next one.
        self._recent: deque[tuple[Link, str]] = deque(maxlen=RECENT_REPLIES)
        #: The addresses whose replies go out as probes: nearly always empty, which a caller may
        #: test before :meth:`would_wait`.
        self.suspects: set[str] = set()
        self._suspects_until = 0.0
        self._gone: dict[str, float] = {}
        #: The origins (node lifetimes) of the addresses found gone.
        self._gone_origins: dict[str, float] = {}
        self._probe: str | None = None
        self._probe_lock = threading.Lock()
        #: Per thread, while it holds its replies (see :meth:`hold`): ``replies``, each with
        #: the connection it goes through, and ``most``.
        self._held = _Held()

    def send(self, msg: Incoming, tag: int | None, payload: bytes, content_type: str) -> None:
        """Reply to ``msg`` and acknowledge delivery ``tag`` (None: it was acknowledged already).

        Raises:
            ConnectionLost: the connection failed; the request is not acknowledged.
        """
        link = msg.link
        props = msg.props
        reply_to = props.get("reply_to")
        if not reply_to or not protocol.is_reply_address(reply_to):
            if reply_to:
                logger.warning("not replying to %r: not a reply address", reply_to[:100])
            if tag is not None:
                link.ack(tag)
            return
        if self._gone and self.gone(reply_to):
            if tag is not None:
                link.ack(tag)
            self._counts["gone_callers"] += 1  # once acknowledged: it does not come back
            return
        # A redelivered request is acknowledged after its reply, in the same write, like any
        # other: acknowledged first, it was lost whenever another worker's reply to a gone caller
        # made the broker close the connection between the two writes. Its reply cannot loop:
        # after such a close every address written to is gone or suspect, and a suspect's reply
        # goes out as a probe.
        reply_props = protocol.reply_properties(props.get("correlation_id"), content_type,
                                                self.identity)
        if self.suspects and self.is_suspect(reply_to):
            self.flush()  # the probe goes out alone, after the replies before it
            self._send_probe(link, reply_to, payload, reply_props, tag)
            return
        held = self._held.replies
        if held is not None:
            held.append((link, (reply_to, payload, reply_props, tag)))
            if len(held) >= self._held.most:
                self._send_held(held)
            return
        if self._probe is not None:
            self._wait_for_probe()
        self._wrote(link, reply_to)
        link.publish(reply_to, payload, reply_props, ack=tag)

    def hold(self, most: int) -> None:
        """Keep the replies this thread sends from now on, to go out together at :meth:`flush`
        or ``most`` at a time: a burst of requests run one after another then costs the broker
        and this server a write per ``most``, not one each. (All at the end would leave the
        broker nothing to send until then: a server holds no more requests than its prefetch.)"""
        self._held.replies = []
        self._held.most = most

    def holding(self) -> bool:
        """Whether this thread's replies are held (between :meth:`hold` and :meth:`flush`)."""
        return self._held.replies is not None

    def flush(self) -> None:
        """Send the held replies (with the acknowledgements of their requests) and stop
        holding.

        Raises:
            ConnectionLost: the connection failed; their requests come back redelivered.
        """
        held = self._held.replies
        if held is None:
            return
        self._held.replies = None
        self._send_held(held)

    def _send_held(self, replies: list[tuple[Link, Reply]]) -> None:
        held = replies[:]
        replies.clear()
        if not held:
            return
        self._wait_for_probe()
        for through, (reply_to, *_) in held:
            self._wrote(through, reply_to)
        for through, replies_through in itertools.groupby(held, key=lambda item: item[0]):
            through.publish_replies([reply for _, reply in replies_through])

    def send_item(self, msg: Incoming, payload: bytes, content_type: str,
                  control: str | None) -> None:
        """Publish one item of the stream that answers ``msg`` (whose ``reply_to`` is a reply
        address); the first carries the ``control`` address.

        Raises:
            ConnectionLost: the connection failed.
        """
        props = msg.props
        reply_to = props["reply_to"]
        item_props = protocol.item_properties(props.get("correlation_id"), content_type,
                                              self.identity, control)
        if self.is_suspect(reply_to):
            self._send_probe(msg.link, reply_to, payload, item_props)
            return
        self._wait_for_probe()
        self._wrote(msg.link, reply_to)
        msg.link.publish(reply_to, payload, item_props)

    def send_notice(self, msg: Incoming, payload: bytes, props: dict[str, Any]) -> None:
        """Publish a keep-alive or a progress report of the call ``msg`` asked for (from any
        thread); nothing goes to a caller known gone or suspect, or without a reply address.

        Raises:
            ConnectionLost: the connection failed.
        """
        reply_to = msg.props.get("reply_to")
        if (not isinstance(reply_to, str) or not protocol.is_reply_address(reply_to)
                or self.gone(reply_to) or self.is_suspect(reply_to)):
            return
        self._wait_for_probe()
        self._wrote(msg.link, reply_to)  # it may close the connection like a reply
        msg.link.publish(reply_to, payload, props)

    def gone(self, reply_to: Any) -> bool:
        """Whether ``reply_to`` is known to belong to a caller that is gone: itself found gone,
        or a caller of the same node lifetime as one that is."""
        if not self._gone or not isinstance(reply_to, str):
            return False
        return reply_to in self._gone or protocol.reply_origin(reply_to) in self._gone_origins

    def is_suspect(self, reply_to: Any) -> bool:
        """Whether a reply to ``reply_to`` goes out as a probe, and so waits a moment."""
        if not self.suspects or reply_to not in self.suspects:
            return False
        if time.monotonic() > self._suspects_until:
            self.suspects.clear()
            return False
        return True

    def would_wait(self, msg: Incoming) -> bool:
        """Whether :meth:`send` would wait for a probe's answer to reply to ``msg``."""
        return self.is_suspect(msg.props.get("reply_to"))

    def closed_on_reply(self, link: Link) -> set[str]:
        """The broker closed connection ``link`` on a reply: work out which address made it.

        Returns the addresses now known to be gone (empty while there are only suspects).
        """
        now = time.monotonic()
        recent = {to for through, to in self._recent if through is link}
        self._recent.clear()
        if len(recent) == 1:  # a probe goes out alone: it is such a lone address
            gone = recent
        else:
            gone = set()
            self.suspects |= recent
            self._suspects_until = now + GONE_CALLER_TTL
        self.suspects -= gone
        self._gone = {to: until for to, until in self._gone.items() if until > now}
        self._gone_origins = {
            origin: until for origin, until in self._gone_origins.items() if until > now}
        for to in gone:
            origin = protocol.reply_origin(to)
            logger.warning("server %r: replies to %s... fail: its caller is gone%s",
                           self.server_id, to[:40],
                           f", as are all callers of node {origin}" if origin else "")
            self._gone[to] = now + GONE_CALLER_TTL
            if origin is not None:
                self._gone_origins[origin] = now + GONE_CALLER_TTL
        return gone

    def _wait_for_probe(self) -> None:
        """A probe goes out alone: other writes wait for its verdict, and only then count
        among the addresses written."""
        if self._probe is not None:
            with self._probe_lock:
                pass

    def _wrote(self, link: Link, reply_to: str) -> None:
        """Count ``reply_to`` among the addresses written through ``link``."""
        recent = self._recent
        if not recent or recent[-1] != (link, reply_to):  # a stream must not crowd out others
            recent.append((link, reply_to))

    def _send_probe(self, link: Link, reply_to: str, payload: bytes,
                    reply_props: dict[str, Any], tag: int | None = None) -> None:
        """Reply to a suspect address alone, and clear it if the connection survives; only
        then acknowledge delivery ``tag`` (a request whose reply was lost comes back)."""
        with self._probe_lock:
            self._probe = reply_to
            try:
                self._wrote(link, reply_to)
                link.publish(reply_to, payload, reply_props)
                self._stopping.wait(PROBE_WAIT)
                if not link.closed:
                    self.suspects.discard(reply_to)
            finally:
                self._probe = None
        if tag is not None:
            link.ack(tag)
