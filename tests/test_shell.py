"""``rpc shell``: an interactive console with a connected proxy, fed through standard input."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from cli_support import environment, new_server_id

from rpc import Server
from rpc.cli.exitcodes import ExitCode

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(broker_url: str) -> Iterator[str]:
    server = Server(broker_url, server_id=new_server_id())
    server.register_function(lambda a, b: a + b, "add")
    server.start()
    try:
        yield server.server_id
    finally:
        server.stop(grace=5)


def shell(server_id: str, url: str, stdin: str, *options: str) -> subprocess.CompletedProcess[str]:
    """``rpc shell SERVER_ID`` with ``stdin`` typed in (not a terminal: Python's console)."""
    return subprocess.run(
        [sys.executable, "-m", "rpc", "shell", server_id, *options], input=stdin,
        env=environment(url), capture_output=True, text=True, timeout=30,
    )


def test_shell_evaluates_calls_through_the_connected_proxy(served: str, broker_url: str) -> None:
    done = shell(served, broker_url, "proxy.add(2, 3)\n")
    assert done.returncode == 0, done.stderr
    assert "5" in done.stdout.split()


def test_shell_banner_names_the_server_and_the_broker_without_its_password(
    served: str, broker_url: str,
) -> None:
    done = shell(served, broker_url, "")
    assert f"`proxy` calls '{served}' on amqp://guest:**@" in done.stderr
    assert "guest:guest@" not in done.stdout + done.stderr


def test_shell_banner_lists_the_servers_methods(served: str, broker_url: str) -> None:
    assert "methods: add  (and system.*)" in shell(served, broker_url, "").stderr


def test_shell_raises_remote_errors_in_the_session(served: str, broker_url: str) -> None:
    done = shell(served, broker_url, "proxy.nope()\nprint('after', proxy.add(1, 1))\n")
    assert "MethodNotFound" in done.stderr
    assert "after 2" in done.stdout


def test_shell_opens_for_a_server_id_nobody_serves_and_says_so(broker_url: str) -> None:
    done = shell(new_server_id(), broker_url, "print('still here')\n")
    assert done.returncode == 0
    assert "no server answers yet" in done.stderr
    assert "still here" in done.stdout


def test_shell_with_the_broker_unreachable_exits_4(broker_url: str) -> None:
    done = shell("calc", "amqp://guest:guest@127.0.0.1:1//", "", "--connect-retry", "0")
    assert done.returncode == ExitCode.UNREACHABLE


ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def test_shell_on_a_terminal_is_ipython_when_installed(served: str, broker_url: str) -> None:
    pytest.importorskip("IPython")
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "rpc", "shell", served], stdin=slave,
                            stdout=slave, stderr=slave, env={**environment(broker_url),
                                                             "TERM": "dumb"})
    os.close(slave)
    seen = b""

    def read_until(needle: bytes, seconds: float = 20) -> bool:
        nonlocal seen
        deadline = time.monotonic() + seconds
        while needle not in ANSI.sub(b"", seen) and time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    seen += os.read(master, 4096)
                except OSError:
                    break
        return needle in ANSI.sub(b"", seen)

    try:
        assert read_until(b"In [1]"), seen
        os.write(master, b"proxy.add(2, 3)\r")
        assert read_until(b"Out[1]: 5"), seen
        os.write(master, b"exit\r")
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
