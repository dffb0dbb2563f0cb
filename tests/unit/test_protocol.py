"""rpc.core.protocol: request and reply envelopes, deadlines and reply addresses (wire protocol v1)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from rpc.core.errors import BadRequest, RPCError
from rpc.core.protocol import (
    DEADLINE_HEADER,
    DIRECT_REPLY_TO,
    REPLY_TYPE,
    Request,
    deadline_headers,
    deadline_of,
    error_body,
    is_reply_address,
    parse_reply,
    parse_request,
    request_body,
    result_body,
)


def test_wire_constants_are_those_of_the_protocol() -> None:
    assert DEADLINE_HEADER == "rpc-deadline"
    assert DIRECT_REPLY_TO == "amq.rabbitmq.reply-to"
    assert REPLY_TYPE == "rpc.reply"


# -- requests --------------------------------------------------------------------------------------

def test_request_body_has_method_args_and_kwargs() -> None:
    assert request_body("math.mul", (2, 4), {"z": 1}) == {
        "method": "math.mul", "args": [2, 4], "kwargs": {"z": 1},
    }


def test_request_body_args_are_a_list() -> None:
    assert isinstance(request_body("f", (1,), {})["args"], list)


def test_parse_request_returns_method_args_and_kwargs() -> None:
    request = parse_request({"method": "add", "args": [2, 3], "kwargs": {"c": 4}})
    assert request == Request("add", (2, 3), {"c": 4})


def test_parse_request_reads_what_request_body_writes() -> None:
    request = parse_request(request_body("math.mul", (2, 4), {"z": None}))
    assert (request.method, request.args, request.kwargs) == ("math.mul", (2, 4), {"z": None})


def test_parse_request_turns_args_into_a_tuple() -> None:
    assert parse_request({"method": "f", "args": [1, [2]], "kwargs": {}}).args == (1, [2])


def test_parse_request_accepts_args_as_a_tuple() -> None:
    assert parse_request({"method": "f", "args": (1, 2), "kwargs": {}}).args == (1, 2)


def test_parse_request_defaults_missing_args_and_kwargs_to_empty() -> None:
    assert parse_request({"method": "f"}) == Request("f", (), {})


def test_parse_request_ignores_unknown_members() -> None:
    assert parse_request({"method": "f", "args": [], "kwargs": {}, "extra": 1}).method == "f"


@pytest.mark.parametrize("body", [
    None, [], ["add", [1], {}], "add", b"add", 5, 1.5, True, ("add",),
], ids=repr)
def test_request_that_is_not_a_map_is_a_bad_request(body: Any) -> None:
    with pytest.raises(BadRequest, match="must be a map"):
        parse_request(body)


@pytest.mark.parametrize("body", [
    {}, {"args": [], "kwargs": {}}, {"method": None}, {"method": ""}, {"method": 5},
    {"method": ["add"]}, {"method": b"add"}, {"method": {"name": "add"}}, {"method": True},
], ids=repr)
def test_request_without_a_method_name_string_is_a_bad_request(body: Any) -> None:
    with pytest.raises(BadRequest, match="method name"):
        parse_request(body)


@pytest.mark.parametrize("args", [None, {"a": 1}, "12", b"12", 12, 1.0, True], ids=repr)
def test_request_args_that_are_not_a_list_are_a_bad_request(args: Any) -> None:
    with pytest.raises(BadRequest, match="args must be a list"):
        parse_request({"method": "f", "args": args, "kwargs": {}})


@pytest.mark.parametrize("kwargs", [
    None, [], [["a", 1]], "a=1", 5, {1: "a"}, {"a": 1, 2: "b"}, {b"a": 1}, {None: 1},
], ids=repr)
def test_request_kwargs_that_are_not_a_map_with_string_keys_are_a_bad_request(
    kwargs: Any,
) -> None:
    with pytest.raises(BadRequest, match="kwargs must be a map"):
        parse_request({"method": "f", "args": [], "kwargs": kwargs})


def test_a_bad_request_is_an_rpc_error_and_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_request({"method": 1})
    with pytest.raises(RPCError):
        parse_request({"method": 1})


# -- replies ---------------------------------------------------------------------------------------

def test_result_body_wraps_the_value() -> None:
    assert result_body([1, 2]) == {"result": [1, 2]}


def test_error_body_wraps_the_error_member() -> None:
    error = {"type": "ValueError", "message": "m", "args": ["m"], "traceback": ""}
    assert error_body(error) == {"error": error}


def test_parse_reply_of_a_result_is_ok_with_the_value() -> None:
    assert parse_reply({"result": {"a": 1}}) == (True, {"a": 1})


def test_parse_reply_of_a_none_result_is_ok() -> None:
    assert parse_reply(result_body(None)) == (True, None)


def test_parse_reply_of_an_error_is_not_ok_with_the_error_member() -> None:
    error = {"type": "ValueError", "message": "m", "args": ["m"], "traceback": ""}
    assert parse_reply(error_body(error)) == (False, error)


def test_parse_reply_with_both_members_is_an_error() -> None:
    assert parse_reply({"result": 1, "error": {"type": "X"}}) == (False, {"type": "X"})


@pytest.mark.parametrize("body", [None, {}, {"value": 1}, [1], "result", b"", 0], ids=repr)
def test_malformed_reply_raises_rpc_error(body: Any) -> None:
    with pytest.raises(RPCError, match="malformed reply"):
        parse_reply(body)


# -- deadlines -------------------------------------------------------------------------------------

def test_no_timeout_means_no_headers_and_no_expiration() -> None:
    assert deadline_headers(None, 1000.0) == (None, None)


def test_deadline_header_is_now_plus_timeout_in_epoch_seconds() -> None:
    headers, _ = deadline_headers(2.5, 1_700_000_000.25)
    assert headers == {DEADLINE_HEADER: 1_700_000_002.75}
    assert isinstance(headers[DEADLINE_HEADER], float)


def test_expiration_is_the_timeout_in_milliseconds_as_a_string() -> None:
    assert deadline_headers(2.5, 0.0)[1] == "2500"
    assert deadline_headers(10, 0.0)[1] == "10000"


def test_expiration_rounds_a_fraction_of_a_millisecond_up() -> None:
    assert deadline_headers(0.0015, 0.0)[1] == "2"
    assert deadline_headers(1.0001, 0.0)[1] == "1001"


def test_expiration_is_at_least_one_millisecond() -> None:
    assert deadline_headers(0.0001, 0.0)[1] == "1"
    assert deadline_headers(1e-12, 0.0)[1] == "1"


def test_expiration_of_a_whole_number_of_milliseconds_is_exact() -> None:
    assert deadline_headers(16.1, 0.0)[1] == "16100"
    assert deadline_headers(2.007, 0.0)[1] == "2007"


def test_deadline_of_reads_what_deadline_headers_writes() -> None:
    headers, _ = deadline_headers(3.0, 1_700_000_000.5)
    assert deadline_of(headers) == 1_700_000_003.5


@pytest.mark.parametrize("value, expected", [
    (1_700_000_000.5, 1_700_000_000.5), (1_700_000_000, 1_700_000_000.0), (0, 0.0),
    (-5.0, -5.0), ("1700000000.5", 1_700_000_000.5), (b"1700000000.5", 1_700_000_000.5),
    (" 12.5 ", 12.5),
], ids=repr)
def test_deadline_of_reads_numbers_and_numeric_strings(value: Any, expected: float) -> None:
    deadline = deadline_of({DEADLINE_HEADER: value})
    assert deadline == expected
    assert isinstance(deadline, float)


@pytest.mark.parametrize("headers", [None, {}, {"other": 1.0}, {DEADLINE_HEADER: None}],
                         ids=repr)
def test_deadline_of_without_a_deadline_is_none(headers: Any) -> None:
    assert deadline_of(headers) is None


@pytest.mark.parametrize("value", [
    math.nan, math.inf, -math.inf, "nan", "NaN", "inf", "-inf", "Infinity", "1e400", "soon",
    "", "12 s", b"\xff", b"nan", True, False, [1.0], {"at": 1.0}, (1.0,), object(),
], ids=repr)
def test_unreadable_deadline_counts_as_none(value: Any) -> None:
    assert deadline_of({DEADLINE_HEADER: value}) is None


def test_integer_deadline_too_large_for_a_float_counts_as_none() -> None:
    assert deadline_of({DEADLINE_HEADER: 10**400}) is None


# -- reply addresses -------------------------------------------------------------------------------

@pytest.mark.parametrize("address", [
    "amq.rabbitmq.reply-to.g1h2AA5yZXBseUAyNzM2NjQ4NwAAIWsAAAAAXZ7eDw==",
    "amq.rabbitmq.reply-to.g1h2AAxyYWJiaXRAbG9jYWxob3N0AAAB+wAAAABn0Zj/",
    "amq.rabbitmq.reply-to.abc",
    "amq.gen-JzTY20BRgKO-HjmUJj0wLg",
    "amq.gen-x",
], ids=repr)
def test_reply_addresses_of_direct_reply_to_and_server_named_queues_are_accepted(
    address: str,
) -> None:
    assert is_reply_address(address)


@pytest.mark.parametrize("address", [
    "calc", "", "reply", "amq.rabbitmq.reply-to", "amq.rabbitmq.reply-to.", "amq.gen-",
    "amq.gen", "amq.direct", "amq.gen-abc.def", "xamq.gen-abc", " amq.gen-abc", "amq.gen-abc ",
    "amq.gen-a b", "amq.gen-abc\n", "amq.gen-abc\ncalc", "amq.rabbitmq.reply-to.abc\n",
    "amq.rabbitmq.reply-to.a b", "amq.rabbitmq.reply-to.abc\x00", "AMQ.GEN-abc",
    "amq.rabbitmq.reply-to-abc", "amq.gen-abc/def", "celery", "test-0123abcd",
], ids=repr)
def test_anything_else_is_not_a_reply_address(address: str) -> None:
    assert not is_reply_address(address)

