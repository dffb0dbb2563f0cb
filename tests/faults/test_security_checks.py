"""Security checklist items that the other fault files do not already prove: pickle enabled for
one server stays off for the others in the process, tracebacks stay home by default, and every
connection has heartbeats on and a name an operator can find it by.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import msgpack

import rpc

from .test_hostile_input import RawClient


class Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path.touch, (Path(self.path),))


def test_pickle_accepted_by_one_server_stays_refused_by_another_in_the_same_process(
        servers, broker_url, server_id, tmp_path):
    servers(broker_url, server_id + "-pickle", serializer="pickle",
            register=lambda s: s.register_function(lambda value: "ok", "take"))
    servers(broker_url, server_id, register=lambda s: s.register_function(lambda value: "ok", "take"))
    marker = tmp_path / "pwned"
    client = RawClient(broker_url)
    try:
        body = pickle.dumps({"method": "take", "args": [Exploit(str(marker))], "kwargs": {}})
        assert client.error_type(client.publish(server_id, body, "application/x-python-serialize")) \
            == "rpc.BadRequest"
    finally:
        client.close()
    assert not marker.exists()


def test_error_replies_carry_no_traceback_unless_the_server_enables_it(broker_url, server_id):
    def boom() -> None:
        raise RuntimeError("secret dsn postgres://u:p@db")

    def error_from(**options: Any) -> dict[str, Any]:
        server = rpc.Server(broker_url, server_id=server_id, heartbeat=1, **options)
        server.register_function(boom)
        server.start()
        client = RawClient(broker_url)
        try:
            body = msgpack.packb({"method": "boom", "args": [], "kwargs": {}})
            return dict(client.body_of(client.publish(server_id, body))["error"])
        finally:
            client.close()
            server.stop(grace=2)

    by_default = error_from()
    assert by_default["type"] == "RuntimeError"
    assert by_default["traceback"] == ""
    assert "in boom" in error_from(send_tracebacks=True)["traceback"]


def test_connections_have_heartbeats_on_by_default_and_carry_their_role_server_id_and_pid(
        node, broker_url, server_id):
    server = rpc.Server(broker_url, server_id=server_id)  # default heartbeat
    server.register_function(lambda: "ok", "ping")
    server.start()
    try:
        with rpc.Proxy(broker_url, server_id=server_id) as proxy:
            assert proxy.ping() == "ok"
            out = node.ctl("-q", "list_connections", "--no-table-headers", "timeout",
                           "client_properties")
    finally:
        server.stop(grace=2)
    mine = [line for line in out.splitlines() if server_id in line]
    assert len(mine) == 2
    assert all(line.split("\t")[0] == "10" for line in mine)  # seconds, negotiated
    assert any(f'"rpc-server {server_id} pid={os.getpid()}"' in line for line in mine)
    assert any(f'"rpc-proxy {server_id} pid={os.getpid()}"' in line for line in mine)
