"""One worker process: import MODULE:ATTR, serve it, stop gracefully when told.

The supervisor (:mod:`rpc.cli.supervisor`) starts each worker as ``python -m rpc.cli.worker``, a fresh
interpreter that imports the user's module itself, so a restart also reloads the code. A worker
reports readiness by writing one byte to a pipe, and says why it could not start through its exit
code (:mod:`rpc.exitcodes`). The broker URL travels in ``$RPC_BROKER_URL``, never in argv, where
``ps`` would show its password.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from types import FrameType
from typing import Any

from ..core.errors import ConnectionError
from ..defaults import DEFAULT_GRACE, SERVER_CONNECT_RETRY
from ..server.options import queue_type
from ..server.server import Server
from ..transport.urls import URL_ENV
from . import logconfig
from .exitcodes import ExitCode, for_connection_error

logger = logging.getLogger("rpc.cli.worker")  # not __name__: that is "__main__" under python -m

#: How often a worker checks that its supervisor is still alive, in seconds.
PARENT_CHECK_INTERVAL = 0.5
#: How often a healthy worker tells its supervisor it is alive (a byte on its pipe), in seconds.
ALIVE_INTERVAL = 2.0
#: The byte a worker writes once when it serves, and the one it writes while it stays healthy.
READY, ALIVE = b"R", b"A"


class TargetError(Exception):
    """MODULE:ATTR cannot be imported or does not give a Server."""


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to start, as given on the ``rpc serve`` command line."""

    target: str
    url: str | None = None
    server_id: str | None = None
    concurrency: int | None = None
    grace: float = DEFAULT_GRACE
    connect_retry: float = SERVER_CONNECT_RETRY
    app_dir: str = "."
    log_level: str = "INFO"
    log_format: str = "text"
    #: Worker ``slot`` serves Prometheus metrics on ``metrics_port + slot`` (None: the Server's).
    metrics_port: int | None = None
    #: ``classic`` or ``quorum`` (None: the Server's own choice).
    queue_type: str | None = None

    def command(self, ready_fd: int, slot: int = 0) -> list[str]:
        """The argv that starts worker number ``slot`` for this spec (without the URL)."""
        argv = [
            sys.executable, "-m", "rpc.cli.worker", self.target, "--ready-fd", str(ready_fd),
            "--slot", str(slot),
            "--grace", repr(self.grace), "--connect-retry", repr(self.connect_retry),
            "--app-dir", os.path.abspath(self.app_dir),
            "--log-level", self.log_level, "--log-format", self.log_format,
        ]
        if self.server_id is not None:
            argv += ["--server-id", self.server_id]
        if self.concurrency is not None:
            argv += ["--concurrency", str(self.concurrency)]
        if self.metrics_port is not None:
            argv += ["--metrics-port", str(self.metrics_port)]
        if self.queue_type is not None:
            argv += ["--queue-type", self.queue_type]
        return argv

    def environment(self) -> dict[str, str]:
        """The worker's environment: this process's, with the URL if one was given."""
        env = dict(os.environ)
        if self.url is not None:
            env[URL_ENV] = self.url
        return env


def load_server(target: str, app_dir: str = ".") -> Server:
    """Import ``module:attr`` and return its Server, calling ``attr`` first if it is a factory.

    Raises:
        TargetError: bad syntax, the import failed, or the attribute is not (nor makes) a Server.
    """
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise TargetError(f"{target!r} is not MODULE:ATTR (for example examples.calc:server)")
    path = os.path.abspath(app_dir)
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name or module_name.startswith(f"{exc.name}."):
            raise TargetError(
                f"no module named {exc.name!r} (searched {path} and sys.path)") from None
        raise TargetError(f"importing {module_name!r} failed: {exc!r}") from exc
    except Exception as exc:
        raise TargetError(f"importing {module_name!r} failed: {exc!r}") from exc
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TargetError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, Server) and callable(obj):
        try:
            obj = obj()
        except Exception as exc:
            raise TargetError(f"calling {target} failed: {exc!r}") from exc
    if not isinstance(obj, Server):
        raise TargetError(f"{target} is a {type(obj).__name__}, not a Server or a factory of one")
    return obj


def apply_overrides(server: Server, spec: WorkerSpec, slot: int = 0) -> None:
    """Apply the command line's options to a loaded server (worker number ``slot``).

    ``--server-id``, ``--concurrency``, ``--connect-retry``, ``--queue-type``, and
    ``--metrics-port`` (plus ``slot``, so that each worker of one ``rpc serve`` has a port of
    its own). A default prefetch (None: a multiple of the concurrency) follows the new
    concurrency; a prefetch the module chose itself is kept.

    Raises:
        ValueError: an option is out of range (the server's options are checked as a whole).
    """
    changes: dict[str, Any] = {"connect_retry": spec.connect_retry}
    if spec.server_id is not None:
        changes["server_id"] = spec.server_id
    if spec.concurrency is not None:
        changes["concurrency"] = spec.concurrency
    if spec.queue_type is not None:
        changes["queue_type"] = queue_type(spec.queue_type)
    if spec.metrics_port is not None:
        changes["metrics_port"] = spec.metrics_port + slot
    server.options = dataclasses.replace(server.options, **changes)


def server_alive(server: Server) -> bool:
    """Whether ``server`` is serving, connected, and its I/O thread answers.

    ``status()`` asks the broker for the queue's depth, a round trip through the server's own I/O
    thread (at most 2 s): a depth that comes back proves the connection and that thread alive.
    """
    if not server.running:
        return False
    try:
        status = server.status()
    except Exception:  # a status that cannot be read is no sign of life
        logger.debug("status() failed", exc_info=True)
        return False
    return status.get("node") is not None and status.get("queue_depth") is not None


def _report_alive(server: Server, fd: int, stop: threading.Event) -> None:
    """Write :data:`ALIVE` to the supervisor's pipe every ALIVE_INTERVAL while the server lives.

    The supervisor turns these into ``--liveness-file`` touches. The pipe is non-blocking: a
    supervisor that stopped reading (frozen) must not freeze this worker too.
    """
    was_alive = True
    while not stop.wait(ALIVE_INTERVAL):
        alive = server_alive(server)
        if alive != was_alive and not stop.is_set():
            if alive:
                logger.info("worker %d alive again: reporting to the supervisor", os.getpid())
            else:
                logger.warning("worker %d is not alive (not connected, or its I/O does not "
                               "answer): the liveness file goes stale", os.getpid())
        was_alive = alive
        if not alive:
            continue
        try:
            os.write(fd, ALIVE)
        except BlockingIOError:
            pass
        except OSError:  # the supervisor is gone; the main loop notices
            return


def run(spec: WorkerSpec, ready_fd: int | None = None, slot: int = 0) -> int:
    """Serve until SIGTERM/SIGINT or the supervisor's death; returns the exit code.

    Repeated signals do not cut the grace short: escalating is the supervisor's job (SIGKILL),
    so a process manager that signals the whole group at once does not abort calls in flight.
    """
    stop = threading.Event()
    reason: list[str] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not stop.is_set():
            reason.append(signal.Signals(signum).name)
            stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloading is the supervisor's job
    parent = os.getppid()

    try:
        server = load_server(spec.target, spec.app_dir)
        apply_overrides(server, spec, slot)
    except TargetError as exc:
        logger.error("cannot load %s: %s", spec.target, exc, exc_info=exc.__cause__ is not None)
        return ExitCode.BAD_TARGET
    except ValueError as exc:  # an option the server refuses
        logger.error("server %s could not start: %s", spec.target, exc)
        return ExitCode.ERROR
    if stop.is_set():
        return ExitCode.OK
    try:
        server.start()
    except ConnectionError as exc:
        logger.error("%s", exc)
        return for_connection_error(exc)
    except Exception:
        logger.exception("server %r could not start", server.server_id)
        return ExitCode.ERROR
    if ready_fd is not None:
        try:
            os.write(ready_fd, READY)
            os.set_blocking(ready_fd, False)
        except OSError:  # the supervisor is gone; the loop below notices
            pass
        threading.Thread(target=_report_alive, args=(server, ready_fd, stop),
                         name="rpc-worker-alive", daemon=True).start()
    while not stop.wait(PARENT_CHECK_INTERVAL):
        if os.getppid() != parent:
            reason.append("supervisor gone")
            stop.set()
    logger.info("worker %d stopping (%s): finishing calls in flight, up to %g s",
                os.getpid(), reason[0], spec.grace)
    server.stop(grace=spec.grace)
    return ExitCode.OK


def _parse(argv: list[str]) -> tuple[WorkerSpec, int | None, int]:
    parser = argparse.ArgumentParser(prog="python -m rpc.cli.worker", description=__doc__)
    parser.add_argument("target")
    parser.add_argument("--ready-fd", type=int)
    parser.add_argument("--slot", type=int, default=0)
    parser.add_argument("--metrics-port", type=int)
    parser.add_argument("--queue-type", choices=("classic", "quorum"))
    parser.add_argument("--server-id")
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--grace", type=float, default=DEFAULT_GRACE)
    parser.add_argument("--connect-retry", type=float, default=SERVER_CONNECT_RETRY)
    parser.add_argument("--app-dir", default=".")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", default="text")
    args = parser.parse_args(argv)
    spec = WorkerSpec(
        target=args.target, server_id=args.server_id, concurrency=args.concurrency,
        grace=args.grace, connect_retry=args.connect_retry, app_dir=args.app_dir,
        log_level=args.log_level, log_format=args.log_format, metrics_port=args.metrics_port,
        queue_type=args.queue_type,
    )
    return spec, args.ready_fd, args.slot


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m rpc.cli.worker``."""
    spec, ready_fd, slot = _parse(sys.argv[1:] if argv is None else argv)
    logconfig.configure(spec.log_level, spec.log_format)
    return run(spec, ready_fd, slot)


if __name__ == "__main__":
    sys.exit(main())
