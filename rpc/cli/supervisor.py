"""The supervisor behind ``rpc serve``: N worker processes, restarted when they die.

Each worker (:mod:`rpc.cli.worker`) is its own interpreter with its own broker connection, consuming
the same queue as the others (competing consumers), so CPU-bound methods use every core. The
supervisor never touches the broker; it only starts, watches and signals processes:

* a worker that dies is restarted after a backoff (0.5 s, doubling up to 30 s, reset once a
  worker has lived 10 s), with a log line saying how it died;
* SIGTERM or SIGINT sends SIGTERM to every worker, which finishes its calls in flight within the
  grace period; a second signal kills them at once;
* SIGHUP starts a new set of workers and stops one old worker each time a new one is ready, so
  the queue always has consumers and no request is lost while the code is reloaded;
* a worker that cannot start at first (bad MODULE:ATTR, broker unreachable or refusing) ends the
  supervisor with the worker's exit code;
* each worker has a slot (0 to N-1, kept by its replacements; ``--metrics-port`` adds it to the
  port) and writes a byte to its pipe every few seconds while its server is alive; with a
  ``liveness_file``, the supervisor touches that file while every slot has a live worker, so a
  healthcheck (``rpc health``) notices a frozen worker, or a frozen supervisor, in this very
  container.

Workers run in their own process group, so a terminal's Ctrl-C reaches the supervisor alone and
each worker gets exactly one, orderly, SIGTERM.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from ..defaults import DEFAULT_GRACE
from .exitcodes import STARTUP_FAILURES, ExitCode, describe
from .worker import ALIVE_INTERVAL, READY, WorkerSpec

logger = logging.getLogger(__name__)

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
#: A worker that lived this many seconds resets the backoff.
STABLE_AFTER = 10.0
#: Seconds past the grace period after which workers that still run are killed.
KILL_MARGIN = 5.0
#: Longest sleep of the supervisor's loop, in seconds.
TICK = 0.2
#: A worker silent for this long no longer counts as alive for the liveness file.
ALIVE_WITHIN = 3 * ALIVE_INTERVAL

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass(eq=False)
class Worker:
    """One worker process as the supervisor sees it."""

    proc: subprocess.Popen[bytes]
    ready_fd: int
    generation: int
    started: float
    slot: int = 0
    last_alive: float | None = None  # monotonic time of its last sign of life on the pipe
    successor: bool = False  # started by a reload; retires an older worker once ready
    ready: bool = False
    retiring: bool = False  # sent SIGTERM on purpose: its exit is expected

    @property
    def pid(self) -> int:
        return self.proc.pid


def exit_reason(code: int) -> str:
    """How a process ended, from its ``returncode``."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    if code == ExitCode.OK:
        return "exited on its own with code 0"
    if code == ExitCode.ERROR:
        return "exited with code 1 (an error, logged above)"
    return f"exited with code {code} ({describe(code)})"


class Supervisor:
    """Run ``processes`` workers for ``spec`` until a stop signal; see the module docstring.

    Args:
        spec: what each worker serves and how.
        processes: how many workers to keep running.
        grace: seconds a stopping worker has to finish its calls in flight.
        on_ready: called once, when every worker of the first set is ready.
        on_reload: called on SIGHUP before new workers start (a detached daemon reopens its
            log file there, for logrotate).
        liveness_file: touched every few seconds while each of the ``processes`` slots has a
            worker that reported itself alive recently; removed when the supervisor ends.
    """

    def __init__(
        self,
        spec: WorkerSpec,
        processes: int = 1,
        *,
        grace: float = DEFAULT_GRACE,
        on_ready: Callable[[], None] | None = None,
        on_reload: Callable[[], None] | None = None,
        liveness_file: str | None = None,
    ) -> None:
        if processes < 1:
            raise ValueError("processes must be at least 1")
        self.spec = spec
        self.processes = processes
        self.grace = grace
        self._on_ready = on_ready
        self._on_reload = on_reload
        self.liveness_file = os.path.abspath(liveness_file) if liveness_file else None
        self._touched = 0.0
        self._workers: list[Worker] = []
        self._restarts: list[tuple[float, int]] = []  # (due time, slot)
        self._generation = 0
        self._streak = 0
        self._starting = True
        self._stopping = False
        self._code: int = ExitCode.OK
        self._kill_at: float | None = None
        self._selector = selectors.DefaultSelector()

    @property
    def pids(self) -> list[int]:
        """Pids of the workers serving now (not those being stopped)."""
        return [w.pid for w in self._workers if not w.retiring]

    def run(self) -> int:
        """Supervise until stopped; returns the exit code for the ``rpc`` process."""
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        self._selector.register(wake_r, selectors.EVENT_READ, None)
        previous_wakeup = signal.set_wakeup_fd(wake_w)
        previous = {sig: signal.signal(sig, _record) for sig in (*_STOP_SIGNALS, signal.SIGHUP)}
        try:
            logger.info("supervisor %d starting %d worker(s) for %s", os.getpid(),
                        self.processes, self.spec.target)
            for slot in range(self.processes):
                self._spawn(slot)
            while self._workers or not self._stopping:
                self._step(wake_r)
            return self._code
        finally:
            self._kill_all()
            self._remove_liveness_file()
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._selector.close()
            os.close(wake_r)
            os.close(wake_w)

    # -- the loop --------------------------------------------------------------------------------

    def _step(self, wake_r: int) -> None:
        now = time.monotonic()
        timeout = TICK
        for due in (*(t for t, _ in self._restarts), *([self._kill_at] if self._kill_at else [])):
            timeout = min(timeout, max(due - now, 0))
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                for signum in os.read(wake_r, 64):
                    self._on_signal(signum)
            else:
                self._on_readable(key.data)
        self._reap()
        now = time.monotonic()
        starting = [slot for t, slot in self._restarts if t <= now]
        self._restarts = [(t, slot) for t, slot in self._restarts if t > now]
        for slot in starting:
            self._spawn(slot)
        self._touch_liveness_file(now)
        if self._kill_at is not None and now >= self._kill_at and self._workers:
            logger.error("workers %s still running %g s after the grace period; killing them",
                         [w.pid for w in self._workers], KILL_MARGIN)
            self._code = self._code or ExitCode.ERROR  # keep a startup failure's own code
            self._kill_all()

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            self._reload()
        elif self._stopping:
            logger.warning("second %s: killing workers %s now", name,
                           [w.pid for w in self._workers])
            self._code = self._code or ExitCode.ERROR
            self._kill_all()
        else:
            logger.info("%s: stopping %d worker(s), each finishing its calls in flight "
                        "(grace %g s)", name, len(self._workers), self.grace)
            self._begin_stop(ExitCode.OK)

    def _on_readable(self, worker: Worker) -> None:
        if worker.ready_fd < 0:  # reaped earlier in this same batch of events
            return
        try:
            data = os.read(worker.ready_fd, 64)
        except BlockingIOError:
            return
        if not data:  # the worker is exiting; _reap collects it
            self._close_pipe(worker)
            return
        worker.last_alive = time.monotonic()
        if not worker.ready and READY in data:
            self._ready(worker)

    # -- worker lifecycle ------------------------------------------------------------------------

    def _spawn(self, slot: int, successor: bool = False) -> None:
        ready_r, ready_w = os.pipe()
        try:
            proc = subprocess.Popen(
                self.spec.command(ready_w, slot), env=self.spec.environment(), pass_fds=(ready_w,),
                stdin=subprocess.DEVNULL, process_group=0,
            )
        except BaseException:
            os.close(ready_r)
            raise
        finally:
            os.close(ready_w)
        os.set_blocking(ready_r, False)
        worker = Worker(proc, ready_r, self._generation, time.monotonic(), slot=slot,
                        successor=successor)
        self._workers.append(worker)
        self._selector.register(ready_r, selectors.EVENT_READ, worker)
        logger.debug("started worker %d (slot %d, generation %d)", worker.pid, slot,
                     worker.generation)

    def _ready(self, worker: Worker) -> None:
        worker.ready = True
        logger.info("worker %d ready", worker.pid)
        if worker.successor:
            worker.successor = False
            self._retire_one_older(worker)
            if not any(w.successor for w in self._workers):
                logger.info("reload complete: workers %s", self.pids)
        if self._starting and sum(w.ready for w in self._workers) >= self.processes:
            self._starting = False
            logger.info("serving with %d worker(s): %s", self.processes, self.pids)
            if self._on_ready is not None:
                self._on_ready()

    def _retire_one_older(self, newcomer: Worker) -> None:
        """Keep ``processes`` workers: a ready successor takes the place of an older one."""
        active = [w for w in self._workers if not w.retiring and not w.successor]
        if len(active) + len(self._restarts) <= self.processes:
            return
        if self._restarts:
            same = [r for r in self._restarts if r[1] == newcomer.slot]
            self._restarts.remove(same[0] if same else self._restarts[-1])
            return
        older = [w for w in active if w.generation < newcomer.generation]
        # the same slot first: it holds the metrics port the newcomer is given
        victim = min(older, key=lambda w: (w.slot != newcomer.slot, w.generation, w.started),
                     default=newcomer)
        logger.info("stopping worker %d (replaced by %d)", victim.pid, newcomer.pid)
        self._terminate(victim)

    def _reap(self) -> None:
        for worker in list(self._workers):
            code = worker.proc.poll()
            if code is not None:
                self._workers.remove(worker)
                self._close_pipe(worker)
                self._exited(worker, code)

    def _exited(self, worker: Worker, code: int) -> None:
        why = exit_reason(code)
        if worker.retiring or self._stopping:
            level = logging.INFO if code == 0 else logging.WARNING
            logger.log(level, "worker %d stopped (%s)", worker.pid,
                       "cleanly" if code == 0 else why)
            return
        if self._starting and not worker.ready:
            logger.error("worker %d %s before it was ready; stopping", worker.pid, why)
            self._begin_stop(code if code in STARTUP_FAILURES else ExitCode.ERROR)
            return
        if worker.successor:
            logger.error("reload: new worker %d %s before it was ready; the running workers "
                         "stay", worker.pid, why)
            return
        uptime = time.monotonic() - worker.started
        if uptime >= STABLE_AFTER:
            self._streak = 0
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** self._streak)
        self._streak += 1
        logger.warning("worker %d %s after %.1f s; starting a new one in %.1f s",
                       worker.pid, why, uptime, delay)
        self._restarts.append((time.monotonic() + delay, worker.slot))

    def _reload(self) -> None:
        if self._stopping or self._starting:
            logger.warning("SIGHUP ignored: the workers are %s",
                           "stopping" if self._stopping else "still starting")
            return
        if self._on_reload is not None:
            self._on_reload()
        self._generation += 1
        logger.info("SIGHUP: starting %d new worker(s); each old one stops once a new one is "
                    "ready", self.processes)
        for slot in range(self.processes):
            self._spawn(slot, successor=True)

    def _begin_stop(self, code: int) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._code = code
        self._restarts.clear()
        self._kill_at = time.monotonic() + self.grace + KILL_MARGIN
        for worker in self._workers:
            self._terminate(worker)

    def _terminate(self, worker: Worker) -> None:
        worker.retiring = True
        if worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGTERM)

    def _kill_all(self) -> None:
        for worker in self._workers:
            worker.retiring = True
            if worker.proc.poll() is None:
                worker.proc.kill()
        for worker in list(self._workers):
            try:
                worker.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                logger.error("worker %d did not die after SIGKILL", worker.pid)
        self._reap()

    # -- liveness ------------------------------------------------------------------------------------

    def alive_slots(self, now: float) -> set[int]:
        """Slots with a worker that said it was alive within :data:`ALIVE_WITHIN` seconds."""
        return {w.slot for w in self._workers
                if w.ready and not w.retiring and w.last_alive is not None
                and now - w.last_alive < ALIVE_WITHIN}

    def _touch_liveness_file(self, now: float) -> None:
        if self.liveness_file is None or self._stopping or now - self._touched < ALIVE_INTERVAL:
            return
        if len(self.alive_slots(now)) < self.processes:
            return
        self._touched = now
        try:
            with open(self.liveness_file, "a"):
                pass
            os.utime(self.liveness_file)
        except OSError as exc:
            logger.warning("cannot touch the liveness file: %s", exc)

    def _remove_liveness_file(self) -> None:
        if self.liveness_file is not None:
            try:
                os.unlink(self.liveness_file)
            except FileNotFoundError:
                pass

    def _close_pipe(self, worker: Worker) -> None:
        if worker.ready_fd >= 0:
            self._selector.unregister(worker.ready_fd)
            os.close(worker.ready_fd)
            worker.ready_fd = -1


def _record(signum: int, frame: FrameType | None) -> None:
    """Python-level handler so the signal reaches the wakeup fd; the loop acts on it."""
