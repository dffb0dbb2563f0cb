"""``rpc status`` and ``rpc ping --all/--instance``: every instance of a server, one by one.

One ``rpc serve app:server --processes 2`` for the module; the commands run as subprocesses.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_support import (
    Serve,
    environment,
    new_server_id,
    run_rpc,
    wait_for,
    wait_serving,
    worker_pids_in,
    write_app,
)

from rpc import Proxy, Server
from rpc.cli.exitcodes import ExitCode
from rpc.cli.main import STATUS_COLUMNS

pytestmark = pytest.mark.integration

HOST = socket.gethostname()


@dataclass
class Pair:
    """``rpc serve`` with two workers: its server id, environment and worker pids."""

    server_id: str
    env: dict[str, str]
    pids: list[int]


@pytest.fixture(scope="module")
def pair(broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    app_dir = write_app(tmp_path_factory.mktemp("status-app"))
    server_id = new_server_id()
    env = environment(broker_url)
    serve = Serve("app:server", "--server-id", server_id, "--app-dir", str(app_dir),
                  "--processes", "2", env=env, log=app_dir / "serve.log")
    try:
        with Proxy(broker_url, server_id=server_id) as proxy:
            wait_serving(proxy, serve)
        wait_for(lambda: len(worker_pids_in(serve.output)) == 2, 20, "two workers ready")
        yield Pair(server_id, env, sorted(worker_pids_in(serve.output)))
    finally:
        serve.close()


# -- rpc ping --all and --instance -----------------------------------------------------------------

def test_ping_all_lists_every_instance_by_host_and_pid(pair: Pair) -> None:
    done = run_rpc("ping", pair.server_id, "--all", "--timeout", "1", env=pair.env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == sorted(
        f"{pair.server_id}@{HOST}:{pid}" for pid in pair.pids)
    assert all(" answered (up " in line for line in lines)


def test_ping_all_collects_answers_for_one_second_unless_told(pair: Pair) -> None:
    started = time.monotonic()
    done = run_rpc("ping", pair.server_id, "--all", env=pair.env)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 4.5  # the plain ping's 5 s would be longer


def test_ping_all_of_a_server_id_nobody_serves_exits_7(pair: Pair) -> None:
    done = run_rpc("ping", new_server_id(), "--all", "--timeout", "0.5", env=pair.env)
    assert done.returncode == ExitCode.NO_SERVER
    assert "answered within 0.5 s" in done.stderr


def test_ping_instance_succeeds_when_that_worker_answers(pair: Pair) -> None:
    done = run_rpc("ping", pair.server_id, "--instance", f"{HOST}:{pair.pids[1]}",
                   "--timeout", "1", env=pair.env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{pair.server_id}@{HOST}:{pair.pids[1]} answered")
    assert len(done.stdout.splitlines()) == 1


def test_ping_instance_exits_7_when_that_instance_does_not_answer(pair: Pair) -> None:
    absent = max(pair.pids) + 100000
    done = run_rpc("ping", pair.server_id, "--instance", f"{HOST}:{absent}", "--timeout", "0.5",
                   env=pair.env)
    assert done.returncode == ExitCode.NO_SERVER
    assert f"no instance {HOST}:{absent} of '{pair.server_id}' answered" in done.stderr


def test_ping_instance_that_is_not_host_colon_pid_is_a_usage_error(pair: Pair) -> None:
    done = run_rpc("ping", pair.server_id, "--instance", "justahost", env=pair.env)
    assert done.returncode == ExitCode.USAGE
    assert "is not HOST:PID" in done.stderr


# -- rpc status ------------------------------------------------------------------------------------

def test_status_prints_a_header_and_one_row_per_instance(pair: Pair) -> None:
    done = run_rpc("status", pair.server_id, env=pair.env)
    assert done.returncode == 0, done.stderr
    header, *rows, _total = done.stdout.splitlines()
    assert header.split()[:3] == ["INSTANCE", "NODE", "UPTIME"]
    assert header.rstrip().endswith("P50 MS  P99 MS  QUEUE")
    assert [row.split()[0] for row in rows] == sorted(
        f"{pair.server_id}@{HOST}:{pid}" for pid in pair.pids)


def test_status_ends_with_a_total_of_the_instances_calls(pair: Pair) -> None:
    with Proxy(pair.env["RPC_BROKER_URL"], server_id=pair.server_id, timeout=10) as proxy:
        proxy.add(1, 1)
    _header, *rows, total = run_rpc("status", pair.server_id, env=pair.env).stdout.splitlines()
    calls = STATUS_COLUMNS.index("CALLS")  # INSTANCE, NODE and UPTIME are one word each
    assert total.split()[0] == "TOTAL"
    assert int(total.split()[1]) == sum(int(row.split()[calls]) for row in rows) >= 1


def test_status_shows_the_broker_node_each_instance_is_connected_to(
    pair: Pair, broker_url: str,
) -> None:
    port = broker_url.rsplit(":", 1)[1].split("/")[0]
    done = run_rpc("status", pair.server_id, env=pair.env)
    nodes = {row.split()[1] for row in done.stdout.splitlines()[1:-1]}
    assert len(nodes) == 1 and nodes.pop().endswith(f":{port}")


def test_status_json_counts_the_calls_each_instance_answered(pair: Pair) -> None:
    with Proxy(pair.env["RPC_BROKER_URL"], server_id=pair.server_id, timeout=10) as proxy:
        for i in range(20):
            proxy.add(i, 1)
    done = run_rpc("status", pair.server_id, "--format", "json", env=pair.env)
    assert done.returncode == 0, done.stderr
    records = json.loads(done.stdout)
    assert sorted(r["pid"] for r in records) == pair.pids
    assert sum(r["calls"] for r in records) >= 20
    assert {"instance", "node", "uptime", "calls", "errors", "in_flight", "p50_ms", "p99_ms",
            "queue_depth"} <= set(records[0])


def test_status_of_idle_instances_shows_nothing_in_flight(pair: Pair) -> None:
    done = run_rpc("status", pair.server_id, "--format", "json", env=pair.env)
    assert [r["in_flight"] for r in json.loads(done.stdout)] == [0, 0]  # not its own call


def test_status_of_an_instance_without_introspection_says_why_it_has_no_figures(
    broker_url: str,
) -> None:
    quiet = Server(broker_url, server_id=new_server_id(), introspection=False)
    quiet.start()
    try:
        done = run_rpc("status", quiet.server_id, env=environment(broker_url))
    finally:
        quiet.stop(grace=1)
    assert done.returncode == 0, done.stderr
    row = done.stdout.splitlines()[1]
    assert row.startswith(f"{quiet.identity}  no system.stats (introspection off")


def test_status_of_a_server_id_nobody_serves_exits_7(pair: Pair) -> None:
    done = run_rpc("status", new_server_id(), "--timeout", "0.5", env=pair.env)
    assert done.returncode == ExitCode.NO_SERVER
    assert done.stdout == ""


def test_status_watch_refreshes_a_table_until_ctrl_c(pair: Pair, tmp_path: Path) -> None:
    out = tmp_path / "watch.out"
    with open(out, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rpc", "status", pair.server_id, "--watch", "--interval",
             "0.5", "--timeout", "0.3"], env={**pair.env, "COLUMNS": "200"},
            stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT)
        try:
            time.sleep(2.5)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    text = out.read_text()
    assert f"rpc status {pair.server_id}" in text
    assert all(f"{HOST}:{pid}" in text for pid in pair.pids)
