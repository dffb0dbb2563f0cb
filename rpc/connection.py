"""Opening kombu connections: bounded retries with tenacity, heartbeats on, passwords masked.

This is the only module that knows which broker errors are worth retrying.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

import amqp.exceptions
import tenacity
from kombu.connection import Connection

from .config import mask_url, scrub
from .errors import AccessRefused, ConnectionError

logger = logging.getLogger(__name__)

#: Seconds between heartbeats unless told otherwise; RabbitMQ advises 5 to 20.
DEFAULT_HEARTBEAT = 10.0
#: Retry window for a proxy's connection: short, so a wrong URL fails fast.
DEFAULT_CONNECT_RETRY = 3.0

#: Refusals that no retry will fix: bad credentials, a vhost without access.
_IRRECOVERABLE = (amqp.exceptions.AccessRefused, amqp.exceptions.NotAllowed)


class _Refused(Exception):
    """Carries an irrecoverable error out of the retry loop."""


def is_recoverable(exc: BaseException) -> bool:
    """Whether reconnecting may succeed after ``exc`` (not for refused credentials or vhosts)."""
    if isinstance(exc, (_Refused, *_IRRECOVERABLE)):
        return False
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
    url: str,
    *,
    heartbeat: float | None = DEFAULT_HEARTBEAT,
    connect_timeout: float = 2.0,
    retry_for: float = DEFAULT_CONNECT_RETRY,
    name: str = "rpc",
    transport_options: dict[str, Any] | None = None,
    ssl: dict[str, Any] | None = None,
    cancel: threading.Event | None = None,
) -> Connection:
    """Connect to ``url``, retrying recoverable failures for up to ``retry_for`` seconds.

    ``amqps://`` URLs verify the broker's certificate and hostname unless ``ssl`` (py-amqp's TLS
    options, merged over those defaults) says otherwise; see :func:`tls_options`. Setting
    ``cancel`` stops the retries.

    Raises:
        rpc.ConnectionError: the broker stayed unreachable, or refused the login or vhost. Its
            message names the URL with the password masked.
    """
    masked = mask_url(url)
    options = dict(transport_options or {})
    client_properties = {"connection_name": f"{name} pid={os.getpid()}"}
    if url.startswith(("amqp", "pyamqp")):
        options.setdefault("client_properties", client_properties)
    if url.startswith("memory"):
        options.setdefault("polling_interval", 0.002)

    tls = tls_options(url, ssl)

    def attempt() -> Connection:
        conn = Connection(
            url, heartbeat=heartbeat or 0, connect_timeout=connect_timeout,
            transport_options=options, ssl=tls,
        )
        try:
            conn.ensure_connection(max_retries=0, reraise_as_library_errors=False)  # tenacity retries
        except BaseException as exc:
            conn.release()
            if isinstance(exc, _IRRECOVERABLE) or (
                isinstance(exc, amqp.exceptions.ConnectionError) and not is_recoverable(exc)
            ):
                raise _Refused(exc) from exc
            raise
        return conn

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_recoverable),
        stop=tenacity.stop_after_delay(retry_for) | (
            tenacity.stop_when_event_set(cancel) if cancel is not None else tenacity.stop_never),
        wait=tenacity.wait_exponential(multiplier=0.1, max=1.0) + tenacity.wait_random(0, 0.1),
        before_sleep=lambda state: logger.warning(
            "cannot connect to %s (attempt %d): %s; retrying",
            masked, state.attempt_number,
            scrub(str(state.outcome.exception() if state.outcome else ""), url),
        ),
        reraise=True,
    )
    try:
        return retrying(attempt)
    except _Refused as refused:
        cause = refused.__cause__ or refused
        raise AccessRefused(
            f"broker at {masked} refused the connection: {scrub(str(cause), url)}"
        ) from None
    except Exception as exc:
        raise ConnectionError(
            f"cannot connect to broker at {masked}: {scrub(str(exc), url) or type(exc).__name__}"
        ) from None
