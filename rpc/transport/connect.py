"""Opening kombu connections: failover across a cluster's nodes, bounded retries with tenacity,
heartbeats on, passwords masked.

This is the only module that knows which broker errors are worth retrying.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
from typing import Any, Literal

import amqp.exceptions
import tenacity
from kombu.connection import Connection

from ..core.errors import AccessRefused, ConnectionError
from ..defaults import DEFAULT_CONNECT_RETRY, DEFAULT_HEARTBEAT
from .urls import BrokerURL, mask_url, scrub, split_urls

logger = logging.getLogger(__name__)

#: Seconds a broker may take to answer the AMQP handshake: a frozen node accepts TCP
#: connections but never answers, and this moves on to the next one.
HANDSHAKE_TIMEOUT = 5.0

FailoverStrategy = Literal["round-robin", "shuffle"]


class Failover:
    """The order in which a client tries a cluster's nodes, remembered across reconnects.

    Connecting tries every URL in turn; a reconnect starts with the node after the one last
    connected to, so a client never insists on the node it just lost. ``"shuffle"`` starts each
    client at a random node of a random order, which spreads many clients across the cluster.
    """

    def __init__(self, url: BrokerURL, strategy: FailoverStrategy = "round-robin") -> None:
        if strategy not in ("round-robin", "shuffle"):
            raise ValueError(f"failover must be 'round-robin' or 'shuffle', not {strategy!r}")
        self.urls = split_urls(url)
        self.strategy = strategy
        if strategy == "shuffle":
            random.shuffle(self.urls)
        self._next = 0
        #: The URL of the node last connected to (None before the first connection).
        self.current: str | None = None

    def take(self) -> str:
        """The URL to try next."""
        url = self.urls[self._next % len(self.urls)]
        self._next = (self._next + 1) % len(self.urls)
        return url

    def connected(self, url: str) -> None:
        """Record a successful connection: the next reconnect starts after this node."""
        self.current = url
        self._next = (self.urls.index(url) + 1) % len(self.urls)

    def node(self) -> str | None:
        """``host:port`` of the node last connected to, for status lines."""
        if self.current is None or "://" not in self.current:
            return None
        rest = self.current.split("://", 1)[1].rsplit("@", 1)[-1]
        return rest.split("/", 1)[0] or None

#: Refusals that no retry will fix: bad credentials, a vhost without access.
_IRRECOVERABLE = (amqp.exceptions.AccessRefused, amqp.exceptions.NotAllowed)


class _Refused(Exception):
    """Carries an irrecoverable error out of the retry loop."""


class _Unreachable(Exception):
    """Carries a connection error of another kombu transport (redis-py's is no OSError) into
    the retries, as the socket errors of RabbitMQ's are."""

    def __str__(self) -> str:
        return str(self.args[0])


def _refusals(url: str) -> tuple[type[BaseException], ...]:
    """What a broker at ``url`` raises for credentials or rights it refuses, beyond py-amqp's."""
    if not url.startswith("redis"):
        return ()
    from redis.exceptions import AuthenticationError, AuthorizationError  # kombu's Redis needs it

    return (AuthenticationError, AuthorizationError)


def is_recoverable(exc: BaseException) -> bool:
    """Whether reconnecting may succeed after ``exc`` (not for refused credentials or vhosts)."""
    if isinstance(exc, (_Refused, *_IRRECOVERABLE)):
        return False
    if isinstance(exc, _Unreachable):
        return True
    if isinstance(exc, amqp.exceptions.ConnectionError):
        return getattr(exc, "code", None) not in (403, 530)
    return isinstance(exc, (OSError, socket.timeout, amqp.exceptions.AMQPError, EOFError))


def tls_options(url: str, ssl: dict[str, Any] | None) -> dict[str, Any] | bool:
    """py-amqp TLS options: for ``amqps://``, verify the certificate and the hostname by default.

    kombu's bare ``ssl=True`` wraps the socket without verifying anything. Here the defaults are
    the system CAs (``{"context": {"cafile": ...}}`` adds one), ``check_hostname`` on, and the
    URL's host as the name to check; ``ssl`` entries override them.
    """
    if ssl is None and not url.startswith("amqps://"):
        return False
    merged: dict[str, Any] = {"context": {"check_hostname": True}, "server_hostname": None}
    for key, value in (ssl or {}).items():
        if key == "context" and isinstance(value, dict):
            merged["context"] = {**merged["context"], **value}
        else:
            merged[key] = value
    return merged


def open_connection(
    url: BrokerURL | Failover,
    *,
    heartbeat: float | None = DEFAULT_HEARTBEAT,
    connect_timeout: float = 2.0,
    retry_for: float = DEFAULT_CONNECT_RETRY,
    name: str = "rpc",
    transport_options: dict[str, Any] | None = None,
    ssl: dict[str, Any] | None = None,
    cancel: threading.Event | None = None,
) -> Connection:
    """Connect to a broker, retrying recoverable failures for up to ``retry_for`` seconds.

    ``url`` is one or several URLs, or a :class:`Failover` that remembers across calls which
    node comes next; each attempt tries the next node, and the first round tries every one
    before any backoff. ``amqps://`` URLs verify the broker's certificate and hostname unless
    ``ssl`` (py-amqp's TLS options, merged over those defaults) says otherwise; see
    :func:`tls_options`. Setting ``cancel`` stops the retries.

    Raises:
        rpc.ConnectionError: every broker stayed unreachable, or one refused the login or vhost.
            Its message names the URLs with the passwords masked.
    """
    failover = url if isinstance(url, Failover) else Failover(url)
    joined = ";".join(failover.urls)
    masked = mask_url(joined)
    client_properties = {"connection_name": f"{name} pid={os.getpid()}"}

    def attempt() -> Connection:
        one = failover.take()
        options = dict(transport_options or {})
        if one.startswith(("amqp", "pyamqp")):
            options.setdefault("client_properties", client_properties)
            options.setdefault("read_timeout", HANDSHAKE_TIMEOUT)
        conn = Connection(
            one, heartbeat=heartbeat or 0, connect_timeout=connect_timeout,
            transport_options=options, ssl=tls_options(one, ssl),
        )
        try:
            conn.ensure_connection(max_retries=0, reraise_as_library_errors=False)  # tenacity retries
        except BaseException as exc:
            conn.release()
            if isinstance(exc, (*_IRRECOVERABLE, *_refusals(one))) or (
                isinstance(exc, amqp.exceptions.ConnectionError) and not is_recoverable(exc)
            ):
                raise _Refused(one, exc) from exc
            logger.info("cannot connect to %s: %s", mask_url(one),
                        scrub(str(exc), joined) or type(exc).__name__)
            if not is_recoverable(exc) and isinstance(exc, conn.connection_errors):
                raise _Unreachable(exc) from exc
            raise
        failover.connected(one)
        return conn

    nodes = len(failover.urls)

    def backoff(state: tenacity.RetryCallState) -> float:
        if state.attempt_number % nodes:  # more nodes to try in this round: no wait
            return 0.0
        rounds = state.attempt_number // nodes
        return float(min(0.1 * 2 ** (rounds - 1), 1.0) + random.uniform(0, 0.1))

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_recoverable),
        stop=tenacity.stop_after_delay(retry_for) | (
            tenacity.stop_when_event_set(cancel) if cancel is not None else tenacity.stop_never),
        wait=backoff,
        before_sleep=lambda state: logger.warning(
            "cannot connect to %s (attempt %d): %s; retrying",
            masked, state.attempt_number,
            scrub(str(state.outcome.exception() if state.outcome else ""), joined),
        ) if not state.attempt_number % nodes else None,
        reraise=True,
    )
    try:
        return retrying(attempt)
    except _Refused as refused:
        where, cause = refused.args
        raise AccessRefused(
            f"broker at {mask_url(where)} refused the connection: {scrub(str(cause), joined)}"
        ) from None
    except Exception as exc:
        raise ConnectionError(
            f"cannot connect to broker at {masked}: {scrub(str(exc), joined) or type(exc).__name__}"
        ) from None
