"""Broker URL resolution, several URLs for a cluster, and password masking (no I/O)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from urllib.parse import quote, unquote, urlsplit

#: Environment variable read when no URL is given.
URL_ENV = "RPC_BROKER_URL"
DEFAULT_URL = "amqp://guest:guest@localhost:5672//"


#: Where one broker URL ends and the next begins: a ``;`` or ``,`` followed by a scheme, so that
#: either character inside a password does not split it.
_SEPARATOR = re.compile(r"\s*[;,]\s*(?=[A-Za-z][\w+.-]*://)")
_SCHEMES = frozenset({"amqp", "amqps", "pyamqp", "memory", "redis", "rediss"})

BrokerURL = str | Sequence[str]


def split_urls(url: BrokerURL) -> list[str]:
    """The broker URLs in ``url``: a list of them, or one string separated by ``;`` or ``,``.

    Raises:
        ValueError: no URL, or one without a known scheme or host (named with its password
            masked).
    """
    parts = _SEPARATOR.split(url.strip()) if isinstance(url, str) else [str(u).strip() for u in url]
    urls = [part.rstrip(";, ") for part in parts if part.strip(";, ")]
    if not urls:
        raise ValueError("no broker URL given")
    for one in urls:
        scheme = one.split("://", 1)[0].lower() if "://" in one else ""
        if scheme not in _SCHEMES:
            raise ValueError(f"not a broker URL: {mask_url(one)!r} (expected amqp://, amqps://, "
                             f"memory:// or redis://)")
        if scheme.startswith(("amqp", "pyamqp")):
            try:
                port = urlsplit(one).port
            except ValueError as exc:
                raise ValueError(f"not a broker URL: {mask_url(one)!r}: {exc}") from None
            if port == 0:
                raise ValueError(f"not a broker URL: {mask_url(one)!r}: port 0")
    return urls


def resolve_url(
    url: BrokerURL | None = None,
    *,
    hostname: str | None = None,
    port: int | None = None,
    username: str | None = None,
    password: str | None = None,
    vhost: str | None = None,
) -> str:
    """Pick the broker URL: ``url``, else the qam-style pieces, else $RPC_BROKER_URL, else default.

    Several URLs (a list, or a string separated by ``;`` or ``,``) come back as one string
    separated by ``;``, kombu's convention, each validated by :func:`split_urls`.

    Raises:
        ValueError: both a URL and pieces of one were given, or a URL is not valid.
    """
    pieces = (hostname, port, username, password, vhost)
    if url is not None:
        if any(p is not None for p in pieces):
            raise ValueError("give either url= or hostname=/port=/username=/password=/vhost=")
        return ";".join(split_urls(url))
    if any(p is not None for p in pieces):
        user = quote(username if username is not None else "guest", safe="")
        secret = quote(password if password is not None else "guest", safe="")
        host = hostname or "localhost"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        path = quote(vhost if vhost is not None else "/", safe="")
        return f"amqp://{user}:{secret}@{host}:{port or 5672}/{path}"
    return ";".join(split_urls(os.environ.get(URL_ENV) or DEFAULT_URL))


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][\w+.-]*://)(?P<user>[^:@/;]*):(?P<secret>[^;]*)@")


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``**``, for messages and logs.

    Everything between ``user:`` and the last ``@`` of each URL (several are separated by ``;``
    or ``,``) counts as the password, so an unquoted ``/``, ``?`` or ``#`` in it is masked too.
    """
    return ";".join(_USERINFO.sub(r"\g<scheme>\g<user>:**@", part) for part in _SEPARATOR.split(url))


def url_password(url: str) -> str | None:
    """The password in ``url``, decoded (to scrub it from third-party error text), or None."""
    match = _USERINFO.search(url)
    return unquote(match.group("secret")) if match else None


def scrub(text: str, url: str) -> str:
    """Remove the URL's passwords from ``text`` wherever they appear, quoted or not."""
    for part in _SEPARATOR.split(url):
        match = _USERINFO.search(part)
        if not match or not match.group("secret"):
            continue
        raw = match.group("secret")
        for form in {raw, unquote(raw), quote(unquote(raw), safe="")}:
            if form:
                text = text.replace(form, "**")
    return text
