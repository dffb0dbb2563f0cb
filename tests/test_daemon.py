"""``rpc serve`` as a daemon: worker processes, restarts, signals, pidfiles, reconnection.

Real processes against the test broker. Each test waits on observable facts (a ping answered, a
log line, a marker file written by a call in flight), always with a deadline.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest
from cli_support import (
    Serve,
    environment,
    new_server_id,
    ping,
    process_gone,
    run_rpc,
    wait_for,
    wait_serving,
    worker_pids_in,
    write_app,
)

from rpc import Proxy
from rpc.cli.daemon import Pidfile, PidfileError
from rpc.cli.exitcodes import ExitCode
from rpc.cli.supervisor import exit_reason

pytestmark = pytest.mark.integration

StartServe = Callable[..., Serve]


@pytest.fixture
def server_id() -> str:
    return new_server_id()


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    return write_app(tmp_path / "app")


@pytest.fixture
def start_serve(
    broker_url: str, server_id: str, app_dir: Path, tmp_path: Path,
) -> Iterator[StartServe]:
    """Start ``rpc serve app:server`` with extra options; every one is killed after the test."""
    started: list[Serve] = []

    def start(*options: str) -> Serve:
        serve = Serve("app:server", "--server-id", server_id, "--app-dir", str(app_dir),
                      *options, env=environment(broker_url),
                      log=tmp_path / f"serve-{len(started)}.log")
        started.append(serve)
        return serve

    yield start
    for serve in started:
        serve.close()


@pytest.fixture
def proxy(broker_url: str, server_id: str) -> Iterator[Proxy]:
    with Proxy(broker_url, server_id=server_id, timeout=30) as proxy:
        yield proxy


def ready_workers(serve: Serve, count: int, timeout: float = 20) -> list[int]:
    """Wait for ``count`` ``worker N ready`` lines; returns those pids."""
    def probe() -> list[int] | None:
        if serve.proc.poll() is not None:
            raise AssertionError(f"rpc serve exited with {serve.proc.returncode}:\n{serve.output}")
        pids = worker_pids_in(serve.output)
        return pids if len(pids) >= count else None

    return wait_for(probe, timeout, f"{count} workers to be ready")


def marker_pid(path: Path) -> int | None:
    """The pid a ``hold`` call wrote to its marker, once it is in flight."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return int(text) if text else None


def results(futures: list[Future[int]], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    return [f.result(timeout=max(deadline - time.monotonic(), 0)) for f in futures]


# -- worker processes ------------------------------------------------------------------------------

def test_two_processes_answer_calls_from_two_worker_pids(
    start_serve: StartServe, proxy: Proxy,
) -> None:
    serve = start_serve("--processes", "2")
    workers = set(ready_workers(serve, 2))
    answered: set[int] = set()
    for _ in range(50):
        answer = ping(proxy)
        if answer is not None:
            answered.add(answer["pid"])
        if answered == workers:
            break
    assert answered == workers
    assert serve.proc.pid not in answered


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_no_call_is_lost(
    start_serve: StartServe, proxy: Proxy, tmp_path: Path,
) -> None:
    serve = start_serve("--processes", "2")
    victim, survivor = ready_workers(serve, 2)
    markers = [tmp_path / f"call-{i}" for i in range(24)]
    futures = [proxy.future.hold(str(m), 0.3) for m in markers]
    wait_for(lambda: any(marker_pid(m) == victim for m in markers), 10,
             "a call in flight on the victim")

    os.kill(victim, signal.SIGKILL)

    answers = results(futures, timeout=30)
    assert len(answers) == len(markers)
    replacement = ready_workers(serve, 3)[2]
    assert replacement not in (victim, survivor)
    assert f"worker {victim} was killed by SIGKILL" in serve.output


def test_workers_stop_when_the_supervisor_is_killed(start_serve: StartServe) -> None:
    serve = start_serve()
    worker = ready_workers(serve, 1)[0]
    serve.proc.kill()
    serve.proc.wait(5)
    wait_for(lambda: process_gone(worker), 10, "the orphaned worker to stop")


# -- signals ---------------------------------------------------------------------------------------

def test_sigterm_during_a_long_call_replies_then_exits_0_within_the_grace(
    start_serve: StartServe, proxy: Proxy, tmp_path: Path,
) -> None:
    serve = start_serve("--grace", "10")
    worker = ready_workers(serve, 1)[0]
    marker = tmp_path / "in-flight"
    future = proxy.future.hold(str(marker), 1.5)
    wait_for(lambda: marker_pid(marker), 10, "the call to be in flight")

    signalled = time.monotonic()
    serve.signal(signal.SIGTERM)

    assert future.result(timeout=10) == worker
    assert serve.wait(timeout=10) == ExitCode.OK
    assert time.monotonic() - signalled < 10
    assert f"worker {worker} stopped (cleanly)" in serve.output


def test_a_second_sigterm_stops_at_once_without_waiting_for_calls(
    start_serve: StartServe, proxy: Proxy, tmp_path: Path,
) -> None:
    serve = start_serve("--grace", "60")
    ready_workers(serve, 1)
    marker = tmp_path / "in-flight"
    proxy.future.hold(str(marker), 60)
    wait_for(lambda: marker_pid(marker), 10, "the call to be in flight")

    serve.signal(signal.SIGTERM)
    wait_for(lambda: "SIGTERM: stopping" in serve.output, 5, "the first signal to be seen")
    serve.signal(signal.SIGTERM)

    assert serve.wait(timeout=5) == ExitCode.ERROR
    assert "second SIGTERM: killing workers" in serve.output


@pytest.mark.slow
def test_sighup_replaces_every_worker_without_losing_calls(
    start_serve: StartServe, proxy: Proxy, tmp_path: Path,
) -> None:
    serve = start_serve("--processes", "2")
    old = set(ready_workers(serve, 2))
    markers = [tmp_path / f"call-{i}" for i in range(24)]
    futures = [proxy.future.hold(str(m), 0.3) for m in markers]
    wait_for(lambda: any(marker_pid(m) for m in markers), 10, "calls in flight")

    serve.signal(signal.SIGHUP)

    new = set(ready_workers(serve, 4)) - old
    assert len(new) == 2
    assert len(results(futures, timeout=30)) == len(markers)
    wait_for(lambda: "reload complete" in serve.output, 10, "the reload to complete")
    wait_for(lambda: all(process_gone(pid) for pid in old), 10, "the old workers to stop")
    assert {ping(proxy)["pid"] for _ in range(6)} <= new  # type: ignore[index]


def test_a_reload_whose_new_code_fails_to_import_keeps_the_running_workers(
    start_serve: StartServe, proxy: Proxy, app_dir: Path,
) -> None:
    serve = start_serve()
    worker = ready_workers(serve, 1)[0]
    (app_dir / "app.py").write_text("raise RuntimeError('broken deploy')\n")

    serve.signal(signal.SIGHUP)

    wait_for(lambda: "the running workers stay" in serve.output, 10, "the failed reload")
    assert "RuntimeError('broken deploy')" in serve.output
    assert ping(proxy, timeout=5)["pid"] == worker  # type: ignore[index]


def test_sighup_reopens_the_logfile_after_logrotate_moved_it(
    start_serve: StartServe, tmp_path: Path,
) -> None:
    logfile = tmp_path / "rpc.log"
    serve = start_serve("--logfile", str(logfile))
    wait_for(lambda: logfile.exists() and "serving with 1 worker" in logfile.read_text(), 20,
             "the server to start")
    logfile.rename(tmp_path / "rpc.log.1")

    serve.signal(signal.SIGHUP)

    wait_for(lambda: logfile.exists() and "reload complete" in logfile.read_text(), 20,
             "the reload to be logged in a new file")
    assert "reload complete" not in (tmp_path / "rpc.log.1").read_text()


# -- detaching and pidfiles ------------------------------------------------------------------------

@pytest.mark.slow
def test_detach_runs_in_the_background_until_killed_through_its_pidfile(
    broker_url: str, server_id: str, app_dir: Path, tmp_path: Path, proxy: Proxy,
) -> None:
    pidfile, logfile = tmp_path / "rpc.pid", tmp_path / "rpc.log"
    done = run_rpc("serve", "app:server", "--server-id", server_id, "--app-dir", str(app_dir),
                   "--detach", "--pidfile", str(pidfile), "--logfile", str(logfile),
                   env=environment(broker_url))
    pid = int(pidfile.read_text()) if pidfile.exists() else None
    try:
        assert done.returncode == 0, done.stderr
        assert done.stderr == f"rpc: daemon started, pid {pid}\n"
        assert pid is not None and os.getsid(pid) != os.getsid(0)
        assert ping(proxy, timeout=5) is not None

        os.kill(pid, signal.SIGTERM)

        wait_for(lambda: not pidfile.exists(), 20, "the pidfile to be removed")
        wait_for(lambda: process_gone(pid), 10, "the daemon to exit")
        assert "rpc serve exits with code 0" in logfile.read_text()
    finally:
        for leftover in [pid, *worker_pids_in(logfile.read_text() if logfile.exists() else "")]:
            if leftover is not None and not process_gone(leftover):
                os.kill(leftover, signal.SIGKILL)


def test_detach_reports_a_daemon_that_cannot_start_with_its_exit_code(
    broker_url: str, tmp_path: Path,
) -> None:
    pidfile, logfile = tmp_path / "rpc.pid", tmp_path / "rpc.log"
    done = run_rpc("serve", "no_such_module_here:server", "--detach", "--pidfile", str(pidfile),
                   "--logfile", str(logfile), env=environment(broker_url))
    assert done.returncode == ExitCode.BAD_TARGET
    assert done.stderr.startswith("rpc: the daemon could not start: MODULE:ATTR cannot be")
    assert "no module named 'no_such_module_here'" in logfile.read_text()
    assert not pidfile.exists()


def test_serve_refuses_a_pidfile_naming_a_running_process(
    broker_url: str, app_dir: Path, tmp_path: Path,
) -> None:
    pidfile = tmp_path / "rpc.pid"
    pidfile.write_text(f"{os.getpid()}\n")
    done = run_rpc("serve", "app:server", "--app-dir", str(app_dir), "--pidfile", str(pidfile),
                   env=environment(broker_url))
    assert done.returncode == ExitCode.PIDFILE
    assert f"names process {os.getpid()}, which is running" in done.stderr
    assert pidfile.read_text() == f"{os.getpid()}\n"


def test_a_stale_pidfile_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "rpc.pid"
    path.write_text("999999999\n")
    with Pidfile(str(path)):
        assert path.read_text() == f"{os.getpid()}\n"
    assert not path.exists()


def test_a_pidfile_holding_garbage_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rpc.pid"
    path.write_text("not a pid")
    with pytest.raises(PidfileError, match="does not hold a pid"):
        Pidfile(str(path)).acquire()


def test_exit_reasons_name_the_signal_or_the_meaning_of_the_code() -> None:
    assert exit_reason(-signal.SIGKILL) == "was killed by SIGKILL"
    assert exit_reason(4) == "exited with code 4 (broker unreachable)"
    assert exit_reason(0) == "exited on its own with code 0"


# -- the broker going away -------------------------------------------------------------------------

@pytest.mark.slow
def test_the_daemon_reconnects_after_the_broker_closes_its_connection(
    request: pytest.FixtureRequest, start_serve: StartServe, proxy: Proxy, server_id: str,
) -> None:
    if os.environ.get("RPC_TEST_BROKER_URL"):
        pytest.skip("closes connections with rabbitmqctl on the session's own broker node")
    node = request.getfixturevalue("rabbitmq_proc")
    serve = start_serve()
    worker = ready_workers(serve, 1)[0]
    wait_serving(proxy, serve)
    name = f"rpc-server {server_id} pid={worker}"
    listing = node.rabbitctl_output("list_connections", "pid", "client_properties")
    connection = next(line.split()[0] for line in listing.splitlines() if name in line)

    node.rabbitctl_output("close_connection", connection, "test: broker closed the connection")

    wait_for(lambda: "lost its connection" in serve.output, 10, "the worker to notice")
    assert wait_serving(proxy, serve)["pid"] == worker
    assert "reconnected to amqp://guest:**@" in serve.output
