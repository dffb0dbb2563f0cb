"""rpc.testing and its pytest plugin: the fixtures, and docs/testing.md's example run as a suite."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rpc import RPCError, Server, testing

# Loaded here until the package's pytest11 entry point loads it for every suite; the plugin is
# registered under its module name either way, so the two never clash.
pytest_plugins = ["pytester"]

DOC = Path(__file__).parent.parent / "docs" / "testing.md"


def add(a, b):
    return a + b


def echo(value):
    return value


class Math:
    def mul(self, a, b):
        return a * b


def test_rpc_server_returns_a_proxy_to_the_functions_it_serves(rpc_server, url):
    proxy = rpc_server(add, url=url)
    assert proxy.add(2, 3) == 5


def test_instances_are_served_under_their_names(rpc_server):
    proxy = rpc_server(instances={"math": Math()})
    assert proxy.math.mul(2, 4) == 8


def test_setup_gets_the_server_before_it_starts(rpc_server):
    seen: list[tuple[Server, bool]] = []

    def setup(server: Server) -> None:
        seen.append((server, server.running))
        server.register_function(add, "plus")

    proxy = rpc_server(setup=setup)
    assert proxy.plus(1, 2) == 3
    [(server, running_during_setup)] = seen
    assert not running_during_setup and server.running


def test_the_serializer_is_the_proxys_and_the_server_accepts_it(rpc_server):
    proxy = rpc_server(echo, serializer="pickle")
    assert proxy.echo({1, 2}) == {1, 2}  # a set: msgpack and JSON cannot carry it


def test_serving_stops_the_server_and_closes_the_proxy_on_exit():
    servers: list[Server] = []
    with testing.serving(add, setup=servers.append) as proxy:
        assert proxy.add(1, 1) == 2
    assert not servers[0].running
    with pytest.raises(RPCError, match="closed"):
        proxy.add(1, 1)


def test_rpc_broker_url_is_memory_without_the_environment_variable(monkeypatch):
    monkeypatch.delenv(testing.BROKER_URL_ENV, raising=False)
    assert testing.broker_url() == "memory://"


def test_rpc_broker_url_honours_the_environment_variable(monkeypatch):
    monkeypatch.setenv(testing.BROKER_URL_ENV, "amqp://guest:guest@rabbit:5672//")
    assert testing.broker_url() == "amqp://guest:guest@rabbit:5672//"


def test_the_plugin_leaves_a_projects_own_broker_url_fixture_alone(broker_url, rpc_broker_url):
    assert broker_url.startswith("amqp://")  # tests/conftest.py's real RabbitMQ
    assert rpc_broker_url == testing.broker_url()


def example_from_the_docs() -> str:
    text = DOC.read_text()
    section = text[text.index("## A complete example"):]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "docs/testing.md lost its example"
    return match.group(1)


def test_the_example_in_the_docs_passes_as_a_test_suite(pytester, monkeypatch, url):
    if url == "memory://":
        monkeypatch.delenv(testing.BROKER_URL_ENV, raising=False)
    else:
        monkeypatch.setenv(testing.BROKER_URL_ENV, url)
    pytester.makepyfile(test_inventory=example_from_the_docs())
    # -p no:pytest_nameko as pyproject.toml's addopts: nameko, a benchmark peer, warns on load
    result = pytester.runpytest_subprocess(
        "-p", "rpc.pytest_plugin", "-p", "no:pytest_nameko", timeout=90,
    )
    result.assert_outcomes(passed=6)
