"""rpc.client.views: remote methods as a proxy's attributes, and the one-call views."""

from __future__ import annotations

from typing import Any

import pytest

from rpc.client import views
from rpc.client.views import PLAIN, CallOptions, ProxyBase


class Recorder(ProxyBase):
    """A proxy whose calls are only recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[CallOptions, str, tuple[Any, ...], dict[str, Any]]] = []

    def _invoke(self, options: CallOptions, method: str, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Any:
        self.calls.append((options, method, args, kwargs))
        return method

    def _waits_by_default(self) -> bool:
        return False


def test_a_remote_method_is_kept_and_calls_with_plain_options() -> None:
    proxy = Recorder()
    assert proxy.add is proxy.add
    assert proxy.add(1, 2, scale=3) == "add"
    assert proxy.calls == [(PLAIN, "add", (1, 2), {"scale": 3})]


def test_a_modifier_does_not_leak_into_the_kept_method() -> None:
    proxy = Recorder()
    proxy.add(1)
    proxy.set_timeout(5).add(2)
    proxy.add(3)
    assert [options.timeout_set for options, *_ in proxy.calls] == [False, True, False]


def test_a_dotted_name_and_private_names() -> None:
    proxy = Recorder()
    assert proxy.math.mul(2) == "math.mul"
    with pytest.raises(AttributeError):
        proxy._secret  # noqa: B018
    assert "_secret" not in vars(proxy)


def test_methods_stop_being_kept_at_the_attribute_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(views, "MAX_ATTRIBUTES", 3)
    proxy = Recorder()  # one attribute of its own
    for name in ("a", "b", "c", "d"):
        assert getattr(proxy, name)() == name
    assert sorted(vars(proxy)) == ["a", "b", "calls"]
