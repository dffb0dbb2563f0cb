"""Several broker URLs: a list or a ``,``/``;``-separated string, tried in turn; passwords masked."""

from __future__ import annotations

import logging
import socket
import traceback
from typing import Any

import pytest

import rpc
from rpc import Proxy, Server

from .conftest import Runs
from .test_failover import proxy_conn, register_echo, server_conn

pytestmark = [pytest.mark.cluster, pytest.mark.integration]


def dead_url() -> str:
    """A loopback URL where nothing listens (the connection is refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"amqp://guest:guest@127.0.0.1:{port}//"


def join(urls: list[str], form: str) -> Any:
    return {"list": urls, "comma": ",".join(urls), "semicolon": ";".join(urls)}[form]


@pytest.mark.parametrize("form", ["list", "comma", "semicolon"])
def test_several_urls_connect_to_the_first_that_answers(
        form: str, cluster: Any, servers: Any, proxies: Any, runs: Runs, server_id: str,
        cleanup_queues: list[str]) -> None:
    cleanup_queues.append(server_id)
    servers(join([dead_url(), cluster.url(1), cluster.url(0)], form), server_id,
            register=register_echo(runs))
    proxy = proxies(join([dead_url(), cluster.url(2), cluster.url(0)], form), server_id)
    assert proxy.echo(3) == 3
    assert cluster.node_of_connection(server_conn(server_id)) == 1
    assert cluster.node_of_connection(proxy_conn(server_id)) == 2


def test_shuffle_failover_spreads_new_connections_over_the_nodes(
        cluster: Any, proxies: Any, server_id: str) -> None:
    for _ in range(8):
        proxies(cluster.urls, server_id, failover="shuffle")
    nodes = [conn["node"] for conn in cluster.connections(proxy_conn(server_id))]
    assert len(nodes) == 8
    assert len(set(nodes)) >= 2  # all 8 on one node: chance 3 in 3**8 with a fair shuffle


def test_round_robin_failover_starts_with_the_first_url(
        cluster: Any, proxies: Any, server_id: str) -> None:
    for _ in range(3):
        proxies(cluster.urls_from(2), server_id)
    nodes = [conn["node"] for conn in cluster.connections(proxy_conn(server_id))]
    assert nodes == [2, 2, 2]


@pytest.mark.parametrize("form", ["list", "comma", "semicolon"])
def test_a_refused_login_with_several_urls_does_not_show_the_password(
        form: str, cluster: Any, server_id: str, caplog: pytest.LogCaptureFixture) -> None:
    secret = "s3cret-Pa55word"
    urls = [url.replace("guest:guest@", f"guest:{secret}@") for url in cluster.urls]
    caplog.set_level(logging.DEBUG)
    for make in (lambda: Proxy(join(urls, form), server_id=server_id, connect_retry=1),
                 lambda: Server(join(urls, form), server_id=server_id, connect_retry=1).start()):
        with pytest.raises(rpc.AccessRefused) as caught:
            make()
        text = "".join(traceback.format_exception(caught.value)) + repr(caught.value)
        assert secret not in text
        assert "**" in str(caught.value)  # the URL is named, masked
    assert secret not in caplog.text
