"""The method registry: which names a server dispatches, resolved once at registration (no I/O).

Dispatch is a dictionary lookup and nothing else: no ``getattr`` on names from the wire, no
dotted traversal, no names starting with ``_``. An instance contributes the public methods its
class defines (and inherits from classes other than ``object``); properties, nested classes,
modules and other attributes are never reachable.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import InvalidArguments, MethodNotFound

MAX_NAME_LENGTH = 255
#: Methods of a registered instance that the server calls itself and never dispatches.
LIFECYCLE_HOOKS = frozenset({"on_init", "on_tear_down"})


@dataclass(slots=True)
class Method:
    """A registered callable with what dispatch needs to know about it, computed once."""

    name: str
    func: Callable[..., Any]
    signature: inspect.Signature | None
    # Positional-only fast path: a call with no kwargs and a positional count in this range
    # binds without inspect (None when the signature needs the full check).
    positional_range: tuple[int, int] | None = field(default=None)
    #: Acknowledge the request before running it (see Server.register_function).
    at_most_once: bool = False
    #: Exceptions that are part of the method's contract: logged as such, not as failures.
    expected: tuple[type[BaseException], ...] = ()
    #: An ``async def`` (or an async generator): it runs on the server's event loop, not on a
    #: worker thread.
    is_async: bool = False
    #: A generator or async generator function: it answers stream requests only (protocol
    #: v1.1), each item it yields sent as the caller's credit allows.
    is_stream: bool = False

    def check_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Bind the arguments before the call, so a TypeError inside the function stays one.

        Raises:
            InvalidArguments: the arguments do not fit the signature.
        """
        if self.signature is None:
            return
        if not kwargs and self.positional_range is not None:
            low, high = self.positional_range
            if low <= len(args) <= high:
                return
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidArguments(f"{self.name}{self.signature}: {exc}") from None


def _positional_range(sig: inspect.Signature) -> tuple[int, int] | None:
    low = high = 0
    for param in sig.parameters.values():
        if param.kind not in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            if param.kind is param.VAR_POSITIONAL or param.default is param.empty:
                return None  # *args or a required keyword-only parameter: use bind()
            continue
        high += 1
        if param.default is param.empty:
            low = high
    return low, high


def _describe(
    name: str, func: Callable[..., Any], at_most_once: bool = False,
    expected: tuple[type[BaseException], ...] = (),
) -> Method:
    try:
        sig: inspect.Signature | None = inspect.signature(func, eval_str=True)
    except NameError:  # an annotation names something only a type checker imports
        sig = inspect.signature(func)
    except (TypeError, ValueError):  # some builtins have no introspectable signature
        sig = None
    async_gen = inspect.isasyncgenfunction(func)
    return Method(name, func, sig, _positional_range(sig) if sig is not None else None,
                  at_most_once, expected, inspect.iscoroutinefunction(func) or async_gen,
                  async_gen or inspect.isgeneratorfunction(func))


def _check_expected(expected: Iterable[type[BaseException]]) -> tuple[type[BaseException], ...]:
    classes = tuple(expected)
    for klass in classes:
        if not (isinstance(klass, type) and issubclass(klass, BaseException)):
            raise TypeError(f"expected= takes exception classes, not {klass!r}")
    return classes


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"a method name must be a non-empty string, not {name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"method name longer than {MAX_NAME_LENGTH} characters")
    if any(part.startswith("_") or not part for part in name.split(".")):
        raise ValueError(f"method name {name!r} has an empty or private (_) part")
    return name


def public_methods(obj: object) -> Iterator[tuple[str, Callable[..., Any]]]:
    """The public methods of ``obj``'s class, most derived definition first, bound to ``obj``.

    A name the class hierarchy defines as anything but a method (a property, a class attribute)
    hides a method of that name further up; the instance's own attributes are never consulted.
    """
    seen: set[str] = set()
    for klass in type(obj).__mro__:
        if klass is object:
            continue
        for attr, raw in vars(klass).items():
            if attr.startswith("_") or attr in seen:
                continue
            seen.add(attr)
            if isinstance(raw, (staticmethod, classmethod)) or inspect.isfunction(raw) or (
                inspect.ismethoddescriptor(raw) and callable(raw)
            ):
                yield attr, raw.__get__(obj, type(obj))


class Registry:
    """Names to callables, built at registration time and read on every call."""

    def __init__(self) -> None:
        self._methods: dict[str, Method] = {}

    def add_function(
        self, func: Callable[..., Any], name: str | None = None, *, at_most_once: bool = False,
        expected: Iterable[type[BaseException]] = (),
    ) -> None:
        """Register one callable.

        Raises:
            ValueError: ``func`` is not callable, or the name is empty, private or too long.
        """
        if not callable(func):
            raise ValueError(f"register_function() needs a callable, not {type(func).__name__}")
        if name is None:
            name = getattr(func, "__name__", None) or ""
        self._methods[_check_name(name)] = _describe(
            name, func, at_most_once, _check_expected(expected))

    def add_instance(
        self, obj: object, name: str, *, at_most_once: bool = False,
        expected: Iterable[type[BaseException]] = (),
    ) -> list[str]:
        """Register every public method of ``obj`` as ``name.method``; returns the names."""
        _check_name(name)
        classes = _check_expected(expected)
        if "." in name:
            raise ValueError(f"an instance name cannot contain a dot: {name!r}")
        if isinstance(obj, type):
            raise TypeError(f"register_instance() takes an instance; got the class {obj.__name__}")
        added = []
        for attr, bound in public_methods(obj):
            if attr in LIFECYCLE_HOOKS:
                continue
            full = f"{name}.{attr}"
            self._methods[full] = _describe(full, bound, at_most_once, classes)
            added.append(full)
        return added

    def resolve(self, name: str) -> Method:
        """The method registered under ``name``.

        Raises:
            MethodNotFound: nothing public is registered under that exact name.
        """
        method = self._methods.get(name) if isinstance(name, str) else None
        if method is None:
            shown = name[:100] if isinstance(name, str) else repr(name)[:100]
            raise MethodNotFound(f"no method {shown!r}")
        return method

    def has_async(self) -> bool:
        """Whether any registered method is an ``async def`` (or an async generator)."""
        return any(method.is_async for method in self._methods.values())

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._methods)

    def __contains__(self, name: object) -> bool:
        return name in self._methods

    def __len__(self) -> int:
        return len(self._methods)
