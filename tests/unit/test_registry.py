"""rpc.server.registry: which names a server dispatches, and the argument check before each call."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from typing import Any

import pytest

from rpc.core.errors import InvalidArguments, MethodNotFound
from rpc.server.registry import MAX_NAME_LENGTH, Registry


def add(a: int, b: int) -> int:
    return a + b


def _private_helper() -> None:
    pass


class Math:
    """A typical served instance: every kind of attribute a class can have."""

    factor = 10
    os_module = os

    class Nested:
        pass

    def __init__(self) -> None:
        self.state = "instance attribute"
        self.callable_attribute = print

    def mul(self, a: int, b: int) -> int:
        return a * b

    @staticmethod
    def neg(x: int) -> int:
        return -x

    @classmethod
    def kind(cls) -> str:
        return cls.__name__

    @property
    def doubled(self) -> Callable[..., Any]:
        return os.system

    def _priv(self) -> str:
        return "private"

    def __call__(self) -> str:
        return "dunder"


class Base:
    def shared(self) -> str:
        return "base"

    def inherited(self) -> str:
        return "inherited"


class Derived(Base):
    def shared(self) -> str:
        return "derived"


def registry_with(*funcs: Callable[..., Any]) -> Registry:
    registry = Registry()
    for func in funcs:
        registry.add_function(func)
    return registry


# -- functions -------------------------------------------------------------------------------------

def test_a_function_is_registered_under_its_name() -> None:
    registry = registry_with(add)
    assert registry.resolve("add").func is add
    assert registry.resolve("add").name == "add"


def test_a_function_can_be_registered_under_an_explicit_name() -> None:
    registry = Registry()
    registry.add_function(add, "plus")
    assert registry.resolve("plus").func is add
    assert "add" not in registry


def test_a_dotted_explicit_name_is_allowed() -> None:
    registry = Registry()
    registry.add_function(add, "math.add")
    assert registry.resolve("math.add").func is add


def test_registering_a_name_again_replaces_the_function() -> None:
    registry = Registry()
    registry.add_function(add, "f")
    registry.add_function(max, "f")
    assert registry.resolve("f").func is max
    assert len(registry) == 1


def test_a_callable_object_can_be_registered() -> None:
    registry = Registry()
    registry.add_function(functools.partial(add, 1), "inc")
    assert registry.resolve("inc").func(2) == 3


def test_a_class_can_be_registered_as_a_function() -> None:
    registry = registry_with(Derived)
    assert registry.resolve("Derived").func is Derived


@pytest.mark.parametrize("not_callable", [5, "add", None, [add], {"f": add}], ids=repr)
def test_registering_something_not_callable_is_a_value_error(not_callable: Any) -> None:
    with pytest.raises(ValueError, match="callable"):
        Registry().add_function(not_callable, "name")


def test_a_callable_without_a_name_needs_an_explicit_one() -> None:
    with pytest.raises(ValueError):
        Registry().add_function(functools.partial(add, 1))


def test_a_function_whose_name_is_private_cannot_be_registered_by_its_name() -> None:
    with pytest.raises(ValueError, match="private"):
        Registry().add_function(_private_helper)


@pytest.mark.parametrize("name", [
    "", "_x", "__call__", "a._b", "a.__globals__", "_a.b", "a..b", ".a", "a.", ".", "math._priv",
], ids=repr)
def test_empty_private_or_malformed_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        Registry().add_function(add, name)


@pytest.mark.parametrize("name", [5, b"add", ["add"]], ids=repr)
def test_a_name_that_is_not_a_string_is_refused(name: Any) -> None:
    with pytest.raises(ValueError):
        Registry().add_function(add, name)


def test_a_name_of_the_maximum_length_is_accepted() -> None:
    registry = Registry()
    registry.add_function(add, "a" * MAX_NAME_LENGTH)
    assert "a" * MAX_NAME_LENGTH in registry


def test_a_name_longer_than_the_maximum_is_refused() -> None:
    with pytest.raises(ValueError, match="longer"):
        Registry().add_function(add, "a" * (MAX_NAME_LENGTH + 1))


def test_a_refused_registration_adds_nothing() -> None:
    registry = Registry()
    with pytest.raises(ValueError):
        registry.add_function(add, "_hidden")
    assert len(registry) == 0


# -- instances -------------------------------------------------------------------------------------

def test_an_instance_contributes_its_public_methods() -> None:
    registry = Registry()
    added = registry.add_instance(Math(), "math")
    assert sorted(added) == ["math.kind", "math.mul", "math.neg"]
    assert registry.names() == ["math.kind", "math.mul", "math.neg"]


def test_an_instance_method_is_bound_to_the_instance() -> None:
    obj = Math()
    registry = Registry()
    registry.add_instance(obj, "math")
    method = registry.resolve("math.mul").func
    assert method(3, 4) == 12
    assert method.__self__ is obj  # type: ignore[attr-defined]


def test_static_and_class_methods_are_included() -> None:
    registry = Registry()
    registry.add_instance(Math(), "math")
    assert registry.resolve("math.neg").func(3) == -3
    assert registry.resolve("math.kind").func() == "Math"


@pytest.mark.parametrize("name", [
    "math.doubled",            # property
    "math.Nested",             # nested class
    "math.os_module",          # module
    "math.factor",             # class attribute
    "math.state",              # instance attribute
    "math.callable_attribute", # callable instance attribute
    "math._priv",
    "math.__call__",
    "math.__init__",
    "math.__class__",
    "math.__dict__",
    "math.__reduce__",
    "math.__getattribute__",
    "math.__subclasshook__",
    "math",
    "mul",
])
def test_non_methods_private_names_and_dunders_are_unreachable(name: str) -> None:
    registry = Registry()
    registry.add_instance(Math(), "math")
    assert name not in registry
    with pytest.raises(MethodNotFound):
        registry.resolve(name)


def test_a_staticmethod_wrapping_a_builtin_is_a_method() -> None:
    registry = Registry()
    registry.add_instance(type("WithHelper", (), {"size": staticmethod(len)})(), "w")
    assert registry.resolve("w.size").func([1, 2]) == 2


@pytest.mark.parametrize("name", [
    "math.mul.__globals__", "math.mul.__func__", "math.mul.__self__", "math.__class__",
    "math._priv", "math.mul.__code__", "math.kind.__self__", "math.neg.__globals__",
    "math.os_module.system", "math.Nested.mro", "math.doubled.__call__",
])
def test_dotted_traversal_beyond_instance_method_is_impossible(name: str) -> None:
    registry = Registry()
    registry.add_instance(Math(), "math")
    with pytest.raises(MethodNotFound):
        registry.resolve(name)


def test_methods_inherited_from_object_are_not_exposed() -> None:
    class Empty:
        pass

    assert Registry().add_instance(Empty(), "e") == []


def test_inherited_public_methods_are_exposed() -> None:
    registry = Registry()
    registry.add_instance(Derived(), "d")
    assert registry.names() == ["d.inherited", "d.shared"]
    assert registry.resolve("d.inherited").func() == "inherited"


def test_a_subclass_override_wins() -> None:
    registry = Registry()
    registry.add_instance(Derived(), "d")
    assert registry.resolve("d.shared").func() == "derived"


def test_an_instance_is_registered_once_per_method_name() -> None:
    assert Registry().add_instance(Derived(), "d").count("d.shared") == 1


def test_registering_an_instance_does_not_run_its_property_getters() -> None:
    evaluated: list[str] = []

    class Lazy:
        @property
        def expensive(self) -> int:
            evaluated.append("expensive")
            return 1

        def ok(self) -> int:
            return 2

    assert Registry().add_instance(Lazy(), "lazy") == ["lazy.ok"]
    assert evaluated == []


def test_a_property_overriding_a_base_method_is_unreachable() -> None:
    class Sneaky(Base):
        @property
        def shared(self) -> Callable[..., Any]:  # type: ignore[override]
            return os.system

    registry = Registry()
    registry.add_instance(Sneaky(), "s")
    assert "s.shared" not in registry


def test_a_plain_attribute_overriding_a_base_method_hides_it() -> None:
    class Disabled(Base):
        shared = None  # type: ignore[assignment]

    registry = Registry()
    registry.add_instance(Disabled(), "s")
    assert "s.shared" not in registry


def test_an_instance_attribute_does_not_replace_the_method_of_the_same_name() -> None:
    obj = Math()
    obj.mul = os.getcwd  # type: ignore[method-assign]
    registry = Registry()
    registry.add_instance(obj, "math")
    assert registry.resolve("math.mul").func(3, 4) == 12


@pytest.mark.parametrize("name", ["", "_math", "__class__", "ma.th", "a..b"], ids=repr)
def test_an_instance_name_that_is_empty_private_or_dotted_is_refused(name: str) -> None:
    registry = Registry()
    with pytest.raises(ValueError):
        registry.add_instance(Math(), name)
    assert len(registry) == 0


def test_two_instances_live_side_by_side() -> None:
    registry = Registry()
    registry.add_instance(Math(), "m1")
    registry.add_instance(Derived(), "m2")
    assert registry.resolve("m1.mul").func(2, 3) == 6
    assert registry.resolve("m2.shared").func() == "derived"


# -- names, membership ------------------------------------------------------------------------------

def test_names_are_sorted() -> None:
    registry = Registry()
    for name in ("zeta", "alpha", "mid.x"):
        registry.add_function(add, name)
    assert registry.names() == ["alpha", "mid.x", "zeta"]


def test_len_counts_registered_names() -> None:
    registry = registry_with(add, max)
    registry.add_instance(Math(), "math")
    assert len(registry) == 5


# -- resolve ---------------------------------------------------------------------------------------

def test_resolving_an_unknown_name_raises_method_not_found() -> None:
    with pytest.raises(MethodNotFound, match="'sub'"):
        registry_with(add).resolve("sub")


@pytest.mark.parametrize("name", [None, 5, b"add", ["add"], {"add": 1}, ("add",)], ids=repr)
def test_resolving_a_name_that_is_not_a_string_raises_method_not_found(name: Any) -> None:
    with pytest.raises(MethodNotFound):
        registry_with(add).resolve(name)


def test_method_not_found_shows_at_most_a_hundred_characters_of_the_name() -> None:
    with pytest.raises(MethodNotFound) as info:
        Registry().resolve("x" * 10_000)
    assert len(str(info.value)) < 150


def test_resolving_is_case_sensitive() -> None:
    with pytest.raises(MethodNotFound):
        registry_with(add).resolve("ADD")


# -- check_arguments -------------------------------------------------------------------------------

def method_of(func: Callable[..., Any], name: str = "f") -> Any:
    registry = Registry()
    registry.add_function(func, name)
    return registry.resolve(name)


def test_arguments_that_bind_pass() -> None:
    method_of(add).check_arguments((1, 2), {})
    method_of(add).check_arguments((1,), {"b": 2})
    method_of(add).check_arguments((), {"a": 1, "b": 2})


def test_too_few_arguments_are_invalid_arguments_naming_the_signature() -> None:
    def scale(value, factor=2):  # type: ignore[no-untyped-def]
        return value * factor

    with pytest.raises(InvalidArguments) as info:
        method_of(scale, "scale").check_arguments((), {})
    assert str(info.value) == "scale(value, factor=2): missing a required argument: 'value'"


def test_too_many_arguments_are_invalid_arguments() -> None:
    with pytest.raises(InvalidArguments, match="too many"):
        method_of(add).check_arguments((1, 2, 3), {})


def test_an_unknown_keyword_is_invalid_arguments() -> None:
    with pytest.raises(InvalidArguments, match="'c'"):
        method_of(add).check_arguments((1, 2), {"c": 3})


def test_an_argument_given_twice_is_invalid_arguments() -> None:
    with pytest.raises(InvalidArguments, match="multiple values"):
        method_of(add).check_arguments((1, 2), {"a": 1})


def test_invalid_arguments_is_a_type_error_without_a_cause() -> None:
    with pytest.raises(TypeError) as info:
        method_of(add).check_arguments((), {})
    assert isinstance(info.value, InvalidArguments)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def test_the_check_does_not_call_the_function() -> None:
    calls: list[Any] = []

    def record(a: int) -> None:
        calls.append(a)

    method_of(record).check_arguments((1,), {})
    with pytest.raises(InvalidArguments):
        method_of(record).check_arguments((1, 2), {})
    assert calls == []


def test_a_type_error_raised_inside_the_function_is_not_an_argument_error() -> None:
    def picky(a: int) -> int:
        raise TypeError("inside")

    method = method_of(picky)
    method.check_arguments((1,), {})  # the arguments bind: the call may go ahead
    with pytest.raises(TypeError, match="inside") as info:
        method.func(1)
    assert not isinstance(info.value, InvalidArguments)


def test_bound_methods_do_not_count_self() -> None:
    registry = Registry()
    registry.add_instance(Math(), "math")
    registry.resolve("math.mul").check_arguments((2, 3), {})
    with pytest.raises(InvalidArguments):
        registry.resolve("math.mul").check_arguments((Math(), 2, 3), {})


def test_class_methods_do_not_count_cls() -> None:
    registry = Registry()
    registry.add_instance(Math(), "math")
    registry.resolve("math.kind").check_arguments((), {})
    with pytest.raises(InvalidArguments):
        registry.resolve("math.kind").check_arguments((Math,), {})


# Signature shapes for the positional fast path and the full bind.
def with_defaults(a: int, b: int = 2, c: int = 3) -> None: ...
def with_varargs(a: int, *rest: int) -> None: ...
def with_required_kwonly(a: int, *, key: int) -> None: ...
def with_optional_kwonly(a: int, *, key: int = 0) -> None: ...
def with_varkw(a: int, **extra: int) -> None: ...
def with_posonly(a: int, /, b: int) -> None: ...
def no_params() -> None: ...
def everything(a: int, /, b: int = 1, *rest: int, key: int, **extra: int) -> None: ...


@pytest.mark.parametrize("func, args, kwargs", [
    (with_defaults, (1,), {}),
    (with_defaults, (1, 2), {}),
    (with_defaults, (1, 2, 3), {}),
    (with_defaults, (1,), {"c": 5}),
    (with_varargs, (1,), {}),
    (with_varargs, (1, 2, 3, 4, 5), {}),
    (with_required_kwonly, (1,), {"key": 2}),
    (with_optional_kwonly, (1,), {}),
    (with_optional_kwonly, (1,), {"key": 2}),
    (with_varkw, (1,), {}),
    (with_varkw, (1,), {"anything": 2, "else": 3}),
    (with_varkw, (), {"a": 1, "other": 2}),
    (with_posonly, (1, 2), {}),
    (with_posonly, (1,), {"b": 2}),
    (no_params, (), {}),
    (everything, (1,), {"key": 2}),
    (everything, (1, 2, 3, 4), {"key": 2, "x": 5}),
], ids=lambda v: getattr(v, "__name__", repr(v)))
def test_arguments_that_fit_the_signature_pass(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
) -> None:
    method_of(func).check_arguments(args, kwargs)


@pytest.mark.parametrize("func, args, kwargs", [
    (with_defaults, (), {}),
    (with_defaults, (1, 2, 3, 4), {}),
    (with_defaults, (1,), {"d": 4}),
    (with_varargs, (), {}),
    (with_varargs, (1,), {"rest": (2,)}),
    (with_required_kwonly, (1,), {}),
    (with_required_kwonly, (1, 2), {}),
    (with_optional_kwonly, (1, 2), {}),
    (with_optional_kwonly, (), {}),
    (with_varkw, (), {}),
    (with_varkw, (1, 2), {}),
    (with_posonly, (), {"a": 1, "b": 2}),
    (with_posonly, (1,), {}),
    (no_params, (1,), {}),
    (no_params, (), {"a": 1}),
    (everything, (1,), {}),
    (everything, (), {"a": 1, "key": 2}),
], ids=lambda v: getattr(v, "__name__", repr(v)))
def test_arguments_that_do_not_fit_the_signature_are_invalid_arguments(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
) -> None:
    with pytest.raises(InvalidArguments):
        method_of(func).check_arguments(args, kwargs)


def test_the_positional_fast_path_covers_plain_and_defaulted_parameters() -> None:
    assert method_of(add).positional_range == (2, 2)
    assert method_of(with_defaults).positional_range == (1, 3)
    assert method_of(with_optional_kwonly).positional_range == (1, 1)
    assert method_of(with_posonly).positional_range == (2, 2)
    assert method_of(no_params).positional_range == (0, 0)


@pytest.mark.parametrize("func", [with_varargs, with_required_kwonly, with_varkw, everything])
def test_signatures_the_fast_path_cannot_judge_use_the_full_bind(
    func: Callable[..., Any],
) -> None:
    assert method_of(func).positional_range is None


def test_a_callable_without_a_readable_signature_is_not_checked() -> None:
    method = method_of(max, "max")
    assert method.signature is None
    method.check_arguments((), {"nonsense": 1})  # nothing to check against: the call decides


def test_the_signature_of_a_math_builtin_is_checked() -> None:
    method = method_of(math.sqrt, "sqrt")
    method.check_arguments((4,), {})
    with pytest.raises(InvalidArguments):
        method.check_arguments((4, 5), {})


# -- expected exceptions ---------------------------------------------------------------------------

class Overdrawn(Exception):
    pass


def test_a_function_carries_its_expected_exceptions() -> None:
    registry = Registry()
    registry.add_function(add, expected=(Overdrawn,))
    assert registry.resolve("add").expected == (Overdrawn,)


def test_every_method_of_an_instance_carries_its_expected_exceptions() -> None:
    registry = Registry()
    registry.add_instance(Math(), "math", expected=[Overdrawn, KeyError])
    assert registry.resolve("math.mul").expected == (Overdrawn, KeyError)


def test_expected_takes_only_exception_classes() -> None:
    with pytest.raises(TypeError, match="exception classes"):
        Registry().add_function(add, expected=("Overdrawn",))  # type: ignore[arg-type]
