"""What a server logs: failures by kind with their traceback, never flooding, a start and a stop."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import time

import pytest

import rpc
from rpc import Proxy, Server

pytestmark = pytest.mark.integration

WAIT = 10


class Overdrawn(Exception):
    pass


def withdraw(amount: int) -> int:
    raise Overdrawn(f"cannot withdraw {amount}")


def divide(a: float, b: float) -> float:
    return a / b


@pytest.fixture
def served(broker_url: str, server_id: str):
    server = Server(broker_url, server_id=server_id)
    server.register_function(withdraw, expected=(Overdrawn,))
    server.register_function(divide)
    server.start()
    with Proxy(broker_url, server_id=server_id, timeout=WAIT) as proxy:
        yield server, proxy
    server.stop()


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "rpc.server" and r.levelno == level]


def wait_for_record(caplog: pytest.LogCaptureFixture, level: int) -> logging.LogRecord:
    deadline = time.monotonic() + WAIT
    while not records(caplog, level):
        assert time.monotonic() < deadline, "no record at that level"
        time.sleep(0.01)
    return records(caplog, level)[0]


def test_an_unexpected_exception_is_logged_at_error_with_its_traceback(served, caplog):
    caplog.set_level(logging.INFO, logger="rpc")
    _, proxy = served
    with pytest.raises(ZeroDivisionError):
        proxy.with_context(request_id="req-42").divide(1, 0)
    record = wait_for_record(caplog, logging.ERROR)
    message = record.getMessage()
    assert "divide raised ZeroDivisionError" in message
    assert "correlation_id=" in message and "request_id=req-42" in message
    assert record.exc_info is not None and record.exc_info[0] is ZeroDivisionError
    assert "return a / b" in caplog.text  # the handler's own line, from the traceback


def test_an_expected_exception_is_logged_at_info_without_a_traceback(served, caplog):
    caplog.set_level(logging.INFO, logger="rpc")
    _, proxy = served
    with pytest.raises(rpc.RemoteError):
        proxy.withdraw(5)
    deadline = time.monotonic() + WAIT
    while not any("withdraw raised Overdrawn" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    record = next(r for r in caplog.records if "withdraw raised Overdrawn" in r.getMessage())
    assert record.levelno == logging.INFO
    assert record.exc_info is None
    assert not records(caplog, logging.ERROR)


def test_an_unknown_method_is_logged_as_refused_with_its_name(served, caplog):
    caplog.set_level(logging.INFO, logger="rpc")
    _, proxy = served
    with pytest.raises(rpc.MethodNotFound):
        proxy.nosuch(1)
    record = wait_for_record(caplog, logging.WARNING)
    assert record.getMessage().startswith("nosuch refused MethodNotFound")


def test_arguments_that_do_not_fit_are_logged_as_refused_with_the_method_name(served, caplog):
    caplog.set_level(logging.INFO, logger="rpc")
    _, proxy = served
    with pytest.raises(rpc.InvalidArguments):
        proxy.divide(1)
    record = wait_for_record(caplog, logging.WARNING)
    assert record.getMessage().startswith("divide refused InvalidArguments")


def test_a_storm_of_one_error_is_rate_limited_with_a_count(served, caplog):
    caplog.set_level(logging.INFO, logger="rpc")
    server, proxy = served
    server._failures.limiter.window = 0.5
    for _ in range(20):
        with pytest.raises(ZeroDivisionError):
            proxy.divide(1, 0)
    assert len(records(caplog, logging.ERROR)) == server._failures.limiter.burst
    time.sleep(0.6)
    with pytest.raises(ZeroDivisionError):
        proxy.divide(1, 0)
    deadline = time.monotonic() + WAIT
    while len(records(caplog, logging.ERROR)) <= server._failures.limiter.burst:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert "(15 more like it suppressed)" in records(caplog, logging.ERROR)[-1].getMessage()


def test_start_and_stop_are_logged_with_the_password_masked(broker_url, server_id, caplog):
    caplog.set_level(logging.INFO, logger="rpc")
    server = Server(broker_url, server_id=server_id)
    server.start()
    server.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "rpc.server"]
    start = next(line for line in lines if line.startswith("serving"))
    assert server_id in start and "guest:**@" in start and "classic" in start
    assert "methods" in start and "concurrency 1" in start
    assert any(line.startswith(f"stopped serving {server_id!r}") for line in lines)


def test_serve_from_a_script_logs_to_stderr_without_any_logging_setup(broker_url, server_id):
    script = textwrap.dedent(f"""
        import os, signal, threading
        from rpc import Server
        server = Server({broker_url!r}, server_id={server_id!r})
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
        server.serve()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"INFO rpc.server: serving {server_id!r}" in done.stderr
    assert f"stopped serving {server_id!r}" in done.stderr
