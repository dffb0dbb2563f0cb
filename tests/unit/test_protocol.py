"""rpc.core.protocol: request and reply envelopes, deadlines and reply addresses (wire protocol v1.1)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from support import pid_address

from rpc.core.errors import BadRequest, RPCError
from rpc.core.protocol import (
    CANCEL_TYPE,
    CONTROL_HEADER,
    CREDIT_TYPE,
    DEADLINE_HEADER,
    DIRECT_REPLY_TO,
    ITEM_TYPE,
    KEEPALIVE_HEADER,
    MAX_CREDIT,
    MAX_SERVER_ID,
    PROGRESS_TYPE,
    REPLY_TYPE,
    STREAM_HEADER,
    Progress,
    Request,
    broadcast_exchange,
    broadcast_queue,
    check_server_id,
    control_message,
    control_of,
    deadline_of,
    decode_reply,
    encode_reply,
    error_body,
    error_reply,
    expiration,
    is_reply_address,
    item_body,
    item_properties,
    keepalive_interval,
    keepalive_properties,
    parse_control,
    parse_item,
    parse_progress,
    parse_reply,
    parse_request,
    progress_body,
    progress_properties,
    reply_content_type,
    reply_origin,
    reply_properties,
    request_body,
    request_properties,
    result_body,
    stream_credit,
)


def test_wire_constants_are_those_of_the_protocol() -> None:
    assert DEADLINE_HEADER == "rpc-deadline"
    assert DIRECT_REPLY_TO == "amq.rabbitmq.reply-to"
    assert REPLY_TYPE == "rpc.reply"


# -- server ids ------------------------------------------------------------------------------------

def test_the_longest_server_id_leaves_its_broadcast_queue_a_name_of_255_bytes() -> None:
    server_id = "é" * (MAX_SERVER_ID // 2)
    assert check_server_id(server_id) == server_id
    assert len(broadcast_queue(broadcast_exchange(server_id)).encode()) == 255


@pytest.mark.parametrize("server_id", ["", "q" * (MAX_SERVER_ID + 1), "é" * 105])
def test_a_server_id_too_long_for_its_broadcast_queue_or_empty_is_a_value_error(
        server_id: str) -> None:
    with pytest.raises(ValueError, match=f"at most {MAX_SERVER_ID} bytes"):
        check_server_id(server_id)


@pytest.mark.parametrize("server_id", [None, 7, b"calc"])
def test_a_server_id_that_is_no_string_is_a_type_error(server_id: Any) -> None:
    with pytest.raises(TypeError):
        check_server_id(server_id)


def test_each_broadcast_queue_name_is_new() -> None:
    assert broadcast_queue("rpc.broadcast.calc") != broadcast_queue("rpc.broadcast.calc")


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
    props = request_properties("c1", "application/x-msgpack", None, 1000.0)
    assert "headers" not in props and "expiration" not in props


def test_deadline_header_is_now_plus_timeout_in_epoch_seconds() -> None:
    headers = request_properties("c1", "application/json", 2.5, 1_700_000_000.25)["headers"]
    assert headers == {DEADLINE_HEADER: 1_700_000_002.75}
    assert isinstance(headers[DEADLINE_HEADER], float)


def test_a_request_s_message_id_is_its_correlation_id_so_a_retry_is_a_repeat() -> None:
    props = request_properties("c1", "application/json", 1.0, 0.0)
    assert props["message_id"] == props["correlation_id"] == "c1"


def test_context_headers_travel_beside_the_deadline() -> None:
    props = request_properties("c1", "application/json", 1.0, 0.0, {"rpc-context": {"a": 1}})
    assert props["headers"] == {DEADLINE_HEADER: 1.0, "rpc-context": {"a": 1}}


def test_expiration_is_the_timeout_in_milliseconds_as_a_string() -> None:
    assert expiration(2.5) == "2500"
    assert expiration(10) == "10000"


def test_expiration_rounds_a_fraction_of_a_millisecond_up() -> None:
    assert expiration(0.0015) == "2"
    assert expiration(1.0001) == "1001"


def test_expiration_is_at_least_one_millisecond() -> None:
    assert expiration(0.0001) == "1"
    assert expiration(1e-12) == "1"


def test_expiration_of_a_whole_number_of_milliseconds_is_exact() -> None:
    assert expiration(16.1) == "16100"
    assert expiration(2.007) == "2007"


def test_deadline_of_reads_what_a_request_carries() -> None:
    props = request_properties("c1", "application/json", 3.0, 1_700_000_000.5)
    assert deadline_of(props["headers"]) == 1_700_000_003.5


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



# -- replies, both sides ---------------------------------------------------------------------------

MSGPACK = "application/x-msgpack"
JSON = "application/json"
ACCEPT = frozenset({MSGPACK, JSON})


def test_a_result_round_trips_through_encode_and_decode_reply() -> None:
    payload, content_type = encode_reply(result_body([1, 2]), MSGPACK, ok=True)
    assert decode_reply(payload, content_type, MSGPACK, ACCEPT) == (True, [1, 2])


def test_a_remote_error_comes_back_as_its_exception() -> None:
    body = error_reply(KeyError("nope"), MSGPACK, include_traceback=False)
    ok, value = decode_reply(*encode_reply(body, MSGPACK, ok=False), MSGPACK, ACCEPT)
    assert not ok and isinstance(value, KeyError)


def test_an_unencodable_result_becomes_a_serialization_error_reply() -> None:
    payload, content_type = encode_reply(result_body(object()), MSGPACK, ok=True)
    ok, value = decode_reply(payload, content_type, MSGPACK, ACCEPT)
    assert not ok and "cannot encode the result" in str(value)


def test_a_result_in_json_is_refused_when_the_call_was_made_in_msgpack() -> None:
    payload, _ = encode_reply(result_body(1), JSON, ok=True)
    ok, value = decode_reply(payload, JSON, MSGPACK, ACCEPT)
    assert not ok and "only errors may come back as JSON" in str(value)


def test_an_oversize_reply_fails_the_call_with_the_limit_named() -> None:
    ok, value = decode_reply(b"", MSGPACK, MSGPACK, ACCEPT, oversize=10, limit=5)
    assert not ok and "limit of 5 bytes" in str(value)


def test_a_reply_goes_in_json_when_the_request_s_type_is_not_accepted() -> None:
    assert reply_content_type("application/x-python-pickle", ACCEPT) == JSON
    assert reply_content_type(MSGPACK, ACCEPT) == MSGPACK


def test_reply_properties_mark_a_reply_as_one() -> None:
    props = reply_properties("c1", MSGPACK, "host:1")
    assert props == {"content_type": MSGPACK, "correlation_id": "c1", "type": REPLY_TYPE,
                     "app_id": "host:1"}


# -- streams (v1.1) --------------------------------------------------------------------------------

def test_a_plain_request_asks_for_no_stream() -> None:
    assert stream_credit(None) is None and stream_credit({"rpc-deadline": 1.0}) is None


def test_a_stream_request_carries_its_initial_credit() -> None:
    assert stream_credit({STREAM_HEADER: 100}) == 100


@pytest.mark.parametrize("credit", [0, -1, MAX_CREDIT + 1, 1.5, "100", True, None], ids=repr)
def test_a_stream_credit_out_of_range_is_a_bad_request(credit: Any) -> None:
    with pytest.raises(BadRequest, match="rpc-stream"):
        stream_credit({STREAM_HEADER: credit})


def test_only_the_first_item_names_the_control_address() -> None:
    first = item_properties("c1", JSON, "calc@h:1", "rpc.broadcast.calc.x")
    later = item_properties("c1", JSON, "calc@h:1", None)
    assert first["headers"] == {CONTROL_HEADER: "rpc.broadcast.calc.x"}
    assert "headers" not in later and later["type"] == first["type"] == ITEM_TYPE


@pytest.mark.parametrize("props, control", [
    (item_properties("c1", JSON, "calc@h:1", "rpc.broadcast.calc.x"), "rpc.broadcast.calc.x"),
    (item_properties("c1", JSON, "calc@h:1", None), None),
    (keepalive_properties("c1", "calc@h:1", "ctl"), "ctl"),
    ({"headers": {CONTROL_HEADER: ""}}, None),
    ({"headers": {CONTROL_HEADER: 7}}, None),
    ({"headers": None}, None),
])
def test_the_control_address_a_message_names_is_read_back(props: Any, control: Any) -> None:
    assert control_of(props) == control


def test_an_item_round_trips() -> None:
    assert parse_item(item_body([1, "a"])) == [1, "a"]
    with pytest.raises(RPCError, match="malformed stream item"):
        parse_item({"result": 1})


def test_a_grant_of_credit_round_trips_in_json() -> None:
    body, props = control_message(CREDIT_TYPE, "c1", 50)
    assert props == {"content_type": JSON, "correlation_id": "c1", "type": CREDIT_TYPE}
    assert parse_control(props["type"], body) == 50


def test_a_cancel_grants_nothing() -> None:
    body, props = control_message(CANCEL_TYPE, "c1")
    assert parse_control(props["type"], body) == 0


@pytest.mark.parametrize("kind, body", [
    ("rpc.other", b"{}"), (CREDIT_TYPE, b"{}"), (CREDIT_TYPE, b'{"credit": 0}'),
    (CREDIT_TYPE, b"[1]"), (CREDIT_TYPE, b"not json"), (CREDIT_TYPE, b'{"credit": 1e9}'),
], ids=repr)
def test_a_malformed_control_message_is_a_bad_request(kind: str, body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_control(kind, body)


# -- keep-alives and progress (v1.1) ---------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    (5, 5.0), (0.5, 0.5), (3600, 3600.0), (0.1, None), (4000, None), ("5", None), (True, None),
    (None, None),
], ids=repr)
def test_a_keepalive_interval_out_of_range_is_ignored(value: Any, expected: float | None) -> None:
    assert keepalive_interval({KEEPALIVE_HEADER: value}) == expected


def test_a_request_without_the_header_asks_for_no_keepalives() -> None:
    assert keepalive_interval(None) is None and keepalive_interval({}) is None


def test_keepalives_and_progress_name_the_control_address() -> None:
    assert keepalive_properties("c1", "calc@h:1", "ctl")["headers"] == {CONTROL_HEADER: "ctl"}
    props = progress_properties("c1", JSON, "calc@h:1", "ctl")
    assert props["type"] == PROGRESS_TYPE and props["headers"] == {CONTROL_HEADER: "ctl"}


def test_progress_round_trips() -> None:
    assert parse_progress(progress_body(3, 10, "rows")) == Progress(3, 10, "rows")
    assert parse_progress(progress_body(0.5, None, "")) == Progress(0.5)


@pytest.mark.parametrize("body", [None, [], {"done": "3"}, {"done": 1, "total": "x"},
                                  {"done": True}, {"done": 1, "message": 5}], ids=repr)
def test_malformed_progress_is_refused(body: Any) -> None:
    with pytest.raises(RPCError, match="malformed progress"):
        parse_progress(body)


# -- where a direct reply-to address leads -----------------------------------------------------------

#: An address RabbitMQ 3.10 gave a caller: its channel's pid, node name recomposed.
REAL_ADDRESS = "amq.rabbitmq.reply-to.g1h2AA1yZXBseUA5MjQ4ODg0AAANzgAAAAJrDjcQ.UEavM+Xe7EH8NZT8wr55ow=="


def test_a_direct_reply_to_address_names_the_node_lifetime_of_its_caller() -> None:
    assert reply_origin(REAL_ADDRESS) == "reply@9248884/6b0e3710"


def test_callers_of_one_node_lifetime_share_their_origin() -> None:
    assert reply_origin(pid_address("reply@1", 10, 7)) == reply_origin(pid_address("reply@1", 11, 7))


def test_a_restarted_node_is_another_origin() -> None:
    assert reply_origin(pid_address("reply@1", 10, 7)) != reply_origin(pid_address("reply@1", 10, 8))


@pytest.mark.parametrize("address", [
    "amq.gen-JzTY20BRgKO-HjmUJj0wLg",
    "amq.rabbitmq.reply-to",
    "amq.rabbitmq.reply-to.!!!.key",
    "amq.rabbitmq.reply-to.g1h2AA5yZXBseUAxMjM0NTY3OAAAAAAAAAAB",  # no creation
    REAL_ADDRESS.replace("g1h2", "g2h2"),  # not a pid
])
def test_other_addresses_have_no_origin(address: str) -> None:
    assert reply_origin(address) is None
