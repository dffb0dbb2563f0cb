"""rpc.server.options: a server's settings, checked once and frozen, and the attributes over them."""

from __future__ import annotations

import dataclasses

import pytest

from rpc import Server
from rpc.server import AsyncServer, ServerOptions
from rpc.server.options import PREFETCH_PER_WORKER, queue_type

UNREACHABLE = "amqp://user:s3cret@127.0.0.1:1//"


def test_the_keyword_arguments_become_one_frozen_options() -> None:
    server = Server(UNREACHABLE, server_id="opts", concurrency=3, heartbeat=5,
                    queue_arguments={"x-max-length": 10})
    options = server.options
    assert (options.server_id, options.concurrency, options.heartbeat) == ("opts", 3, 5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.concurrency = 4  # type: ignore[misc]


def test_every_setting_reads_as_an_attribute_of_the_server() -> None:
    server = Server(UNREACHABLE, server_id="opts", metrics_port=0, queue_type="quorum")
    assert server.server_id == "opts" and server.metrics_port == 0
    assert server.queue_type == "quorum" and server.url == UNREACHABLE


def test_assigning_a_setting_checks_it_and_replaces_the_options() -> None:
    server = Server(UNREACHABLE, server_id="opts")
    before = server.options
    server.concurrency = 4
    assert server.options.concurrency == 4 and server.options is not before
    assert server.prefetch_count == 4 * PREFETCH_PER_WORKER
    with pytest.raises(ValueError):
        server.concurrency = 0
    with pytest.raises(ValueError):
        server.queue_type = "stream"  # type: ignore[assignment]
    assert server.options.concurrency == 4  # a refused value changes nothing


def test_options_can_be_replaced_as_a_whole() -> None:
    server = Server(UNREACHABLE, server_id="opts")
    server.options = dataclasses.replace(server.options, server_id="other", concurrency=2)
    assert (server.server_id, server.concurrency) == ("other", 2)


def test_the_callers_tables_are_copied() -> None:
    arguments = {"x-max-length": 10}
    server = Server(UNREACHABLE, server_id="opts", queue_arguments=arguments)
    arguments["x-max-length"] = 20
    assert server.request_queue_arguments() == {"x-max-length": 10}


def test_a_quorum_queue_dead_letters_after_the_delivery_limit() -> None:
    options = ServerOptions(url=UNREACHABLE, server_id="q", queue_type="quorum", delivery_limit=5,
                            queue_arguments={"x-max-length": 7})
    assert options.dead_letter_queue == "q.dead"
    assert options.request_queue_arguments() == {
        "x-queue-type": "quorum", "x-delivery-limit": 5, "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "q.dead", "x-max-length": 7}
    assert ServerOptions(url=UNREACHABLE).request_queue_arguments() is None


@pytest.mark.parametrize("bad", [
    {"async_concurrency": -1}, {"prefetch": 0}, {"delivery_limit": 0},
    {"queue_type": "stream"}, {"failover": "random"}, {"server_id": "q" * 252, "queue_type": "quorum"},
])
def test_settings_out_of_range_are_value_errors(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ServerOptions(url=UNREACHABLE, **bad)  # type: ignore[arg-type]


def test_a_bad_url_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        ServerOptions(url="http://example.com")


def test_queue_type_narrows_a_string() -> None:
    assert queue_type("quorum") == "quorum"
    with pytest.raises(ValueError):
        queue_type("Quorum")


def test_the_async_server_takes_the_same_arguments() -> None:
    server = AsyncServer(UNREACHABLE, server_id="aopts", concurrency=2, async_concurrency=7)
    assert (server.concurrency, server.async_concurrency) == (2, 7)
    assert server.registry.names()[0].startswith("system.")
    assert not server.running and server.status()["in_flight"] == 0
