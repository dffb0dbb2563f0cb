"""The load generator behind ``rpc bench``: keep calls in flight against a live server, time them.

Three ways to keep ``concurrency`` calls in flight, as users' own code would:

* ``futures``: one thread issues ``proxy.future`` calls and waits on the oldest when the window
  is full (a call that finishes before an older one is timed when its turn comes);
* ``threads``: ``concurrency`` threads make synchronous calls through one shared proxy;
* ``callbacks``: one thread issues ``proxy.callback`` calls, each callback frees a slot.

Without ``rate`` the loop is closed (a new call as soon as a slot frees). With ``rate`` it is
open: call ``n`` is due at ``start + n / rate`` and its latency counts from then, so a server
that falls behind shows queueing delay instead of slowing the arrivals. Every run is bounded by
count and by wall-clock time. ``processes`` > 1 splits the load over client processes (spawned,
so each has its own GIL) and merges their histograms losslessly.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import platform
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import click

from ..cli.exitcodes import ExitCode, for_connection_error
from ..client.proxy import Proxy
from ..core.errors import ConnectionError, RPCTimeout, UnknownServer, type_name
from ..transport.urls import mask_url, resolve_url
from .stats import Tally, build_report, error_name, scheduled_time, split_evenly

MODES = ("futures", "threads", "callbacks")
#: Wall-clock cap of a run given only a call count, in seconds.
MAX_SECONDS = 3600.0
#: Seconds past a call's timeout before a reply that never came stops the run waiting.
GRACE = 5.0
#: Calls made when neither a count nor a duration is given.
DEFAULT_TOTAL = 1000

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class LoadSpec:
    """What to call and how hard: the parameters of one load run."""

    server_id: str
    method: str
    args: tuple[Any, ...] = ()
    url: str | None = None
    mode: str = "futures"
    concurrency: int = 1
    total: int | None = None
    duration: float | None = None
    rate: float | None = None
    warmup: int = 0
    timeout: float = 10.0
    serializer: str = "msgpack"
    payload_size: int | None = None
    processes: int = 1
    count_results: bool = False

    def check(self) -> LoadSpec:
        """This spec with defaults filled in; ValueError for impossible combinations."""
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        for name in ("concurrency", "processes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.processes > self.concurrency:
            raise ValueError("concurrency must be at least the number of processes")
        for name in ("total", "warmup", "payload_size"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative")
        for name in ("duration", "rate", "timeout"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive")
        if self.total is None and self.duration is None:
            return replace(self, total=DEFAULT_TOTAL)
        return self

    def params(self) -> dict[str, Any]:
        """The parameters as a report lists them (the URL's password masked)."""
        params = asdict(self)
        params["url"] = mask_url(resolve_url(self.url))
        params["args"] = [_describe(a) for a in self.args]
        return params


def _describe(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool, type(None))) else repr(value)[:80]


def call_args(spec: LoadSpec) -> tuple[Any, ...]:
    """The arguments of every call: the given ones, then the payload if one is asked for.

    The payload is bytes, except under JSON, which has no bytes type: an ASCII str there.
    """
    if spec.payload_size is None:
        return spec.args
    payload: bytes | str = b"x" * spec.payload_size
    if spec.serializer in ("json", "application/json"):
        payload = "x" * spec.payload_size
    return (*spec.args, payload)


def parse_arg(text: str) -> Any:
    """A command-line argument: a JSON literal when it is one (``1``, ``[1, 2]``), else a str."""
    try:
        return json.loads(text)
    except ValueError:
        return text


class Plan:
    """Hands out call slots: up to ``total`` calls, none due after ``stop``, spaced at ``rate``.

    Process ``offset`` of ``stride`` takes every stride-th slot of the shared schedule.
    """

    def __init__(
        self, total: int | None, stop: float, rate: float | None, start: float,
        offset: int = 0, stride: int = 1,
    ) -> None:
        self.total, self.stop, self.rate, self.start = total, stop, rate, start
        self.offset, self.stride = offset, stride
        self._counter = itertools.count()

    def take(self) -> float | None:
        """The next call's due time (0.0: now, closed loop), or None when the run is over."""
        n = next(self._counter)  # atomic under the GIL: threads share one plan
        if self.total is not None and n >= self.total:
            return None
        if self.rate is None:
            return 0.0 if time.perf_counter() < self.stop else None
        due = scheduled_time(self.start, self.rate, n * self.stride + self.offset)
        return due if due < self.stop else None


def _sleep_until(due: float) -> None:
    delay = due - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


def _drive_threads(proxy: Proxy, spec: LoadSpec, args: tuple[Any, ...], plan: Plan,
                   tally: Tally) -> None:
    def worker() -> None:
        while (due := plan.take()) is not None:
            if due:
                _sleep_until(due)
            sent = due or time.perf_counter()
            try:
                result = proxy.call(spec.method, *args)
            except Exception as exc:
                tally.record_error(error_name(exc), sent, time.perf_counter())
            else:
                tally.record_ok(sent, time.perf_counter(), result)

    workers = [threading.Thread(target=worker, name=f"rpc-bench-{i}", daemon=True)
               for i in range(spec.concurrency)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(max(plan.stop - time.perf_counter(), 0) + spec.timeout + GRACE)


def _settle(fut: Future[Any], sent: float, tally: Tally, wait: float) -> None:
    try:
        exc = fut.exception(timeout=wait)
    except TimeoutError:
        tally.record_error("NoReply", sent, time.perf_counter())
        return
    if exc is None:
        tally.record_ok(sent, time.perf_counter(), fut.result())
    else:
        tally.record_error(error_name(exc), sent, time.perf_counter())


def _drive_futures(proxy: Proxy, spec: LoadSpec, args: tuple[Any, ...], plan: Plan,
                   tally: Tally) -> None:
    window: deque[tuple[Future[Any], float]] = deque()
    wait = spec.timeout + GRACE
    issue = proxy.future.call

    def harvest() -> None:
        while window and window[0][0].done():
            _settle(*window.popleft(), tally, 0)

    while True:
        while len(window) >= spec.concurrency:
            _settle(*window.popleft(), tally, wait)
        due = plan.take()
        if due is None:
            break
        while due and (delay := due - time.perf_counter()) > 0:
            if window:
                try:
                    window[0][0].exception(timeout=delay)
                except TimeoutError:
                    pass
                harvest()
            else:
                time.sleep(delay)
        sent = due or time.perf_counter()
        try:
            window.append((issue(spec.method, *args), sent))
        except Exception as exc:
            tally.record_error(error_name(exc), sent, time.perf_counter())
        harvest()
    while window:
        _settle(*window.popleft(), tally, wait)


def _drive_callbacks(proxy: Proxy, spec: LoadSpec, args: tuple[Any, ...], plan: Plan,
                     tally: Tally) -> None:
    slots = threading.Semaphore(spec.concurrency)
    wait = spec.timeout + GRACE

    def succeeded(sent: float, result: Any) -> None:
        tally.record_ok(sent, time.perf_counter(), result)
        slots.release()

    def failed(sent: float, exc: BaseException) -> None:
        tally.record_error(error_name(exc), sent, time.perf_counter())
        slots.release()

    while (due := plan.take()) is not None:
        if not slots.acquire(timeout=wait):
            break  # replies stopped coming even past their timeouts; the drain below reports it
        if due:
            _sleep_until(due)
        sent = due or time.perf_counter()
        try:
            proxy.callback(partial(succeeded, sent), partial(failed, sent)).call(spec.method, *args)
        except Exception as exc:
            failed(sent, exc)
    deadline = time.monotonic() + wait
    for _ in range(spec.concurrency):
        if not slots.acquire(timeout=max(deadline - time.monotonic(), 0)):
            break


_DRIVERS = {"futures": _drive_futures, "threads": _drive_threads, "callbacks": _drive_callbacks}


def _warm_up(proxy: Proxy, spec: LoadSpec, args: tuple[Any, ...]) -> None:
    if spec.warmup:
        plan = Plan(spec.warmup, time.perf_counter() + MAX_SECONDS, None, time.perf_counter())
        _DRIVERS[spec.mode](proxy, spec, args, plan, Tally(time.perf_counter()))


def _measure(proxy: Proxy, spec: LoadSpec, args: tuple[Any, ...], tally: Tally,
             offset: int = 0, stride: int = 1) -> float:
    """Run the measured phase from ``tally.start``; returns this process's CPU seconds in it."""
    limit = spec.duration if spec.duration is not None else MAX_SECONDS
    plan = Plan(spec.total, tally.start + limit, spec.rate, tally.start, offset, stride)
    _sleep_until(tally.start)
    cpu = time.process_time()
    _DRIVERS[spec.mode](proxy, spec, args, plan, tally)
    return time.process_time() - cpu


def _open_proxy(spec: LoadSpec) -> Proxy:
    return Proxy(spec.url, server_id=spec.server_id, serializer=spec.serializer,
                 timeout=spec.timeout)


@contextmanager
def _polling(progress: Progress | None, read: Callable[[], tuple[int, int]]) -> Iterator[None]:
    """Call ``progress(completed, errors)`` five times a second during the block, and at its end."""
    if progress is None:
        yield
        return
    done = threading.Event()

    def poll() -> None:
        while not done.wait(0.2):
            progress(*read())

    thread = threading.Thread(target=poll, name="rpc-bench-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        progress(*read())


def run_load(
    spec: LoadSpec, progress: Progress | None = None, ready: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run the load ``spec`` describes and return its report (see :mod:`rpc.loadgen_stats`).

    ``progress(completed, errors)`` is called a few times a second; ``ready()`` once after the
    warm-up, just before the measured phase (an orchestrator snapshots server CPU there).

    Raises:
        ValueError: the spec is impossible (see :meth:`LoadSpec.check`).
        rpc.ConnectionError: the broker is unreachable.
    """
    spec = spec.check()
    if spec.processes == 1:
        tally, cpu = _run_here(spec, progress, ready)
    else:
        tally, cpu = _run_processes(spec, progress, ready)
    return build_report(spec.params(), tally, client_cpu_s=cpu, environment=environment(spec))


def _run_here(
    spec: LoadSpec, progress: Progress | None, ready: Callable[[], None] | None,
) -> tuple[Tally, float]:
    proxy = _open_proxy(spec)
    try:
        args = call_args(spec)
        _warm_up(proxy, spec, args)
        if ready is not None:
            ready()
        tally = Tally(time.perf_counter(), count_results=spec.count_results)
        with _polling(progress, lambda: (tally.completed, tally.error_count)):
            cpu = _measure(proxy, spec, args, tally)
        return tally, cpu
    finally:
        proxy.close()


def _child_spec(spec: LoadSpec, index: int) -> LoadSpec:
    parts = spec.processes
    return replace(
        spec,
        processes=1,
        concurrency=split_evenly(spec.concurrency, parts)[index],
        total=None if spec.total is None else split_evenly(spec.total, parts)[index],
        warmup=split_evenly(spec.warmup, parts)[index],
    )


def _child(spec: LoadSpec, index: int, parts: int, outbox: Any, go: Any, start_wall: Any,
           counters: Any) -> None:
    """One client process of a multi-process run; reports through ``outbox``."""
    try:
        proxy = _open_proxy(spec)
    except Exception as exc:
        outbox.put(("failed", index, f"{type(exc).__name__}: {exc}"))
        return
    try:
        args = call_args(spec)
        _warm_up(proxy, spec, args)
        outbox.put(("ready", index, None))
        if not go.wait(timeout=120):
            return
        start = time.perf_counter() + (start_wall.value - time.time())
        tally = Tally(start, count_results=spec.count_results)

        def publish(completed: int, errors: int) -> None:
            counters[2 * index], counters[2 * index + 1] = completed, errors

        with _polling(publish, lambda: (tally.completed, tally.error_count)):
            cpu = _measure(proxy, spec, args, tally, index, parts)
        outbox.put(("done", index, {"tally": tally.snapshot(), "cpu": cpu}))
    except Exception as exc:
        outbox.put(("failed", index, f"{type(exc).__name__}: {exc}"))
    finally:
        proxy.close()


def _run_processes(
    spec: LoadSpec, progress: Progress | None, ready: Callable[[], None] | None,
) -> tuple[Tally, float]:
    ctx = multiprocessing.get_context("spawn")
    parts = spec.processes
    outbox = ctx.Queue()
    go = ctx.Event()
    start_wall = ctx.Value("d", 0.0)
    counters = ctx.Array("q", 2 * parts, lock=False)
    procs = [
        ctx.Process(target=_child, args=(_child_spec(spec, i), i, parts, outbox, go, start_wall,
                                         counters), name=f"rpc-bench-client-{i}", daemon=True)
        for i in range(parts)
    ]
    limit = spec.duration if spec.duration is not None else MAX_SECONDS
    try:
        for proc in procs:
            proc.start()
        _collect(outbox, parts, "ready", time.monotonic() + 60 + spec.warmup * spec.timeout / parts)
        if ready is not None:
            ready()
        start_wall.value = time.time() + 0.05
        go.set()

        def read() -> tuple[int, int]:
            return sum(counters[0::2]), sum(counters[1::2])

        with _polling(progress, read):
            results = _collect(outbox, parts, "done",
                               time.monotonic() + limit + spec.timeout + GRACE + 30)
        tally = Tally(0.0, count_results=spec.count_results)
        for result in results:
            tally.merge(result["tally"])
        return tally, sum(result["cpu"] for result in results)
    finally:
        go.set()
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        outbox.close()


def _collect(outbox: Any, parts: int, kind: str, deadline: float) -> list[Any]:
    """Wait for a ``kind`` message from each of ``parts`` processes; RuntimeError on failure."""
    got: dict[int, Any] = {}
    while len(got) < parts:
        try:
            what, index, payload = outbox.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            raise RuntimeError(f"client processes did not report {kind!r} in time") from None
        if what == "failed":
            raise RuntimeError(f"client process {index} failed: {payload}")
        if what == kind:
            got[index] = payload
    return [got[i] for i in range(parts)]


def environment(spec: LoadSpec) -> dict[str, str]:
    """Versions a reader needs to compare runs: Python, rpc, kombu, the broker."""
    import kombu

    from .. import __version__

    env = {"python": platform.python_version(), "rpc": __version__, "kombu": kombu.__version__}
    version = broker_version(spec.url)
    if version:
        env["broker"] = version
    return env


def broker_version(url: str | None) -> str | None:
    """The broker's product and version from its connection properties, if it tells them."""
    from ..transport.connect import open_connection

    try:
        conn = open_connection(resolve_url(url), retry_for=0, heartbeat=0, name="rpc-bench")
    except Exception:
        return None
    try:
        props = getattr(conn.connection, "server_properties", None) or {}
        product, version = props.get("product"), props.get("version")
        return f"{product} {version}" if product and version else None
    finally:
        conn.release()


class PreflightError(Exception):
    """The call before the load failed: no load is worth running. ``code`` is the exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def preflight(spec: LoadSpec) -> Any:
    """Make one call as the load would, and return its result.

    Raises:
        PreflightError: no broker (exit 4 or 5), no server (7), no reply in time (6), or the
            method failed (1); its message says which.
    """
    args = call_args(spec)
    shown = f"{spec.method}({', '.join(repr(_describe(a)) for a in args)})"
    try:
        with _open_proxy(spec) as proxy:
            return proxy.call(spec.method, *args)
    except ConnectionError as exc:
        raise PreflightError(for_connection_error(exc), str(exc)) from None
    except UnknownServer as exc:
        raise PreflightError(ExitCode.NO_SERVER, str(exc)) from None
    except RPCTimeout:
        raise PreflightError(ExitCode.TIMEOUT, f"the first call, {shown}, got no reply from "
                                               f"{spec.server_id!r} within {spec.timeout:g} s") from None
    except Exception as exc:
        raise PreflightError(ExitCode.ERROR, f"the first call, {shown}, failed: "
                                             f"{type_name(type(exc))}: {exc}") from None


def _require_extra() -> None:
    try:
        import hdrh  # noqa: F401
        import rich  # noqa: F401
    except ImportError as exc:
        raise click.ClickException(
            f"rpc bench needs the bench extra ({exc.name} is missing): "
            "pip install 'amqp-rpc[bench]'"
        ) from None


#: Steps of the progress bar: it shows the fraction of the run done, by calls or by time.
PROGRESS_STEPS = 1000


def progress_fraction(spec: LoadSpec, completed: int, elapsed: float) -> float:
    """How much of the run is done: calls out of ``--total``, or time out of ``--duration``.

    With both, whichever is further (the run ends at the first limit reached).
    """
    fractions = [0.0]
    if spec.total:
        fractions.append(completed / spec.total)
    if spec.duration:
        fractions.append(elapsed / spec.duration)
    return min(max(fractions), 1.0)


class _ProgressBar:
    """A determinate rich progress bar on stderr (so stdout stays clean for the report)."""

    def __init__(self, spec: LoadSpec) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.spec = spec
        columns = [TextColumn("[bold]{task.description}"), BarColumn(),
                   TextColumn("{task.percentage:>3.0f}%  {task.fields[calls]:>8} calls"),
                   TextColumn("{task.fields[rate]:>8.0f} calls/s  errors {task.fields[errors]}"),
                   TimeElapsedColumn()]
        self._bar = Progress(*columns, console=Console(stderr=True), transient=False)
        self._task = self._bar.add_task(f"{spec.server_id}.{spec.method}", total=PROGRESS_STEPS,
                                        rate=0.0, errors=0, calls=0)
        self._started: float | None = None

    def start_measuring(self) -> None:
        self._started = time.monotonic()

    def update(self, completed: int, errors: int) -> None:
        if self._started is None:
            self._started = time.monotonic()
        elapsed = max(time.monotonic() - self._started, 1e-6)
        done = progress_fraction(self.spec, completed, elapsed) * PROGRESS_STEPS
        self._bar.update(self._task, completed=done, errors=errors, calls=completed,
                         rate=completed / elapsed)

    def __enter__(self) -> _ProgressBar:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()


@click.command("bench", short_help="Load-test a method: throughput, latency percentiles.")
@click.argument("server_id")
@click.argument("method")
@click.argument("args", nargs=-1)
@click.option("--url", default=None, help="Broker URL (default: $RPC_BROKER_URL, then localhost).",
              envvar="RPC_BROKER_URL", show_envvar=True)
@click.option("--mode", type=click.Choice(MODES), default="futures", show_default=True,
              help="How calls are kept in flight.",
              envvar="RPC_BENCH_MODE", show_envvar=True)
@click.option("-c", "--concurrency", type=click.IntRange(min=1), default=1, show_default=True,
              help="Calls in flight at once (in all processes together).",
              envvar="RPC_BENCH_CONCURRENCY", show_envvar=True)
@click.option("-n", "--total", type=click.IntRange(min=1), default=None,
              help=f"Calls to make (default {DEFAULT_TOTAL} when no --duration).",
              envvar="RPC_BENCH_TOTAL", show_envvar=True)
@click.option("-d", "--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds to keep calling; with --total, whichever ends first.",
              envvar="RPC_BENCH_DURATION", show_envvar=True)
@click.option("-r", "--rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Open loop: start this many calls per second, latency from the due time.",
              envvar="RPC_BENCH_RATE", show_envvar=True)
@click.option("--warmup", type=click.IntRange(min=0), default=100, show_default=True,
              help="Calls made first and left out of the figures.",
              envvar="RPC_BENCH_WARMUP", show_envvar=True)
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, help="Seconds per call before it counts as a timeout.",
              envvar="RPC_BENCH_TIMEOUT", show_envvar=True)
@click.option("--serializer", default="msgpack", show_default=True,
              help="msgpack, json, pickle or a registered serializer.",
              envvar="RPC_BENCH_SERIALIZER", show_envvar=True)
@click.option("--payload-size", type=click.IntRange(min=0), default=None,
              help="Append a bytes (str under JSON) argument of this many bytes.",
              envvar="RPC_BENCH_PAYLOAD_SIZE", show_envvar=True)
@click.option("-p", "--processes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Client processes sharing the load.",
              envvar="RPC_BENCH_PROCESSES", show_envvar=True)
@click.option("--count-results", is_flag=True,
              help="Count calls by returned value (to see how servers share the load).",
              envvar="RPC_BENCH_COUNT_RESULTS", show_envvar=True)
@click.option("--format", "fmt", type=click.Choice(["text", "json", "csv"]), default="text",
              show_default=True, help="Report format.",
              envvar="RPC_BENCH_FORMAT", show_envvar=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the report to this file instead of standard output.",
              envvar="RPC_BENCH_OUTPUT", show_envvar=True)
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a PNG: latency distribution (log axis) and throughput over time.",
              envvar="RPC_BENCH_PLOT", show_envvar=True)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.",
              envvar="RPC_BENCH_QUIET", show_envvar=True)
def bench(server_id: str, method: str, args: tuple[str, ...], url: str | None, mode: str,
          concurrency: int, total: int | None, duration: float | None, rate: float | None,
          warmup: int, timeout: float, serializer: str, payload_size: int | None, processes: int,
          count_results: bool, fmt: str, output: Path | None, plot: Path | None,
          quiet: bool) -> None:
    """Load-test METHOD of the server SERVER_ID with ARGS (JSON literals, else strings).

    Example: rpc bench calc add 1 2 --concurrency 100 --duration 10

    One call is made first: if it fails, no load runs and the command exits
    with 7 (no server), 6 (no reply), 4 or 5 (broker) or 1 (the method
    raised), the reason on stderr.
    """
    from .format import plot as write_plot
    from .format import render

    _require_extra()
    try:
        spec = LoadSpec(
            server_id=server_id, method=method, args=tuple(parse_arg(a) for a in args), url=url,
            mode=mode, concurrency=concurrency, total=total, duration=duration, rate=rate,
            warmup=warmup, timeout=timeout, serializer=serializer, payload_size=payload_size,
            processes=processes, count_results=count_results,
        ).check()
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    try:
        preflight(spec)
    except PreflightError as exc:
        click.echo(f"Error: {exc} (no load was run)", err=True)
        sys.exit(exc.code)
    try:
        if quiet:
            report = run_load(spec)
        else:
            with _ProgressBar(spec) as bar:
                report = run_load(spec, bar.update, ready=bar.start_measuring)
    except (RuntimeError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    text = render(report, fmt)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text)
        click.echo(f"report written to {output}", err=True)
    if plot is not None:
        click.echo(f"plot written to {write_plot(report, plot)}", err=True)
    if report["ok"] == 0:
        raise click.ClickException("no call succeeded")


__all__ = ["MODES", "LoadSpec", "Plan", "PreflightError", "bench", "call_args", "parse_arg",
           "preflight", "progress_fraction", "run_load"]
