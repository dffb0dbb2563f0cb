"""rpc.server.introspection and registration on a Server that is constructed but never started."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import pytest

from rpc import InvalidArguments, MethodNotFound, Server
from rpc.core.serialization import JSON, MSGPACK, PICKLE

# Nothing listens here: constructing a Server must not try to connect.
UNREACHABLE = "amqp://user:s3cret@127.0.0.1:1//"

SYSTEM_METHODS = ["system.list_methods", "system.method_help", "system.method_signature",
                  "system.ping", "system.stats"]


def scale(value, factor=2):  # type: ignore[no-untyped-def]
    """Multiply value by factor.

    The factor defaults to two.
    """
    return value * factor


def undocumented(a, /, b, *rest, key, **extra):  # type: ignore[no-untyped-def]
    return a


class Calc:
    def mul(self, a, b):  # type: ignore[no-untyped-def]
        """Product of a and b."""
        return a * b


@pytest.fixture
def server() -> Server:
    server = Server(UNREACHABLE, server_id="unit-calc")
    server.register_function(scale)
    server.register_function(undocumented)
    server.register_function(max)  # a builtin without a readable signature
    server.register_instance(Calc(), "calc")
    return server


def system(server: Server, name: str) -> Any:
    """A ``system.*`` method as a proxy would reach it: through the registry."""
    method = server.registry.resolve(f"system.{name}")
    return method.func


# -- constructing does not connect -----------------------------------------------------------------

def test_constructing_a_server_does_not_connect() -> None:
    started = time.monotonic()
    server = Server(UNREACHABLE, server_id="unit-calc")
    assert time.monotonic() - started < 1.0
    assert not server.running


def test_a_constructed_server_shows_its_url_without_the_password() -> None:
    text = repr(Server(UNREACHABLE, server_id="unit-calc"))
    assert "s3cret" not in text
    assert "user:**@127.0.0.1:1" in text
    assert "stopped" in text


# -- system.* methods ------------------------------------------------------------------------------

def test_a_server_answers_the_system_methods_by_default() -> None:
    assert Server(UNREACHABLE).registry.names() == SYSTEM_METHODS


def test_introspection_can_be_turned_off() -> None:
    assert Server(UNREACHABLE, introspection=False).registry.names() == []


def test_the_system_instance_exposes_nothing_private() -> None:
    registry = Server(UNREACHABLE).registry
    for name in ("system._server", "system._started", "system.__init__", "system"):
        with pytest.raises(MethodNotFound):
            registry.resolve(name)


def test_list_methods_lists_every_method_sorted(server: Server) -> None:
    assert system(server, "list_methods")() == sorted(
        ["calc.mul", "max", "scale", "undocumented", *SYSTEM_METHODS])


def test_list_methods_sees_methods_registered_later(server: Server) -> None:
    server.register_function(scale, "later")
    assert "later" in system(server, "list_methods")()


def test_method_help_is_the_cleaned_docstring(server: Server) -> None:
    assert system(server, "method_help")("scale") == (
        "Multiply value by factor.\n\nThe factor defaults to two.")


def test_method_help_of_an_instance_method(server: Server) -> None:
    assert system(server, "method_help")("calc.mul") == "Product of a and b."


def test_method_help_without_a_docstring_is_empty(server: Server) -> None:
    assert system(server, "method_help")("undocumented") == ""


def test_method_help_of_a_system_method(server: Server) -> None:
    assert "sorted" in system(server, "method_help")("system.list_methods")


def test_method_signature_is_the_parameter_list(server: Server) -> None:
    assert system(server, "method_signature")("scale") == "(value, factor=2)"


def test_method_signature_of_every_parameter_kind(server: Server) -> None:
    assert system(server, "method_signature")("undocumented") == (
        "(a, /, b, *rest, key, **extra)")


def test_method_signature_of_an_instance_method_leaves_out_self(server: Server) -> None:
    assert system(server, "method_signature")("calc.mul") == "(a, b)"


def test_method_signature_that_cannot_be_read_is_empty(server: Server) -> None:
    assert system(server, "method_signature")("max") == ""


@pytest.mark.parametrize("method", ["method_help", "method_signature"])
@pytest.mark.parametrize("name", ["nothing", "calc", "calc.__init__", "scale.__globals__",
                                  "system._server", ""])
def test_asking_about_an_unknown_or_private_name_is_method_not_found(
    server: Server, method: str, name: str,
) -> None:
    with pytest.raises(MethodNotFound):
        system(server, method)(name)


@pytest.mark.parametrize("method", ["method_help", "method_signature"])
def test_asking_about_a_name_that_is_not_a_string_is_method_not_found(
    server: Server, method: str,
) -> None:
    with pytest.raises(MethodNotFound):
        system(server, method)(["scale"])


def test_ping_says_who_answered(server: Server) -> None:
    answer = system(server, "ping")()
    assert set(answer) == {"server_id", "host", "pid", "uptime"}
    assert answer["server_id"] == "unit-calc"
    assert answer["host"] == socket.gethostname()
    assert answer["pid"] == os.getpid()


def test_ping_uptime_counts_seconds_since_construction(server: Server) -> None:
    first = system(server, "ping")()["uptime"]
    time.sleep(0.05)
    second = system(server, "ping")()["uptime"]
    assert isinstance(first, float)
    assert 0 <= first < 60
    assert second >= first + 0.04


def test_system_methods_check_their_arguments(server: Server) -> None:
    with pytest.raises(InvalidArguments):
        server.registry.resolve("system.ping").check_arguments(("extra",), {})
    with pytest.raises(InvalidArguments):
        server.registry.resolve("system.method_help").check_arguments((), {})


# -- registering on a Server -----------------------------------------------------------------------

def test_register_function_returns_the_function() -> None:
    server = Server(UNREACHABLE)
    assert server.register_function(scale) is scale
    assert server.registry.resolve("scale").func is scale


def test_register_function_under_an_explicit_name() -> None:
    server = Server(UNREACHABLE)
    server.register_function(scale, "times")
    assert "times" in server.registry
    assert "scale" not in server.registry


def test_register_function_of_something_not_callable_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        Server(UNREACHABLE).register_function(42)  # type: ignore[arg-type]


def test_register_instance_returns_the_names_it_added() -> None:
    assert Server(UNREACHABLE).register_instance(Calc(), "calc") == ["calc.mul"]


def test_register_class_is_an_alias_of_register_instance() -> None:
    server = Server(UNREACHABLE)
    assert server.register_class(Calc(), "c") == ["c.mul"]
    assert Server.register_class is Server.register_instance


def test_expose_registers_a_function_under_its_name() -> None:
    server = Server(UNREACHABLE)

    @server.expose
    def add(a, b):  # type: ignore[no-untyped-def]
        return a + b

    assert server.registry.resolve("add").func is add
    assert add(2, 3) == 5


def test_expose_with_a_name_registers_under_that_name() -> None:
    server = Server(UNREACHABLE)

    @server.expose("plus")
    def add(a, b):  # type: ignore[no-untyped-def]
        return a + b

    assert server.registry.resolve("plus").func is add
    assert "add" not in server.registry
    assert add(2, 3) == 5


def test_expose_with_a_private_name_is_a_value_error() -> None:
    server = Server(UNREACHABLE)
    with pytest.raises(ValueError):
        @server.expose("_hidden")
        def add(a, b):  # type: ignore[no-untyped-def]
            return a + b


# -- constructor options ---------------------------------------------------------------------------

def test_a_server_accepts_msgpack_and_json_but_not_pickle_by_default() -> None:
    assert Server(UNREACHABLE).accept == {MSGPACK, JSON}


def test_serializer_pickle_adds_pickle_to_the_defaults() -> None:
    assert Server(UNREACHABLE, serializer="pickle").accept == {MSGPACK, JSON, PICKLE}


def test_accept_replaces_the_defaults() -> None:
    assert Server(UNREACHABLE, accept=["json"]).accept == {JSON}
    assert Server(UNREACHABLE, accept=[PICKLE, "msgpack"]).accept == {PICKLE, MSGPACK}


def test_an_unknown_serializer_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        Server(UNREACHABLE, serializer="xml")
    with pytest.raises(ValueError):
        Server(UNREACHABLE, accept=["json", "nope"])


@pytest.mark.parametrize("server_id", ["", "q" * 209, "é" * 105])
def test_a_server_id_that_its_names_cannot_hold_is_a_value_error(server_id: str) -> None:
    with pytest.raises(ValueError, match="at most 208 bytes"):
        Server(UNREACHABLE, server_id=server_id)


def test_a_server_id_that_is_no_string_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="server_id must be a string"):
        Server(UNREACHABLE, server_id=7)  # type: ignore[arg-type]


def test_a_server_id_of_208_bytes_is_accepted() -> None:
    assert Server(UNREACHABLE, server_id="q" * 208).server_id == "q" * 208


def test_concurrency_below_one_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        Server(UNREACHABLE, concurrency=0)


def test_prefetch_defaults_to_a_multiple_of_concurrency() -> None:
    one, four = Server(UNREACHABLE).prefetch_count, Server(UNREACHABLE, concurrency=4).prefetch_count
    assert one >= 1
    assert four == 4 * one


def test_an_explicit_prefetch_is_kept() -> None:
    assert Server(UNREACHABLE, concurrency=4, prefetch=3).prefetch_count == 3


def test_prefetch_below_one_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        Server(UNREACHABLE, prefetch=0)


def test_a_url_and_url_pieces_together_are_a_value_error() -> None:
    with pytest.raises(ValueError):
        Server(UNREACHABLE, hostname="other")


def test_the_default_server_id_is_calc() -> None:
    assert Server(UNREACHABLE).server_id == "calc"
