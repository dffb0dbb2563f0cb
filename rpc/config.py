"""Broker URL resolution and password masking (no I/O)."""

from __future__ import annotations

import os
from urllib.parse import quote, urlsplit, urlunsplit

#: Environment variable read when no URL is given.
URL_ENV = "RPC_BROKER_URL"
DEFAULT_URL = "amqp://guest:guest@localhost:5672//"


def resolve_url(
    url: str | None = None,
    *,
    hostname: str | None = None,
    port: int | None = None,
    username: str | None = None,
    password: str | None = None,
    vhost: str | None = None,
) -> str:
    """Pick the broker URL: ``url``, else the qam-style pieces, else $RPC_BROKER_URL, else default.

    Raises:
        ValueError: both a URL and pieces of one were given.
    """
    pieces = (hostname, port, username, password, vhost)
    if url is not None:
        if any(p is not None for p in pieces):
            raise ValueError("give either url= or hostname=/port=/username=/password=/vhost=")
        return url
    if any(p is not None for p in pieces):
        user = quote(username if username is not None else "guest", safe="")
        secret = quote(password if password is not None else "guest", safe="")
        host = hostname or "localhost"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        path = quote(vhost if vhost is not None else "/", safe="")
        return f"amqp://{user}:{secret}@{host}:{port or 5672}/{path}"
    return os.environ.get(URL_ENV) or DEFAULT_URL


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``**``, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable broker URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:**@{netloc}"))


def url_password(url: str) -> str | None:
    """The password in ``url`` (to scrub it from third-party error text), or None."""
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def scrub(text: str, url: str) -> str:
    """Remove the URL's password from ``text`` wherever it appears."""
    secret = url_password(url)
    if secret:
        text = text.replace(secret, "**")
        quoted = quote(secret, safe="")
        if quoted != secret:
            text = text.replace(quoted, "**")
    return text
