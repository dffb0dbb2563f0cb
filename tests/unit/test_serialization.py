"""rpc.core.serialization: kombu-backed serializers, strict accept sets, and refusing bad bodies."""

from __future__ import annotations

import datetime
import json
import os
import pickle
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from kombu.serialization import registry as kombu_registry

import rpc
from rpc.core.errors import BadRequest, SerializationError
from rpc.core.serialization import (
    DEFAULT_ACCEPT,
    JSON,
    MSGPACK,
    PICKLE,
    accept_set,
    content_type_of,
    decode,
    encode,
    register_serializer,
)

ALL = frozenset({MSGPACK, JSON, PICKLE})

REQUEST = {"method": "math.mul", "args": [2, 4.5, "é", None, True, [1, [2]], {"k": "v"}],
           "kwargs": {"z": -1}}


class TouchOnUnpickle:
    """A payload that creates ``path`` (a directory) when unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


def round_trip(value: Any, content_type: str) -> Any:
    return decode(encode(value, content_type), content_type, frozenset({content_type}))


# -- content types ---------------------------------------------------------------------------------

def test_content_types_are_kombus() -> None:
    assert (MSGPACK, JSON, PICKLE) == (
        "application/x-msgpack", "application/json", "application/x-python-serialize")


def test_default_accept_is_msgpack_and_json_without_pickle() -> None:
    assert DEFAULT_ACCEPT == {MSGPACK, JSON}


@pytest.mark.parametrize("name, content_type", [
    ("msgpack", MSGPACK), ("json", JSON), ("pickle", PICKLE),
])
def test_content_type_of_a_serializer_name(name: str, content_type: str) -> None:
    assert content_type_of(name) == content_type


@pytest.mark.parametrize("content_type", [MSGPACK, JSON, PICKLE])
def test_content_type_of_a_content_type_is_itself(content_type: str) -> None:
    assert content_type_of(content_type) == content_type


@pytest.mark.parametrize("unknown", ["", "xml", "MSGPACK", "application/xml", "text/plain",
                                     "application/data", "raw"])
def test_content_type_of_an_unknown_serializer_is_a_value_error(unknown: str) -> None:
    with pytest.raises(ValueError, match="unknown serializer"):
        content_type_of(unknown)


def test_accept_set_mixes_names_and_content_types() -> None:
    assert accept_set(["json", MSGPACK, "pickle"]) == ALL


def test_accept_set_of_nothing_is_empty() -> None:
    assert accept_set([]) == frozenset()


def test_accept_set_with_an_unknown_name_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        accept_set(["json", "nope"])


# -- round trips -----------------------------------------------------------------------------------

@pytest.mark.parametrize("content_type", [MSGPACK, JSON, PICKLE])
def test_a_request_body_round_trips(content_type: str) -> None:
    assert round_trip(REQUEST, content_type) == REQUEST


@pytest.mark.parametrize("content_type", [MSGPACK, JSON, PICKLE])
@pytest.mark.parametrize("value", [
    None, True, 0, -1, 2**63 - 1, -(2**63), 1.5, "", "ünïcødé ✓", [], {}, [None, [[]]],
    {"nested": {"deeper": [1, 2, {"x": "y"}]}},
], ids=repr)
def test_plain_values_round_trip(content_type: str, value: Any) -> None:
    assert round_trip(value, content_type) == value


@pytest.mark.parametrize("content_type", [MSGPACK, JSON, PICKLE])
def test_bytes_round_trip(content_type: str) -> None:
    assert round_trip({"data": b"\x00\xff raw"}, content_type) == {"data": b"\x00\xff raw"}


@pytest.mark.parametrize("content_type", [MSGPACK, JSON])
def test_tuples_come_back_as_lists(content_type: str) -> None:
    assert round_trip({"t": (1, 2)}, content_type) == {"t": [1, 2]}


def test_pickle_round_trips_arbitrary_objects() -> None:
    value = {"point": Point(1, 2), "when": datetime.date(2024, 1, 2), "set": {1, 2}}
    assert round_trip(value, PICKLE) == value


def test_json_encodes_to_utf8_bytes() -> None:
    body = encode({"s": "é"}, JSON)
    assert isinstance(body, bytes)
    assert json.loads(body.decode("utf-8")) == {"s": "é"}


def test_msgpack_encodes_what_any_msgpack_decoder_reads() -> None:
    body = encode(REQUEST, MSGPACK)
    assert msgpack.unpackb(body, raw=False) == REQUEST


def test_a_large_value_round_trips() -> None:
    value = {"blob": b"x" * 3_000_000, "items": list(range(100_000))}
    assert round_trip(value, MSGPACK) == value


def test_python_integers_beyond_64_bits_round_trip_in_json() -> None:
    assert round_trip(2**100, JSON) == 2**100


@pytest.mark.parametrize("value", [{1: "a"}, {"outer": {2.5: "b"}}, {None: 1}], ids=repr)
def test_what_msgpack_encodes_it_decodes(value: Any) -> None:
    try:
        body = encode(value, MSGPACK)
    except SerializationError:
        return  # refusing to encode is fine; encoding what cannot be decoded is not
    assert decode(body, MSGPACK, DEFAULT_ACCEPT) == value


# -- encode failures -------------------------------------------------------------------------------

@pytest.mark.parametrize("content_type", [MSGPACK, JSON])
@pytest.mark.parametrize("value", [object(), {1, 2}, Point(1, 2), {"f": print}, [lambda: 0]],
                         ids=lambda v: type(v).__name__)
def test_encoding_an_unencodable_value_is_a_serialization_error(
    content_type: str, value: Any,
) -> None:
    with pytest.raises(SerializationError, match="cannot encode"):
        encode(value, content_type)


def test_encoding_an_integer_beyond_64_bits_in_msgpack_is_a_serialization_error() -> None:
    with pytest.raises(SerializationError):
        encode(2**64, MSGPACK)


def test_encoding_an_unpicklable_value_is_a_serialization_error() -> None:
    with pytest.raises(SerializationError):
        encode({"f": lambda: 0}, PICKLE)


@pytest.mark.parametrize("content_type", [MSGPACK, JSON])
def test_encoding_a_self_referencing_value_is_a_serialization_error(content_type: str) -> None:
    value: list[Any] = []
    value.append(value)
    with pytest.raises(SerializationError):
        encode(value, content_type)


def test_a_failed_msgpack_encoding_leaves_nothing_behind_for_the_next() -> None:
    with pytest.raises(SerializationError):
        encode(["partly", object()], MSGPACK)
    assert msgpack.unpackb(encode(["next"], MSGPACK)) == ["next"]


def test_a_value_that_encodes_while_it_is_encoded_gets_both_encodings_whole() -> None:
    class Lazy(dict):  # type: ignore[type-arg]
        """A dict whose items are encoded by the time they are read."""

        def items(self) -> Any:
            return [("inner", encode(["nested", 1], MSGPACK))]

    body = encode({"outer": Lazy(x=1)}, MSGPACK)
    assert msgpack.unpackb(body) == {"outer": {"inner": msgpack.packb(["nested", 1])}}


def test_threads_encode_at_once_without_mixing_their_bytes() -> None:
    values = {n: ["thread", n, "x" * (n * 100)] for n in range(8)}
    bodies: dict[int, list[bytes]] = {n: [] for n in values}

    def encode_many(n: int) -> None:
        for _ in range(2000):
            bodies[n].append(encode(values[n], MSGPACK))

    threads = [threading.Thread(target=encode_many, args=(n,)) for n in values]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for n, encoded in bodies.items():
        assert {msgpack.unpackb(body) == values[n] for body in encoded} == {True}


def test_encoding_with_an_unknown_content_type_is_a_serialization_error() -> None:
    with pytest.raises(SerializationError):
        encode({"a": 1}, "application/x-nothing")


def test_a_serialization_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        encode(object(), JSON)


# -- refused content types -------------------------------------------------------------------------

@pytest.mark.parametrize("content_type", [
    None, "", "application/data", "application/text", "text/plain", "application/x-yaml",
    "application/octet-stream", PICKLE,
], ids=repr)
def test_a_missing_or_unlisted_content_type_is_a_bad_request(content_type: Any) -> None:
    with pytest.raises(BadRequest, match="refused content type"):
        decode(encode(REQUEST, JSON), content_type, DEFAULT_ACCEPT)


def test_a_content_type_not_in_a_narrow_accept_set_is_refused() -> None:
    with pytest.raises(BadRequest):
        decode(encode(REQUEST, MSGPACK), MSGPACK, frozenset({JSON}))


def test_an_empty_accept_set_refuses_everything() -> None:
    with pytest.raises(BadRequest):
        decode(encode(REQUEST, JSON), JSON, frozenset())


def test_a_refused_pickle_payload_is_not_executed(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    body = pickle.dumps(TouchOnUnpickle(str(target)))
    with pytest.raises(BadRequest):
        decode(body, PICKLE, DEFAULT_ACCEPT)
    assert not target.exists()


def test_a_pickle_payload_labelled_as_another_type_is_not_executed(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    body = pickle.dumps(TouchOnUnpickle(str(target)))
    for content_type in (JSON, MSGPACK, None, "application/data"):
        with pytest.raises(BadRequest):
            decode(body, content_type, DEFAULT_ACCEPT)
    assert not target.exists()


def test_an_accepted_pickle_payload_is_unpickled(tmp_path: Path) -> None:
    # The control for the two tests above: the payload does act when pickle is accepted.
    target = tmp_path / "pwned"
    decode(pickle.dumps(TouchOnUnpickle(str(target))), PICKLE, ALL)
    assert target.is_dir()


def test_accepting_pickle_in_one_call_does_not_enable_it_for_the_next(tmp_path: Path) -> None:
    decode(pickle.dumps({"a": 1}), PICKLE, ALL)
    target = tmp_path / "pwned"
    with pytest.raises(BadRequest):
        decode(pickle.dumps(TouchOnUnpickle(str(target))), PICKLE, DEFAULT_ACCEPT)
    assert not target.exists()


# -- bodies that do not decode ---------------------------------------------------------------------

@pytest.mark.parametrize("content_type, body", [
    (JSON, b"{not json"),
    (JSON, b"\xff\xfe\x00garbage"),
    (JSON, b'{"method": "add"'),
    (JSON, b"NaN trailing"),
    (MSGPACK, b"\xc1"),
    (MSGPACK, b"\x92\x01"),
    (MSGPACK, msgpack.packb({"a": 1}) + b"\x00trailing"),
    (PICKLE, b"not a pickle"),
], ids=repr)
def test_an_undecodable_body_is_a_bad_request(content_type: str, body: bytes) -> None:
    with pytest.raises(BadRequest, match="cannot decode"):
        decode(body, content_type, ALL)


@pytest.mark.parametrize("content_type", [JSON, MSGPACK])
def test_an_empty_body_is_a_bad_request(content_type: str) -> None:
    with pytest.raises(BadRequest):
        decode(b"", content_type, DEFAULT_ACCEPT)


def test_deeply_nested_json_is_a_bad_request() -> None:
    body = b"[" * 200_000 + b"]" * 200_000
    with pytest.raises(BadRequest):
        decode(body, JSON, DEFAULT_ACCEPT)


def test_deeply_nested_json_objects_are_a_bad_request() -> None:
    body = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    with pytest.raises(BadRequest):
        decode(body, JSON, DEFAULT_ACCEPT)


def test_deeply_nested_msgpack_is_a_bad_request() -> None:
    body = b"\x91" * 200_000 + b"\xc0"  # 200,000 nested one-element arrays around nil
    with pytest.raises(BadRequest):
        decode(body, MSGPACK, DEFAULT_ACCEPT)


def test_json_integer_of_5000_digits_is_a_bad_request() -> None:
    body = b'{"method": "add", "args": [' + b"7" * 5000 + b"], \"kwargs\": {}}"
    with pytest.raises(BadRequest):
        decode(body, JSON, DEFAULT_ACCEPT)


def test_a_bad_request_from_decoding_keeps_the_cause() -> None:
    with pytest.raises(BadRequest) as info:
        decode(b"{", JSON, DEFAULT_ACCEPT)
    assert info.value.__cause__ is not None


# -- register_serializer ---------------------------------------------------------------------------

@pytest.fixture
def reversed_json() -> Iterator[tuple[str, str]]:
    """A custom serializer (JSON written backwards), removed from kombu's registry afterwards."""
    name = f"rpc-test-{uuid.uuid4().hex[:8]}"
    content_type = f"application/x-{name}"
    register_serializer(
        name,
        lambda value: json.dumps(value).encode()[::-1],
        lambda body: json.loads(bytes(body)[::-1]),
        content_type,
    )
    try:
        yield name, content_type
    finally:
        kombu_registry.unregister(name)


def test_register_serializer_is_exported_from_the_package() -> None:
    assert rpc.register_serializer is register_serializer


def test_a_registered_serializer_is_known_by_name_and_content_type(
    reversed_json: tuple[str, str],
) -> None:
    name, content_type = reversed_json
    assert content_type_of(name) == content_type
    assert content_type_of(content_type) == content_type
    assert accept_set([name, "json"]) == {content_type, JSON}


def test_a_registered_serializer_encodes_with_its_encoder(reversed_json: tuple[str, str]) -> None:
    _, content_type = reversed_json
    assert encode({"a": 1}, content_type) == b'}1 :"a"{'


def test_a_registered_serializer_round_trips(reversed_json: tuple[str, str]) -> None:
    _, content_type = reversed_json
    assert round_trip(REQUEST, content_type) == REQUEST


def test_a_registered_serializer_is_refused_unless_accepted(
    reversed_json: tuple[str, str],
) -> None:
    _, content_type = reversed_json
    with pytest.raises(BadRequest, match="refused"):
        decode(encode(REQUEST, content_type), content_type, DEFAULT_ACCEPT)


def test_a_registered_serializer_failing_to_decode_is_a_bad_request(
    reversed_json: tuple[str, str],
) -> None:
    _, content_type = reversed_json
    with pytest.raises(BadRequest):
        decode(b"not reversed json", content_type, frozenset({content_type}))


def test_a_registered_serializer_failing_to_encode_is_a_serialization_error(
    reversed_json: tuple[str, str],
) -> None:
    _, content_type = reversed_json
    with pytest.raises(SerializationError):
        encode(object(), content_type)
