"""Pluggable payload serializers, on top of kombu's serialization registry.

Names and content types are kombu's: ``msgpack`` (``application/x-msgpack``), ``json``
(``application/json``) and ``pickle`` (``application/x-python-serialize``). This module never
calls kombu's global ``enable_insecure_serializers()``: every decode passes an explicit accept
set, so enabling pickle for one server does not enable it for anything else in the process.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable
from typing import Any

import msgpack
from kombu.exceptions import ContentDisallowed, DecodeError, EncodeError, SerializerNotInstalled
from kombu.serialization import registry

from .errors import BadRequest, SerializationError

MSGPACK = "application/x-msgpack"
JSON = "application/json"
PICKLE = "application/x-python-serialize"

#: What a server accepts unless told otherwise: never pickle.
DEFAULT_ACCEPT = frozenset({MSGPACK, JSON})


#: kombu's decoder keeps msgpack's strict_map_key, which fails on the integer-keyed maps its
#: encoder writes; this one reads what msgpack writes (a partial: a call straight into C).
_unpack_msgpack: Callable[[bytes], Any] = functools.partial(
    msgpack.unpackb, raw=False, strict_map_key=False)


class _Packers(threading.local):
    """Each thread's msgpack packer: ``msgpack.packb`` builds one per call, which costs more than
    packing a call's arguments. None while the thread packs (a dict subclass's ``items`` could
    encode again): a packer is never re-entered."""

    def __init__(self) -> None:
        self.packer: msgpack.Packer | None = msgpack.Packer(use_bin_type=True)


_packers = _Packers()


def _pack_msgpack(value: Any) -> bytes:
    packers = _packers
    packer = packers.packer
    if packer is None:
        return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]
    packers.packer = None
    try:
        return packer.pack(value)  # type: ignore[no-any-return]
    finally:
        packers.packer = packer


def register_serializer(
    name: str,
    encoder: Callable[[Any], bytes | str],
    decoder: Callable[[bytes], Any],
    content_type: str,
) -> None:
    """Add a serializer to kombu's registry under ``name`` and ``content_type``.

    A server accepts the new content type only when its ``serializer`` or ``accept`` names it.
    """
    registry.register(name, encoder, decoder, content_type, content_encoding="binary")


def content_type_of(name_or_type: str) -> str:
    """Resolve a serializer name (``"json"``) or content type to the content type.

    Raises:
        ValueError: if no such serializer is registered.
    """
    if name_or_type in registry.name_to_type:
        return str(registry.name_to_type[name_or_type])
    if name_or_type in registry.type_to_name:
        return name_or_type
    raise ValueError(
        f"unknown serializer {name_or_type!r}; registered: {sorted(registry.name_to_type)}"
    )


def accept_set(names: Iterable[str]) -> frozenset[str]:
    """Turn serializer names or content types into a set of content types."""
    return frozenset(content_type_of(n) for n in names)


def encode(value: Any, content_type: str) -> bytes:
    """Encode ``value`` with the serializer registered for ``content_type``.

    Raises:
        SerializationError: the value cannot be represented in that format.
    """
    if content_type == MSGPACK:  # the default, straight to msgpack: kombu's registry costs more
        try:
            return _pack_msgpack(value)
        except Exception as exc:
            raise SerializationError(
                f"cannot encode {type(value).__name__} as {content_type}: {exc}") from exc
    try:
        _, _, body = registry.dumps(value, serializer=registry.type_to_name[content_type])
    except (EncodeError, SerializerNotInstalled, KeyError) as exc:
        raise SerializationError(
            f"cannot encode {type(value).__name__} as {content_type}: {exc}"
        ) from exc
    return body if isinstance(body, bytes) else str(body).encode()


def decode(body: bytes, content_type: str | None, accept: frozenset[str]) -> Any:
    """Decode a body whose content type is in ``accept``.

    A missing or unlisted content type is refused outright: kombu would hand back raw bytes for
    a missing one (its trusted ``application/data``), which must never pass for a request.

    Raises:
        BadRequest: the content type is refused or the body does not decode.
    """
    if not body:
        raise BadRequest("empty body")
    if not content_type or content_type not in accept:
        raise BadRequest(
            f"refused content type {content_type!r}; accepted: {sorted(accept)}"
        )
    if content_type == MSGPACK:
        try:
            return _unpack_msgpack(body)
        except Exception as exc:  # msgpack raises several types for malformed input
            raise BadRequest(f"cannot decode {content_type} body: {exc}") from exc
    try:
        return registry.loads(body, content_type, "binary", accept=accept)
    except ContentDisallowed as exc:
        raise BadRequest(f"refused content type {content_type!r}") from exc
    except (DecodeError, SerializerNotInstalled, RecursionError, ValueError) as exc:
        raise BadRequest(f"cannot decode {content_type} body: {exc}") from exc


register_serializer("msgpack", _pack_msgpack, _unpack_msgpack, MSGPACK)
