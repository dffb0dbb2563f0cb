"""Broker URL resolution and password masking (no I/O)."""

from __future__ import annotations

import os
import re
from urllib.parse import quote, unquote

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


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][\w+.-]*://)(?P<user>[^:@/;]*):(?P<secret>[^;]*)@")


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``**``, for messages and logs.

    Everything between ``user:`` and the last ``@`` of each ``;``-separated URL counts as the
    password, so an unquoted ``/``, ``?`` or ``#`` in it is masked too.
    """
    return ";".join(_USERINFO.sub(r"\g<scheme>\g<user>:**@", part) for part in url.split(";"))


def url_password(url: str) -> str | None:
    """The password in ``url``, decoded (to scrub it from third-party error text), or None."""
    match = _USERINFO.search(url)
    return unquote(match.group("secret")) if match else None


def scrub(text: str, url: str) -> str:
    """Remove the URL's passwords from ``text`` wherever they appear, quoted or not."""
    for part in url.split(";"):
        match = _USERINFO.search(part)
        if not match or not match.group("secret"):
            continue
        raw = match.group("secret")
        for form in {raw, unquote(raw), quote(unquote(raw), safe="")}:
            if form:
                text = text.replace(form, "**")
    return text
