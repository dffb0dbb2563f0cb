"""Synchronous calls: registration forms, arguments and serializers, on RabbitMQ and memory://."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import pytest

import rpc
from rpc import InvalidArguments, MethodNotFound, Server


class Math:
    factor = 10

    def mul(self, a, b):
        return a * b

    def scaled(self, a):
        return a * self.factor

    @staticmethod
    def neg(a):
        return -a

    @property
    def secret(self):
        return "never reachable"

    def _private(self):
        return "never reachable"


def add(a, b=0):
    return a + b


def calculator(server: Server) -> None:
    server.register_function(add)
    server.register_function(add, "plus")
    server.register_instance(Math(), "math")

    @server.expose
    def echo(value):
        return value

    @server.expose("concat")
    def _concat(*parts, sep=""):
        return sep.join(parts)

    @server.expose
    def raise_type_error():
        raise TypeError("raised inside the function")


@pytest.fixture
def proxy(make_server, make_proxy):
    make_server(register=calculator)
    return make_proxy()


def test_function_call_returns_the_result(proxy):
    assert proxy.add(2, 3) == 5


def test_keyword_arguments_are_passed(proxy):
    assert proxy.add(a=2, b=5) == 7
    assert proxy.add(2) == 2


def test_function_registered_under_another_name(proxy):
    assert proxy.plus(1, 1) == 2


def test_instance_method_is_called_by_dotted_name(proxy):
    assert proxy.math.mul(2, 4) == 8
    assert proxy.math.scaled(3) == 30
    assert proxy.math.neg(5) == -5


def test_decorator_forms_register(proxy):
    assert proxy.echo("hi") == "hi"
    assert proxy.concat("a", "b", sep="-") == "a-b"


def test_explicit_call_form_reaches_names_that_clash_with_proxy_attributes(make_server, make_proxy):
    make_server(register=lambda s: s.register_function(lambda: "closed?", "close"))
    proxy = make_proxy()
    assert proxy.call("close") == "closed?"
    assert proxy.call("close") == "closed?"  # the proxy is still open


def test_unknown_method_raises_method_not_found(proxy):
    with pytest.raises(MethodNotFound):
        proxy.nope()
    with pytest.raises(MethodNotFound):
        proxy.math.nope()


@pytest.mark.parametrize("name", ["math._private", "math.secret", "math.factor", "math.__class__",
                                  "math.mul.__globals__", "_private", "__import__", "system"])
def test_private_and_non_method_names_are_not_dispatched(proxy, name):
    with pytest.raises(MethodNotFound):
        proxy.call(name)


def test_proxy_attributes_starting_with_underscore_are_not_remote(proxy):
    with pytest.raises(AttributeError):
        proxy._anything  # noqa: B018
    with pytest.raises(AttributeError):
        proxy.math._private  # noqa: B018


def test_wrong_arguments_raise_invalid_arguments_before_the_call(proxy):
    with pytest.raises(InvalidArguments) as info:
        proxy.add(1, 2, 3)
    assert isinstance(info.value, TypeError)
    with pytest.raises(InvalidArguments):
        proxy.add(c=1)


def test_type_error_inside_the_function_stays_a_plain_type_error(proxy):
    with pytest.raises(TypeError) as info:
        proxy.raise_type_error()
    assert not isinstance(info.value, InvalidArguments)
    assert info.value.args == ("raised inside the function",)


@pytest.mark.parametrize("serializer", ["msgpack", "json"])
def test_each_default_serializer_round_trips_values(make_server, make_proxy, serializer):
    make_server(register=calculator)
    proxy = make_proxy(serializer=serializer)
    value = {"text": "héllo", "n": 3, "f": 1.5, "list": [1, "two", None, True]}
    assert proxy.echo(value) == value


def test_msgpack_carries_bytes(proxy):
    assert proxy.echo(b"\x00\xff") == b"\x00\xff"


def test_pickle_is_refused_unless_the_server_accepts_it(proxy, make_proxy):
    pickling = make_proxy(serializer="pickle")
    with pytest.raises(rpc.BadRequest, match="refused content type"):
        pickling.add(1, 2)


def test_pickle_works_when_the_server_accepts_it(make_server, make_proxy):
    make_server(register=calculator, serializer="pickle")
    proxy = make_proxy(serializer="pickle")
    assert proxy.echo({1, 2}) == {1, 2}
    assert proxy.add(1, 2) == 3


def test_server_accept_list_replaces_the_defaults(make_server, make_proxy):
    make_server(register=calculator, accept=["json"])
    assert make_proxy(serializer="json").add(1, 2) == 3
    with pytest.raises(rpc.BadRequest):
        make_proxy(serializer="msgpack").add(1, 2)


def test_unserializable_argument_raises_serialization_error_locally(proxy):
    with pytest.raises(rpc.SerializationError):
        proxy.echo(object())


def test_unserializable_result_comes_back_as_serialization_error(make_server, make_proxy):
    make_server(register=lambda s: s.register_function(lambda: object(), "make"))
    with pytest.raises(rpc.SerializationError, match="cannot encode the result"):
        make_proxy().make()


def test_introspection_methods_answer(proxy):
    assert "add" in proxy.system.list_methods()
    assert "math.mul" in proxy.system.list_methods()
    assert proxy.system.method_signature("add") == "(a, b=0)"
    assert proxy.system.ping()["server_id"]


def test_introspection_can_be_turned_off(make_server, make_proxy):
    make_server(register=calculator, introspection=False)
    with pytest.raises(MethodNotFound):
        make_proxy().system.ping()


def test_url_pieces_work_instead_of_a_url(broker_url, server_id):
    parts = urlsplit(broker_url)
    pieces = {"hostname": parts.hostname, "port": parts.port, "username": parts.username,
              "password": parts.password, "vhost": unquote(parts.path[1:]) or "/"}
    server = Server(server_id=server_id, **pieces)
    calculator(server)
    server.start()
    try:
        with rpc.Proxy(server_id=server_id, **pieces) as proxy:
            assert proxy.add(1, 1) == 2
    finally:
        server.stop()


# -- remote exceptions ---------------------------------------------------------------------------

class AccountError(Exception):
    pass


class Overdrawn(AccountError):
    pass


@rpc.register_exception
class Frozen(Exception):
    pass


def raising(server: Server) -> None:
    @server.expose
    def overdraw(amount):
        raise Overdrawn("overdrawn by", amount)

    @server.expose
    def freeze(reason):
        raise Frozen(reason)

    @server.expose
    def divide(a, b):
        return a / b


@pytest.mark.parametrize("serializer", ["msgpack", "json"])
def test_unregistered_exception_comes_back_as_remote_error(make_server, make_proxy, serializer):
    make_server(register=raising)
    with pytest.raises(rpc.RemoteError) as info:
        make_proxy(serializer=serializer).overdraw(5)
    assert info.value.remote_type.endswith("test_sync_calls.Overdrawn")
    assert list(info.value.remote_args) == ["overdrawn by", 5]
    assert "raise Overdrawn" in info.value.remote_traceback


@pytest.mark.parametrize("serializer", ["msgpack", "json"])
def test_registered_exception_comes_back_as_itself(make_server, make_proxy, serializer):
    make_server(register=raising)
    with pytest.raises(Frozen) as info:
        make_proxy(serializer=serializer).freeze("audit")
    assert info.value.args == ("audit",)
    assert "raise Frozen" in info.value.remote_traceback


def test_under_pickle_the_exception_object_itself_comes_back(make_server, make_proxy):
    make_server(register=raising, serializer="pickle")
    with pytest.raises(AccountError) as info:  # its base class catches it: inheritance works
        make_proxy(serializer="pickle").overdraw(5)
    assert type(info.value) is Overdrawn and info.value.args == ("overdrawn by", 5)
    assert "raise Overdrawn" in info.value.remote_traceback


def test_builtin_exception_keeps_type_args_and_the_remote_traceback(make_server, make_proxy):
    make_server(register=raising)
    with pytest.raises(ZeroDivisionError) as info:
        make_proxy().divide(1, 0)
    assert info.value.args == ("division by zero",)
    assert "return a / b" in info.value.remote_traceback
    assert any("Remote traceback" in note for note in info.value.__notes__)


def test_tracebacks_stay_on_the_server_unless_it_sends_them(make_server, make_proxy):
    make_server(register=raising, send_tracebacks=False)
    with pytest.raises(ZeroDivisionError) as info:
        make_proxy().divide(1, 0)
    assert info.value.remote_traceback == ""
