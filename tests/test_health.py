"""Per-instance health: ``rpc serve --liveness-file`` and ``rpc health``; ``--metrics-port`` and
``--queue-type`` passed through to every worker.

Real ``rpc serve`` processes against the test broker; a frozen worker is one sent SIGSTOP.
"""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cli_support import (
    Serve,
    environment,
    free_port,
    new_server_id,
    run_rpc,
    wait_for,
    worker_pids_in,
    write_app,
)

from rpc.cli.exitcodes import ExitCode
from rpc.cli.supervisor import ALIVE_WITHIN

pytestmark = pytest.mark.integration

StartServe = Callable[..., Serve]


@pytest.fixture
def start_serve(broker_url: str, tmp_path: Path) -> Iterator[StartServe]:
    """``rpc serve app:server OPTIONS`` on a fresh server id; killed after the test."""
    app_dir = write_app(tmp_path / "app")
    started: list[Serve] = []

    def start(*options: str) -> Serve:
        serve = Serve("app:server", "--server-id", new_server_id(), "--app-dir", str(app_dir),
                      *options, env=environment(broker_url),
                      log=tmp_path / f"serve-{len(started)}.log")
        started.append(serve)
        return serve

    yield start
    for serve in started:
        for pid in worker_pids_in(serve.output):
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        serve.close()


def health(path: Path, broker_url: str, max_age: float = 15) -> tuple[int, str]:
    done = run_rpc("health", "--liveness-file", str(path), "--max-age", str(max_age),
                   env=environment(broker_url))
    return done.returncode, done.stdout + done.stderr


def test_health_passes_while_every_worker_is_alive(
    start_serve: StartServe, broker_url: str, tmp_path: Path,
) -> None:
    alive = tmp_path / "alive"
    start_serve("--processes", "2", "--liveness-file", str(alive))
    wait_for(alive.exists, 30, "the liveness file")
    code, out = health(alive, broker_url)
    assert code == 0, out
    assert out.startswith(f"alive ({alive} touched ")


def test_the_liveness_file_keeps_being_touched(
    start_serve: StartServe, broker_url: str, tmp_path: Path,
) -> None:
    alive = tmp_path / "alive"
    start_serve("--liveness-file", str(alive))
    wait_for(alive.exists, 30, "the liveness file")
    first = alive.stat().st_mtime
    wait_for(lambda: alive.stat().st_mtime > first, 10, "a second touch")


def test_health_fails_once_one_of_two_workers_is_frozen(
    start_serve: StartServe, broker_url: str, tmp_path: Path,
) -> None:
    alive = tmp_path / "alive"
    serve = start_serve("--processes", "2", "--liveness-file", str(alive))
    wait_for(alive.exists, 30, "the liveness file")
    frozen = worker_pids_in(serve.output)[0]
    os.kill(frozen, signal.SIGSTOP)
    try:
        deadline = ALIVE_WITHIN + 3 + 10
        wait_for(lambda: health(alive, broker_url, max_age=3)[0] == ExitCode.ERROR, deadline,
                 "rpc health to fail", interval=1)
        assert "last touched" in health(alive, broker_url, max_age=3)[1]
    finally:
        os.kill(frozen, signal.SIGCONT)


def test_health_fails_once_the_supervisor_is_frozen(
    start_serve: StartServe, broker_url: str, tmp_path: Path,
) -> None:
    alive = tmp_path / "alive"
    serve = start_serve("--liveness-file", str(alive))
    wait_for(alive.exists, 30, "the liveness file")
    serve.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: health(alive, broker_url, max_age=3)[0] == ExitCode.ERROR, 15,
                 "rpc health to fail", interval=1)
    finally:
        serve.proc.send_signal(signal.SIGCONT)


def test_health_without_the_liveness_file_fails_saying_so(
    broker_url: str, tmp_path: Path,
) -> None:
    code, out = health(tmp_path / "never-written", broker_url)
    assert code == ExitCode.ERROR
    assert "no liveness file" in out


def test_health_of_a_stale_liveness_file_fails(broker_url: str, tmp_path: Path) -> None:
    stale = tmp_path / "alive"
    stale.touch()
    old = time.time() - 60
    os.utime(stale, (old, old))
    code, out = health(stale, broker_url, max_age=15)
    assert code == ExitCode.ERROR
    # The command starts a moment later: on a loaded machine, a second or two.
    assert re.search(r"last touched 6\d s ago", out), out


def test_the_liveness_file_is_removed_when_serve_stops(
    start_serve: StartServe, tmp_path: Path,
) -> None:
    alive = tmp_path / "alive"
    serve = start_serve("--liveness-file", str(alive))
    wait_for(alive.exists, 30, "the liveness file")
    serve.signal(signal.SIGTERM)
    assert serve.wait(30) == 0
    assert not alive.exists()


# -- options passed through to each worker ---------------------------------------------------------

def test_metrics_port_gives_each_worker_its_own_port(start_serve: StartServe) -> None:
    port = free_port()
    serve = start_serve("--processes", "2", "--metrics-port", str(port))
    wait_for(lambda: len(worker_pids_in(serve.output)) == 2, 30, "two workers ready")
    for worker_port in (port, port + 1):
        assert healthz(worker_port) == 200, f"port {worker_port}; the supervisor's log:\n" \
            f"{serve.output}"


def test_queue_type_quorum_reaches_the_workers(start_serve: StartServe, broker_url: str) -> None:
    serve = start_serve("--queue-type", "quorum")
    wait_for(lambda: len(worker_pids_in(serve.output)) == 1, 30, "the worker ready")
    server_id = serve.proc.args[serve.proc.args.index("--server-id") + 1]  # type: ignore[union-attr]
    done = run_rpc("status", server_id, "--format", "json", env=environment(broker_url))
    assert done.returncode == 0, done.stderr
    assert '"queue_type": "quorum"' in done.stdout


def test_a_reload_keeps_serving_metrics_on_the_same_ports(start_serve: StartServe) -> None:
    port = free_port()
    serve = start_serve("--metrics-port", str(port))
    wait_for(lambda: len(worker_pids_in(serve.output)) == 1, 30, "the worker ready")
    serve.signal(signal.SIGHUP)
    wait_for(lambda: "reload complete" in serve.output or "stay" in serve.output, 30,
             "the reload to end")
    assert "reload complete" in serve.output, serve.output
    wait_for(lambda: healthz(port) == 200, 10, "the new worker's /healthz")


def healthz(port: int) -> int | None:
    """The status of GET /healthz, or None when the connection fails."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return int(r.status)
    except OSError:
        return None


def test_health_fails_while_the_broker_is_cut_off_by_a_silent_partition(
    broker_url: str, tmp_path: Path,
) -> None:
    from urllib.parse import urlsplit

    from faults.tcpproxy import TCPProxy

    parts = urlsplit(broker_url)
    alive = tmp_path / "alive"
    with TCPProxy((parts.hostname or "127.0.0.1", parts.port or 5672)) as tcp:
        serve = Serve("app:server", "--server-id", new_server_id(), "--app-dir",
                      str(write_app(tmp_path / "app")), "--liveness-file", str(alive),
                      env=environment(tcp.url()), log=tmp_path / "serve.log")
        try:
            wait_for(alive.exists, 30, "the liveness file")
            assert health(alive, broker_url, max_age=3)[0] == 0
            tcp.blackhole()  # no bytes either way, no FIN, no RST
            wait_for(lambda: health(alive, broker_url, max_age=3)[0] == ExitCode.ERROR,
                     ALIVE_WITHIN + 3 + 10, "rpc health to fail", interval=1)
            assert "is not alive (not connected, or its I/O does not answer)" in serve.output
        finally:
            serve.close()
