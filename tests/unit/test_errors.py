"""rpc.core.errors: the exception tree, wire names, error payloads and rebuilding exceptions safely."""

from __future__ import annotations

import builtins
import importlib
import pickle
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

import rpc
from rpc.core import errors, serialization
from rpc.core.errors import (
    MAX_MESSAGE_CHARS,
    MAX_TRACEBACK_CHARS,
    BadRequest,
    ConnectionLost,
    InvalidArguments,
    MethodNotFound,
    RemoteError,
    RPCError,
    RPCTimeout,
    SerializationError,
    UnknownServer,
    error_payload,
    rebuild_exception,
    register_exception,
    safe_args,
    type_name,
)
from rpc.core.protocol import error_body, parse_reply

FRAMEWORK_ERRORS = [
    RPCError, rpc.ConnectionError, ConnectionLost, RPCTimeout, UnknownServer, MethodNotFound,
    InvalidArguments, BadRequest, SerializationError,
]


@pytest.fixture(autouse=True)
def isolated_registrations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test registers custom exceptions into a registry of its own."""
    monkeypatch.setattr(errors, "_REGISTERED", {})


def over_the_wire(exc: BaseException, content_type: str = serialization.JSON,
                  *, include_traceback: bool = False) -> Exception:
    """What a caller raises for ``exc``: payload, encode, decode, parse, rebuild."""
    body = serialization.encode(
        error_body(error_payload(exc, include_traceback=include_traceback)), content_type)
    decoded = serialization.decode(body, content_type, frozenset({content_type}))
    ok, error = parse_reply(decoded)
    assert not ok
    return rebuild_exception(error)


def raised(exc: BaseException) -> BaseException:
    """``exc`` after being raised and caught, so that it carries a traceback."""
    try:
        raise exc
    except BaseException as caught:  # noqa: BLE001 - the point is to catch anything
        return caught


class Outer:
    class NestedError(Exception):
        pass


class PlainUserError(Exception):
    pass


class BaseUserError(Exception):
    pass


class DerivedUserError(BaseUserError):
    pass


class TwoArgError(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


# -- the exception tree ----------------------------------------------------------------------------

@pytest.mark.parametrize("cls", FRAMEWORK_ERRORS + [RemoteError])
def test_every_framework_error_is_an_rpc_error(cls: type[Exception]) -> None:
    assert issubclass(cls, RPCError)
    assert issubclass(cls, Exception)


def test_rpc_timeout_is_a_builtin_timeout_error() -> None:
    assert issubclass(RPCTimeout, TimeoutError)


def test_invalid_arguments_is_a_type_error() -> None:
    assert issubclass(InvalidArguments, TypeError)


def test_rpc_connection_error_is_a_builtin_connection_error() -> None:
    assert issubclass(rpc.ConnectionError, builtins.ConnectionError)
    assert rpc.ConnectionError is not builtins.ConnectionError


def test_connection_lost_is_an_rpc_connection_error() -> None:
    assert issubclass(ConnectionLost, rpc.ConnectionError)


def test_bad_request_is_a_value_error() -> None:
    assert issubclass(BadRequest, ValueError)


def test_serialization_error_is_a_value_error() -> None:
    assert issubclass(SerializationError, ValueError)


@pytest.mark.parametrize("cls", [UnknownServer, MethodNotFound, RemoteError])
def test_errors_without_a_builtin_twin_are_not_type_or_value_errors(cls: type) -> None:
    assert not issubclass(cls, (TypeError, ValueError, TimeoutError, OSError))


def test_public_names_are_exported_from_the_package() -> None:
    for name in ("RPCError", "RemoteError", "MethodNotFound", "InvalidArguments", "BadRequest",
                 "RPCTimeout", "UnknownServer", "SerializationError", "ConnectionError",
                 "register_exception"):
        assert getattr(rpc, name) is getattr(errors, name)


# -- type_name -------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [ValueError, KeyError, ZeroDivisionError, OSError, Exception,
                                 builtins.ConnectionError, SystemExit])
def test_builtin_types_are_named_bare(cls: type[BaseException]) -> None:
    assert type_name(cls) == cls.__name__


@pytest.mark.parametrize("cls", FRAMEWORK_ERRORS)
def test_framework_errors_are_named_rpc_dot_class(cls: type[BaseException]) -> None:
    assert type_name(cls) == f"rpc.{cls.__name__}"


def test_user_types_are_named_module_dot_qualname() -> None:
    assert type_name(PlainUserError) == f"{__name__}.PlainUserError"


def test_nested_user_types_keep_their_full_qualname() -> None:
    assert type_name(Outer.NestedError) == f"{__name__}.Outer.NestedError"


def test_a_user_subclass_of_a_framework_error_is_named_by_its_own_module() -> None:
    class MyTimeout(RPCTimeout):
        pass

    assert type_name(MyTimeout) == f"{__name__}.{MyTimeout.__qualname__}"


def test_remote_error_is_named_like_the_other_framework_errors() -> None:
    assert type_name(RemoteError) == "rpc.RemoteError"


# -- error_payload ---------------------------------------------------------------------------------

def test_error_payload_has_type_message_args_and_traceback() -> None:
    payload = error_payload(ValueError("bad value", 3), include_traceback=False)
    assert payload == {
        "type": "ValueError", "message": "('bad value', 3)", "args": ["bad value", 3],
        "traceback": "",
    }


def test_error_payload_of_a_framework_error_uses_its_rpc_name() -> None:
    payload = error_payload(MethodNotFound("no method 'x'"), include_traceback=False)
    assert payload["type"] == "rpc.MethodNotFound"
    assert payload["message"] == "no method 'x'"


def test_error_payload_of_a_user_error_uses_module_and_qualname() -> None:
    payload = error_payload(Outer.NestedError("boom"), include_traceback=False)
    assert payload["type"] == f"{__name__}.Outer.NestedError"


def test_error_payload_args_are_a_list() -> None:
    assert error_payload(KeyError("k"), include_traceback=False)["args"] == ["k"]


def test_error_payload_leaves_the_traceback_out_unless_asked() -> None:
    payload = error_payload(raised(ValueError("x")), include_traceback=False)
    assert payload["traceback"] == ""


def test_error_payload_includes_the_formatted_traceback_when_asked() -> None:
    payload = error_payload(raised(ValueError("marker-1234")), include_traceback=True)
    assert payload["traceback"].startswith("Traceback (most recent call last):")
    assert "in raised" in payload["traceback"]
    assert payload["traceback"].rstrip().endswith("ValueError: marker-1234")


def test_error_payload_clips_a_long_message() -> None:
    long = "m" * (MAX_MESSAGE_CHARS + 5000)
    message = error_payload(ValueError(long), include_traceback=False)["message"]
    assert message.startswith("m" * MAX_MESSAGE_CHARS)
    assert not message.startswith("m" * (MAX_MESSAGE_CHARS + 1))
    assert "5000 characters cut" in message
    assert len(message) < MAX_MESSAGE_CHARS + 100


def test_error_payload_keeps_a_message_of_exactly_the_limit() -> None:
    text = "m" * MAX_MESSAGE_CHARS
    assert error_payload(ValueError(text), include_traceback=False)["message"] == text


def test_error_payload_clips_a_long_traceback() -> None:
    exc = raised(ValueError("t" * (MAX_TRACEBACK_CHARS * 2)))
    tb = error_payload(exc, include_traceback=True)["traceback"]
    assert tb.startswith("Traceback (most recent call last):")
    assert "characters cut]" in tb
    assert len(tb) < MAX_TRACEBACK_CHARS + 100


def test_error_payload_of_an_exception_never_raised_has_a_traceback_of_its_line() -> None:
    tb = error_payload(ValueError("never raised"), include_traceback=True)["traceback"]
    assert tb.strip() == "ValueError: never raised"


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")


@pytest.mark.parametrize("include_traceback", [False, True])
def test_error_payload_of_an_exception_whose_str_fails_still_describes_it(
    include_traceback: bool,
) -> None:
    payload = error_payload(raised(UnprintableError("arg")), include_traceback=include_traceback)
    assert payload["type"] == f"{__name__}.UnprintableError"
    assert payload["args"] == ["arg"]
    assert isinstance(payload["message"], str)


def test_safe_args_keep_plain_values_and_repr_the_rest() -> None:
    marker = object()
    assert safe_args(["s", 1, 2.5, True, None, marker, [1]]) == [
        "s", 1, 2.5, True, None, repr(marker), "[1]",
    ]


# -- rebuild_exception: builtins -------------------------------------------------------------------

@pytest.mark.parametrize("exc", [
    ValueError("bad", 2),
    KeyError("missing"),
    ZeroDivisionError("division by zero"),
    IndexError(),
    FileNotFoundError(2, "No such file or directory"),
    builtins.ConnectionError("refused"),
    UserWarning("careful"),
    RuntimeError("r"),
    Exception("plain"),
], ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("content_type", [serialization.JSON, serialization.MSGPACK])
def test_builtin_exception_comes_back_as_itself_with_the_same_args(
    exc: Exception, content_type: str,
) -> None:
    rebuilt = over_the_wire(exc, content_type)
    assert type(rebuilt) is type(exc)
    assert rebuilt.args == exc.args


def test_rebuilt_os_error_keeps_its_errno() -> None:
    rebuilt = over_the_wire(FileNotFoundError(2, "No such file or directory"))
    assert isinstance(rebuilt, FileNotFoundError)
    assert rebuilt.errno == 2
    assert rebuilt.strerror == "No such file or directory"


def test_rebuilt_key_error_can_be_caught_as_lookup_error() -> None:
    with pytest.raises(LookupError):
        raise over_the_wire(KeyError("k"))


@pytest.mark.parametrize("cls", FRAMEWORK_ERRORS, ids=lambda c: c.__name__)
def test_framework_error_comes_back_as_itself(cls: type[Exception]) -> None:
    rebuilt = over_the_wire(cls("went wrong"))
    assert type(rebuilt) is cls
    assert rebuilt.args == ("went wrong",)


def test_rebuilt_invalid_arguments_is_still_a_type_error() -> None:
    with pytest.raises(TypeError):
        raise over_the_wire(InvalidArguments("add(a, b): missing a required argument: 'b'"))


def test_builtin_exception_whose_constructor_rejects_the_args_comes_back_as_remote_error() -> None:
    rebuilt = rebuild_exception(
        {"type": "UnicodeDecodeError", "message": "bad", "args": ["only one"], "traceback": ""})
    assert isinstance(rebuilt, RemoteError)
    assert rebuilt.remote_type == "UnicodeDecodeError"
    assert rebuilt.remote_args == ("only one",)


# -- rebuild_exception: what must never be rebuilt or imported -------------------------------------

@pytest.mark.parametrize("name", ["SystemExit", "KeyboardInterrupt", "GeneratorExit",
                                  "BaseException", "BaseExceptionGroup"])
def test_base_exceptions_that_are_not_exceptions_come_back_as_remote_error(name: str) -> None:
    rebuilt = rebuild_exception({"type": name, "message": "stop", "args": [0], "traceback": ""})
    assert type(rebuilt) is RemoteError
    assert rebuilt.remote_type == name
    assert rebuilt.remote_args == (0,)


def test_a_system_exit_raised_remotely_does_not_exit_the_caller() -> None:
    rebuilt = over_the_wire(SystemExit(3))
    assert isinstance(rebuilt, RemoteError)
    assert not isinstance(rebuilt, SystemExit)


@pytest.mark.parametrize("name", [
    "os.system", "subprocess.Popen", "builtins.SystemExit", "builtins.ValueError",
    "importlib.import_module", "pickle.loads", "posix.system",
])
def test_dotted_names_come_back_as_remote_error(name: str) -> None:
    rebuilt = rebuild_exception({"type": name, "message": "m", "args": ["echo pwned"],
                                 "traceback": ""})
    assert type(rebuilt) is RemoteError
    assert rebuilt.remote_type == name
    assert rebuilt.remote_args == ("echo pwned",)


@pytest.mark.parametrize("name", ["print", "object", "type", "eval", "exec", "open",
                                  "__import__", "breakpoint", "input", "int", "True", "None"])
def test_non_exception_builtins_come_back_as_remote_error(
    name: str, capsys: pytest.CaptureFixture[str],
) -> None:
    rebuilt = rebuild_exception({"type": name, "message": "m", "args": ["canary-output"],
                                 "traceback": ""})
    assert type(rebuilt) is RemoteError
    assert rebuilt.remote_type == name
    assert "canary-output" not in capsys.readouterr().out


def test_unknown_builtin_name_comes_back_as_remote_error() -> None:
    rebuilt = rebuild_exception({"type": "NoSuchError", "message": "m", "args": [],
                                 "traceback": ""})
    assert type(rebuilt) is RemoteError
    assert rebuilt.remote_type == "NoSuchError"


def test_rpc_names_that_are_not_framework_errors_come_back_as_remote_error() -> None:
    for name in ("rpc.Server", "rpc.core.errors.RPCError", "rpc.RemoteError", "rpc.register_exception"):
        assert type(rebuild_exception({"type": name, "message": "m", "args": []})) is RemoteError


def test_an_unregistered_user_exception_comes_back_as_remote_error() -> None:
    rebuilt = over_the_wire(PlainUserError("boom", 7))
    assert type(rebuilt) is RemoteError
    assert rebuilt.remote_type == f"{__name__}.PlainUserError"
    assert rebuilt.remote_args == ("boom", 7)
    assert rebuilt.remote_message == "('boom', 7)"


def test_naming_an_importable_module_imports_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = f"rpc_canary_{uuid.uuid4().hex}"
    touched = tmp_path / "imported"
    (tmp_path / f"{module}.py").write_text(
        f"open({str(touched)!r}, 'w').close()\n"
        "class Boom(Exception):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in (f"{module}.Boom", module, f"builtins.{module}"):
        rebuilt = rebuild_exception({"type": name, "message": "m", "args": [], "traceback": ""})
        assert type(rebuilt) is RemoteError
    assert module not in sys.modules
    assert not touched.exists()
    # The canary works: importing the module does leave the file behind.
    importlib.import_module(module)
    monkeypatch.delitem(sys.modules, module)
    assert touched.exists()


# -- rebuild_exception: registered custom exceptions -----------------------------------------------

def test_registered_exception_comes_back_as_itself() -> None:
    register_exception(PlainUserError)
    rebuilt = over_the_wire(PlainUserError("boom", 7))
    assert type(rebuilt) is PlainUserError
    assert rebuilt.args == ("boom", 7)


@pytest.mark.parametrize("content_type", [serialization.JSON, serialization.MSGPACK])
def test_registered_exception_with_a_custom_constructor_comes_back_as_itself(
    content_type: str,
) -> None:
    register_exception(TwoArgError)
    rebuilt = over_the_wire(TwoArgError(404, "not here"), content_type)
    assert type(rebuilt) is TwoArgError
    assert (rebuilt.code, rebuilt.detail) == (404, "not here")


def test_register_exception_returns_the_class() -> None:
    assert register_exception(PlainUserError) is PlainUserError


def test_register_exception_works_as_a_class_decorator() -> None:
    @register_exception
    class DecoratedError(Exception):
        pass

    assert isinstance(DecoratedError, type)
    rebuilt = over_the_wire(DecoratedError("d"))
    assert type(rebuilt) is DecoratedError
    assert rebuilt.args == ("d",)


def test_registered_nested_exception_comes_back_as_itself() -> None:
    register_exception(Outer.NestedError)
    assert type(over_the_wire(Outer.NestedError("n"))) is Outer.NestedError


@pytest.mark.parametrize("not_an_exception", [
    int, object, "ValueError", ValueError("instance"), SystemExit, KeyboardInterrupt,
    GeneratorExit, BaseException, None,
], ids=repr)
def test_register_exception_refuses_anything_but_an_exception_subclass(
    not_an_exception: Any,
) -> None:
    with pytest.raises(TypeError):
        register_exception(not_an_exception)


def test_a_refused_registration_registers_nothing() -> None:
    with pytest.raises(TypeError):
        register_exception(SystemExit)
    rebuilt = rebuild_exception({"type": "SystemExit", "message": "", "args": [1]})
    assert type(rebuilt) is RemoteError


def test_registered_exception_whose_constructor_rejects_the_args_comes_back_as_remote_error(
) -> None:
    register_exception(TwoArgError)
    name = type_name(TwoArgError)
    rebuilt = rebuild_exception({"type": name, "message": "m", "args": ["only one"],
                                 "traceback": "TB"})
    assert type(rebuilt) is RemoteError
    assert rebuilt.remote_type == name
    assert rebuilt.remote_args == ("only one",)
    assert rebuilt.remote_traceback == "TB"


def test_constructor_returning_a_non_exception_comes_back_as_remote_error() -> None:
    @register_exception
    class Odd(Exception):
        def __new__(cls, *args: Any) -> Any:
            return "not an exception"

    rebuilt = rebuild_exception({"type": type_name(Odd), "message": "m", "args": []})
    assert type(rebuilt) is RemoteError


def test_a_registered_class_does_not_make_its_module_reachable() -> None:
    register_exception(PlainUserError)
    rebuilt = rebuild_exception({"type": f"{__name__}.TwoArgError", "message": "m",
                                 "args": [1, "x"]})
    assert type(rebuilt) is RemoteError


# -- rebuild_exception: malformed members ----------------------------------------------------------

@pytest.mark.parametrize("member", [None, "ValueError", 42, ["ValueError", "m"], b"x", True],
                         ids=repr)
def test_error_member_that_is_not_a_map_comes_back_as_remote_error(member: Any) -> None:
    rebuilt = rebuild_exception(member)
    assert type(rebuilt) is RemoteError
    assert rebuilt.remote_type == "rpc.MalformedReply"


def test_error_member_with_a_non_string_type_comes_back_as_remote_error() -> None:
    for bad_type in (None, 5, ["ValueError"], {"x": 1}):
        rebuilt = rebuild_exception({"type": bad_type, "message": "m", "args": []})
        assert type(rebuilt) is RemoteError
        assert rebuilt.remote_type == "unknown"


def test_error_member_without_a_type_comes_back_as_remote_error() -> None:
    rebuilt = rebuild_exception({"message": "m"})
    assert type(rebuilt) is RemoteError


def test_error_member_with_a_non_string_message_gets_an_empty_message() -> None:
    rebuilt = rebuild_exception({"type": "Mystery", "message": {"a": 1}, "args": []})
    assert type(rebuilt) is RemoteError
    assert rebuilt.remote_message == ""
    assert str(rebuilt) == "Mystery"


def test_error_member_with_non_list_args_uses_the_message_as_the_only_arg() -> None:
    rebuilt = rebuild_exception({"type": "ValueError", "message": "the message", "args": "xyz"})
    assert type(rebuilt) is ValueError
    assert rebuilt.args == ("the message",)


def test_error_member_with_a_non_string_traceback_has_no_traceback() -> None:
    rebuilt = rebuild_exception({"type": "ValueError", "message": "m", "args": ["m"],
                                 "traceback": 12})
    assert type(rebuilt) is ValueError
    assert rebuilt.remote_traceback == ""  # type: ignore[attr-defined]
    assert not getattr(rebuilt, "__notes__", [])


def test_rebuilding_clips_a_long_message_and_traceback() -> None:
    rebuilt = rebuild_exception({
        "type": "Mystery", "message": "m" * (MAX_MESSAGE_CHARS * 3), "args": [],
        "traceback": "t" * (MAX_TRACEBACK_CHARS * 3),
    })
    assert isinstance(rebuilt, RemoteError)
    assert len(rebuilt.remote_message) < MAX_MESSAGE_CHARS + 100
    assert len(rebuilt.remote_traceback) < MAX_TRACEBACK_CHARS + 100


def test_rebuilt_exception_is_always_an_exception() -> None:
    for member in ({"type": "KeyboardInterrupt"}, {"type": "GeneratorExit", "args": None},
                   {"type": "SystemExit", "args": [0]}, {}, None):
        assert isinstance(rebuild_exception(member), Exception)


# -- rebuild_exception: the remote traceback -------------------------------------------------------

def test_rebuilt_builtin_carries_the_remote_traceback() -> None:
    rebuilt = over_the_wire(raised(ValueError("v")), include_traceback=True)
    assert type(rebuilt) is ValueError
    assert rebuilt.remote_traceback.startswith(  # type: ignore[attr-defined]
        "Traceback (most recent call last):")
    assert "in raised" in rebuilt.remote_traceback  # type: ignore[attr-defined]


def test_remote_traceback_is_added_as_a_note() -> None:
    rebuilt = rebuild_exception({"type": "ValueError", "message": "v", "args": ["v"],
                                 "traceback": "REMOTE-TB-TEXT"})
    assert rebuilt.__notes__ == ["Remote traceback (most recent call last):\nREMOTE-TB-TEXT"]


def test_remote_error_carries_the_remote_traceback_attribute_and_note() -> None:
    rebuilt = rebuild_exception({"type": "x.Y", "message": "v", "args": [],
                                 "traceback": "REMOTE-TB-TEXT"})
    assert isinstance(rebuilt, RemoteError)
    assert rebuilt.remote_traceback == "REMOTE-TB-TEXT"
    assert any("REMOTE-TB-TEXT" in note for note in rebuilt.__notes__)


def test_without_a_traceback_no_note_is_added() -> None:
    rebuilt = rebuild_exception({"type": "ValueError", "message": "v", "args": ["v"],
                                 "traceback": ""})
    assert rebuilt.remote_traceback == ""  # type: ignore[attr-defined]
    assert not hasattr(rebuilt, "__notes__")


# -- rebuild_exception: pickled instances ----------------------------------------------------------

def test_pickled_exception_instance_comes_back_as_itself() -> None:
    instance = PlainUserError("p")  # not registered: under pickle the instance itself travels
    rebuilt = rebuild_exception({"type": type_name(PlainUserError), "message": "p",
                                 "args": ["p"], "traceback": "TB", "instance": instance})
    assert rebuilt is instance
    assert rebuilt.remote_traceback == "TB"  # type: ignore[attr-defined]


def test_pickled_exception_subclass_keeps_its_inheritance_over_pickle() -> None:
    instance = DerivedUserError(1, "x")  # neither class is registered
    payload = error_payload(instance, include_traceback=False)
    payload["instance"] = instance
    body = serialization.encode(error_body(payload), serialization.PICKLE)
    _, error = parse_reply(serialization.decode(body, serialization.PICKLE,
                                                frozenset({serialization.PICKLE})))
    rebuilt = rebuild_exception(error)
    assert type(rebuilt) is DerivedUserError
    assert isinstance(rebuilt, BaseUserError)
    assert rebuilt.args == (1, "x")


def test_a_non_exception_instance_is_ignored_in_favour_of_the_type_name() -> None:
    rebuilt = rebuild_exception({"type": "SystemExit", "message": "", "args": [0],
                                 "instance": SystemExit(0)})
    assert type(rebuilt) is RemoteError


def test_a_bare_exception_instance_is_returned_as_is() -> None:
    instance = ValueError("v")
    assert rebuild_exception(instance) is instance


@pytest.mark.parametrize("instance", [KeyboardInterrupt(), SystemExit(2), GeneratorExit()],
                         ids=repr)
def test_a_bare_base_exception_instance_becomes_remote_error(instance: BaseException) -> None:
    rebuilt = rebuild_exception(instance)
    assert type(rebuilt) is RemoteError
    assert rebuilt.remote_type == type(instance).__name__


# -- RemoteError -----------------------------------------------------------------------------------

def test_remote_error_message_names_the_remote_type() -> None:
    exc = RemoteError("pkg.mod.Oops", "it broke", ["it broke"], "TB")
    assert str(exc) == "pkg.mod.Oops: it broke"
    assert exc.remote_type == "pkg.mod.Oops"
    assert exc.remote_message == "it broke"
    assert exc.remote_args == ("it broke",)
    assert exc.remote_traceback == "TB"


def test_remote_error_without_a_message_is_just_the_type() -> None:
    assert str(RemoteError("pkg.Oops", "")) == "pkg.Oops"


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_remote_error_pickles_round_trip(protocol: int) -> None:
    exc = RemoteError("pkg.mod.Oops", "it broke", ["it broke", 3], "TB-TEXT")
    copy = pickle.loads(pickle.dumps(exc, protocol=protocol))
    assert type(copy) is RemoteError
    assert (copy.remote_type, copy.remote_message, copy.remote_args, copy.remote_traceback) == (
        "pkg.mod.Oops", "it broke", ("it broke", 3), "TB-TEXT")
    assert str(copy) == str(exc)


def test_rebuilt_remote_error_keeps_its_traceback_note_through_pickle() -> None:
    exc = rebuild_exception({"type": "pkg.Oops", "message": "m", "args": [],
                             "traceback": "TB-TEXT"})
    copy = pickle.loads(pickle.dumps(exc))
    assert copy.__notes__ == exc.__notes__
