"""Child processes of the suite: starting them, reading their status lines, measuring their CPU."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

ROOT = Path(__file__).resolve().parent.parent


class Child:
    """A ``python -m <module>`` process whose stdout lines are read on a thread."""

    def __init__(self, module: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1, start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.errors: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put),
                         daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self._keep_error),
                         daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @staticmethod
    def _pump(stream: Any, sink: Any) -> None:
        for line in stream:
            sink(line.rstrip("\n"))
        sink(None)

    def _keep_error(self, line: str | None) -> None:
        if line is not None:
            self.errors = (self.errors + [line])[-40:]

    def expect(self, prefix: str, timeout: float) -> str:
        """The first stdout line starting with ``prefix`` (RuntimeError if none in time)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise RuntimeError(f"no {prefix!r} line in {timeout:g} s{self._tail()}") from None
            if line is None:
                code = self.proc.wait()
                raise RuntimeError(f"exited with {code} before {prefix!r}{self._tail()}")
            if line.startswith(prefix):
                return line[len(prefix):].strip()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def _tail(self) -> str:
        time.sleep(0.2)  # let the stderr reader catch the last lines
        return (":\n" + "\n".join(self.errors[-15:])) if self.errors else ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL to the whole process group if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def cpu_seconds(pids: list[int], *, tree: bool = False) -> float:
    """User plus system CPU seconds used so far by ``pids`` and their reaped children, and with
    ``tree`` by their live descendants too (the workers of a supervisor)."""
    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs = [proc, *proc.children(recursive=True)] if tree else [proc]
        except psutil.Error:
            continue
        for member in procs:
            try:
                times = member.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system + times.children_user + times.children_system
    return total


def broker_pid(url: str) -> int | None:
    """The pid of the RabbitMQ node (``beam.smp``) listening on ``url``'s port, if local."""
    parts = urlsplit(url)
    if parts.hostname not in ("localhost", "127.0.0.1", "::1"):
        return None
    port = parts.port or 5672
    candidates = [p for p in psutil.process_iter(["name"]) if p.info["name"] == "beam.smp"]
    for proc in candidates:
        try:
            if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                   for c in proc.net_connections(kind="tcp")):
                return int(proc.pid)
        except psutil.Error:
            continue
    return int(candidates[0].pid) if len(candidates) == 1 else None


def machine_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent (all cores, user + nice + system) so far."""
    times = psutil.cpu_times()
    return float(times.user + times.nice + times.system)
