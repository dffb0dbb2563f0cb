"""Classic Unix daemon chores for ``rpc serve``: pidfiles, detaching, log files.

:func:`detach` is the double fork of W. Richard Stevens: the daemon is not a session leader, so
it can never take a terminal again, and is reparented to init. The command the user ran waits
until the daemon reports that its workers are ready (or why they are not) and exits with that
outcome, so ``rpc serve --detach`` in a script or a ``Type=forking`` unit fails visibly.
"""

from __future__ import annotations

import os
import select
import sys
import time
from types import TracebackType

from .exitcodes import ExitCode, describe


class PidfileError(Exception):
    """The pidfile names a running process, or holds something that is not a pid."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Pidfile:
    """A file holding the daemon's pid, created exclusively and removed on exit.

    A pidfile left behind by a process that no longer runs is replaced; one naming a live
    process, or holding garbage, is refused rather than guessed about.
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._owned = False

    def read(self) -> int | None:
        """The pid in the file, or None when there is no file.

        Raises:
            PidfileError: the file does not hold a pid.
        """
        try:
            with open(self.path) as f:
                text = f.read().strip()
        except FileNotFoundError:
            return None
        if not text.isdigit() or int(text) <= 0:
            raise PidfileError(f"pidfile {self.path} does not hold a pid: {text[:40]!r}")
        return int(text)

    def check(self) -> None:
        """Fail early if another daemon holds the pidfile.

        Raises:
            PidfileError: the pidfile names a running process, or is garbage.
        """
        pid = self.read()
        if pid is not None and pid != os.getpid() and pid_alive(pid):
            raise PidfileError(f"pidfile {self.path} names process {pid}, which is running")

    def acquire(self) -> None:
        """Write this process's pid, replacing a stale pidfile.

        Raises:
            PidfileError: another process holds it (see :meth:`check`).
        """
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self.check()
                try:
                    os.unlink(self.path)  # stale: its process is gone
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            self._owned = True
            return
        raise PidfileError(f"pidfile {self.path} keeps reappearing; is another daemon starting?")

    def release(self) -> None:
        """Remove the pidfile if it still names this process."""
        if not self._owned:
            return
        self._owned = False
        try:
            if self.read() == os.getpid():
                os.unlink(self.path)
        except (PidfileError, FileNotFoundError):
            pass

    def __enter__(self) -> Pidfile:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None,
    ) -> None:
        self.release()


def redirect_output(logfile: str | None) -> None:
    """Point stdin at /dev/null and stdout and stderr at ``logfile`` (appended) or /dev/null."""
    sys.stdout.flush()
    sys.stderr.flush()
    null = os.open(os.devnull, os.O_RDWR)
    out = null
    if logfile is not None:
        out = os.open(os.path.abspath(logfile), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    for fd in {null, out}:
        if fd > 2:
            os.close(fd)


class Report:
    """The daemon's end of the pipe to the command that started it: ready, or failed with a code."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def ready(self) -> None:
        """Tell the waiting command that the daemon serves; it exits 0."""
        self._send(f"ready {os.getpid()}\n")

    def failed(self, code: int) -> None:
        """Tell the waiting command that the daemon could not start; it exits with ``code``."""
        self._send(f"failed {int(code)}\n")

    def _send(self, line: str) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, line.encode())
        except OSError:
            pass  # the command that waited is gone: nobody to tell
        finally:
            os.close(self._fd)
            self._fd = None


def detach(logfile: str | None, wait: float) -> Report:
    """Become a daemon; returns in the daemon only.

    The calling process waits up to ``wait`` seconds for the daemon's report, prints it, and
    exits with the daemon's startup code (0 once ready; 0 too, with a warning, if the daemon is
    still starting when the wait ends, since it then runs).
    """
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child > 0:
        os.close(write_end)
        os.waitpid(child, 0)  # it exits as soon as it has forked the daemon
        raise SystemExit(_await_report(read_end, wait, logfile))
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    redirect_output(logfile)
    return Report(write_end)


def _await_report(fd: int, wait: float, logfile: str | None) -> int:
    """In the command that ran ``--detach``: read the daemon's report and say what happened."""
    see = f"; see {os.path.abspath(logfile)}" if logfile else ""
    deadline = time.monotonic() + wait
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            print(f"rpc: the daemon is still starting after {wait:g} s{see}", file=sys.stderr)
            return ExitCode.OK
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            continue
        chunk = os.read(fd, 64)
        if not chunk:
            break
        data += chunk
    os.close(fd)
    word, _, value = data.decode(errors="replace").strip().partition(" ")
    if word == "ready" and value.isdigit():
        print(f"rpc: daemon started, pid {value}", file=sys.stderr)
        return ExitCode.OK
    if word == "failed" and value == "0":
        print("rpc: the daemon was stopped before it was ready", file=sys.stderr)
        return ExitCode.OK
    if word == "failed" and value.isdigit():
        print(f"rpc: the daemon could not start: {describe(int(value))}{see}", file=sys.stderr)
        return int(value)
    print(f"rpc: the daemon exited before it was ready{see}", file=sys.stderr)
    return ExitCode.ERROR
