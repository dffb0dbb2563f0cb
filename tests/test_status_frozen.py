"""``rpc status`` with one instance of three frozen: the two live ones answer, the frozen one is
missing from the table, so an operator sees which instance is sick."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator

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

from rpc import Proxy

pytestmark = pytest.mark.integration


@pytest.fixture
def three(
    broker_url: str, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, dict[str, str], list[int]]]:
    app_dir = write_app(tmp_path_factory.mktemp("frozen-app"))
    server_id = new_server_id()
    env = environment(broker_url)
    serve = Serve("app:server", "--server-id", server_id, "--app-dir", str(app_dir),
                  "--processes", "3", env=env, log=app_dir / "serve.log")
    try:
        with Proxy(broker_url, server_id=server_id) as proxy:
            wait_serving(proxy, serve)
        wait_for(lambda: len(worker_pids_in(serve.output)) == 3, 30, "three workers ready")
        yield server_id, env, sorted(worker_pids_in(serve.output))
    finally:
        serve.close()


def test_status_lists_the_two_live_instances_while_the_third_is_frozen(three) -> None:
    server_id, env, pids = three
    frozen = pids[0]
    os.kill(frozen, signal.SIGSTOP)
    try:
        done = run_rpc("status", server_id, "--format", "json", env=env)
    finally:
        os.kill(frozen, signal.SIGCONT)
    assert done.returncode == 0, done.stderr
    answered = sorted(record["pid"] for record in json.loads(done.stdout))
    assert answered == pids[1:]


def test_ping_instance_fails_for_the_frozen_instance_only(three) -> None:
    server_id, env, pids = three
    frozen, live = pids[0], pids[1]
    os.kill(frozen, signal.SIGSTOP)
    try:
        host = json.loads(run_rpc("status", server_id, "--format", "json", env=env).stdout)[0]["host"]
        sick = run_rpc("ping", server_id, "--instance", f"{host}:{frozen}", env=env)
        well = run_rpc("ping", server_id, "--instance", f"{host}:{live}", env=env)
    finally:
        os.kill(frozen, signal.SIGCONT)
    assert sick.returncode == 7, sick.stdout + sick.stderr
    assert well.returncode == 0, well.stdout + well.stderr
