"""Broker URLs in pika's dialect."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def pika_url(url: str) -> str:
    """``url`` as pika reads it: kombu's ``//`` (the vhost ``/``) becomes ``/%2F``.

    pika takes the path after the first slash literally, so ``amqp://host//`` would name the
    vhost ``""``, which does not exist.
    """
    parts = urlsplit(url)
    if parts.path in ("", "/", "//"):
        parts = parts._replace(path="/%2F")
    return urlunsplit(parts)
