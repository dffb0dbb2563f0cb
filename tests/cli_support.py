"""Helpers for tests that run the ``rpc`` command in real processes, every wait bounded.

Imported by test_cli*.py, test_daemon*.py and test_examples*.py; it holds no tests itself.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from rpc import Proxy, RPCError

REPO = Path(__file__).resolve().parent.parent

_T = TypeVar("_T")

#: A test application: imported by ``rpc serve app:server`` from a test's own directory.
APP = textwrap.dedent('''
    """Served by the CLI and daemon tests."""
    import os
    import pathlib
    import time

    from rpc import Server

    server = Server(send_tracebacks=True, concurrency=4)


    @server.expose
    def add(a, b):
        """Add a and b.

        Works on anything with +.
        """
        return a + b


    @server.expose
    def fail(message):
        """Raise ValueError(message)."""
        raise ValueError(message)


    @server.expose
    def hold(marker, seconds):
        """Write this worker's pid to the file marker, sleep, then return the pid."""
        pathlib.Path(marker).write_text(str(os.getpid()))
        time.sleep(seconds)
        return os.getpid()


    @server.expose
    def count(n):
        """Yield 0 to n - 1 (a stream)."""
        yield from range(n)


    def make_server():
        return server


    quiet = Server(introspection=False)
    quiet.register_function(add)


    not_a_server = 42
''')


def new_server_id() -> str:
    return f"test-cli-{uuid.uuid4().hex[:12]}"


def write_app(directory: Path) -> Path:
    """Write the test application as ``directory/app.py``; returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "app.py").write_text(APP)
    return directory


def environment(broker_url: str, **extra: str) -> dict[str, str]:
    """This process's environment with the broker URL and no RPC_ settings from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPC_")}
    env["RPC_BROKER_URL"] = broker_url
    env.update(extra)
    return env


def run_rpc(
    *args: str, env: dict[str, str], timeout: float = 30, cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -m rpc ARGS`` to completion, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "rpc", *args], env=env, cwd=cwd, capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL,
    )


def wait_for(
    probe: Callable[[], _T | None], timeout: float, what: str, interval: float = 0.05,
) -> _T:
    """Call ``probe`` until it returns something other than None or False, for ``timeout`` s.

    Raises:
        AssertionError: the deadline passed; the message says what was awaited.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    """A loopback port nothing listens on (bound and released at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie awaiting its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


class Serve:
    """``python -m rpc serve ...`` in a subprocess, killed (with its workers) when closed."""

    def __init__(
        self, *args: str, env: dict[str, str], log: Path, cwd: Path | None = None,
    ) -> None:
        self.log = log
        self._log_file = open(log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rpc", "serve", *args], env=env, cwd=cwd,
            stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
        )
        self.worker_pids: set[int] = set()

    @property
    def output(self) -> str:
        """What the supervisor and its workers wrote so far."""
        return self.log.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """The exit code, waiting at most ``timeout`` s (the log is in the failure message)."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"rpc serve still running after {timeout} s:\n{self.output}") from None

    def close(self) -> None:
        """Kill the supervisor and every worker it reported; never leaves a process behind."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pid in self.worker_pids | set(worker_pids_in(self.output)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._log_file.close()


def worker_pids_in(log: str) -> list[int]:
    """Pids from the supervisor's ``worker N ready`` lines."""
    pids = []
    for line in log.splitlines():
        words = line.split()
        if "worker" in words and words[-1] == "ready":
            pids.append(int(words[words.index("worker") + 1]))
    return pids


def ping(proxy: Proxy, timeout: float = 1.0) -> dict[str, Any] | None:
    """``system.ping`` through ``proxy``, or None when no server answered in time."""
    try:
        return proxy.set_timeout(timeout).call("system.ping")  # type: ignore[no-any-return]
    except RPCError:
        return None


def wait_serving(proxy: Proxy, serve: Serve, timeout: float = 20) -> dict[str, Any]:
    """Wait until a server answers ``proxy``'s pings; fails early if ``serve`` exited."""
    def probe() -> dict[str, Any] | None:
        if serve.proc.poll() is not None:
            raise AssertionError(f"rpc serve exited with {serve.proc.returncode}:\n{serve.output}")
        return ping(proxy, timeout=0.5)

    return wait_for(probe, timeout, "the server to answer a ping")
