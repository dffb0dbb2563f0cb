"""The ``rpc`` command: run servers as daemons, and call, list and ping them from a shell.

This is the only place that reads argv, configures logging and decides exit codes. Every option
also comes from an ``RPC_...`` environment variable, declared one by one: click's
``auto_envvar_prefix`` would name them after the subcommand (``RPC_SERVE_URL``).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import click
import kombu

from .. import __version__
from ..bench.loadgen import bench
from ..client.proxy import BroadcastReply, Proxy
from ..core.errors import (
    ConnectionError,
    MethodNotFound,
    RemoteError,
    RPCTimeout,
    UnknownServer,
    type_name,
)
from ..core.serialization import content_type_of
from ..defaults import DEFAULT_GRACE, SERVER_CONNECT_RETRY
from ..transport.urls import URL_ENV, mask_url, resolve_url
from . import daemon, logconfig
from .exitcodes import ExitCode, for_connection_error, table
from .supervisor import Supervisor
from .worker import WorkerSpec

EPILOG = "\b\nExit codes:\n" + "\n".join(f"  {line}" for line in table().splitlines())

#: Widest signature column of ``rpc methods``; longer signatures put their doc on the next line.
METHODS_COLUMN = 48
#: Seconds ``ping --all/--instance`` collect answers unless --timeout is given.
BROADCAST_WINDOW = 1.0

_Deco = Callable[[Callable[..., Any]], Callable[..., Any]]


def _version() -> str:
    return (f"rpc {__version__} (amqp-rpc), kombu {kombu.__version__}, "
            f"Python {platform.python_version()} on {platform.system()}")


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=__version__, message=_version())
def cli() -> None:
    """Remote procedure calls over AMQP: serve registered servers, call them from a shell.

    The broker URL comes from --url or $RPC_BROKER_URL (default
    amqp://guest:guest@localhost:5672//).
    """


# -- options shared by several commands ------------------------------------------------------------

def _url_option() -> _Deco:
    return click.option("--url", envvar=URL_ENV, show_envvar=True, metavar="URL",
                        help="Broker URL (password never logged).")


def _connect_retry_option(default: float) -> _Deco:
    return click.option(
        "--connect-retry", type=click.FloatRange(min=0), default=default, show_default=True,
        envvar="RPC_CONNECT_RETRY", show_envvar=True, metavar="SECONDS",
        help="Seconds to keep retrying an unreachable broker at startup.",
    )


def liveness_file_option(required: bool = False) -> _Deco:
    return click.option(
        "--liveness-file", type=click.Path(dir_okay=False), required=required,
        envvar="RPC_LIVENESS_FILE", show_envvar=True, metavar="PATH",
        help="File rpc serve touches while every worker is alive (see rpc health).",
    )


def _wait_for_ready_option() -> _Deco:
    return click.option(
        "--wait-for-ready", is_flag=True, envvar="RPC_WAIT_FOR_READY", show_envvar=True,
        help="When the server's queue has no consumer (all stopped or restarting), let the "
             "request wait there up to --timeout instead of exiting 7 at once.",
    )


def _timeout_option(default: float) -> _Deco:
    return click.option(
        "--timeout", type=click.FloatRange(min=0, min_open=True), default=default,
        show_default=True, envvar="RPC_TIMEOUT", show_envvar=True, metavar="SECONDS",
        help="Seconds to wait for the reply.",
    )


# -- rpc serve -------------------------------------------------------------------------------------

@cli.command(epilog=EPILOG, short_help="Serve MODULE:ATTR in worker processes until stopped.")
@click.argument("target", metavar="MODULE:ATTR")
@_url_option()
@click.option("--server-id", envvar="RPC_SERVER_ID", show_envvar=True,
              help="Serve under this id instead of the Server's own.")
@click.option("--processes", type=click.IntRange(min=1), default=1, show_default=True,
              envvar="RPC_PROCESSES", show_envvar=True,
              help="Worker processes, each with its own connection, all on the same queue.")
@click.option("--concurrency", type=click.IntRange(min=1), envvar="RPC_CONCURRENCY",
              show_envvar=True, help="Calls run at once per process [default: the Server's].")
@click.option("--grace", type=click.FloatRange(min=0), default=DEFAULT_GRACE, show_default=True,
              envvar="RPC_GRACE", show_envvar=True, metavar="SECONDS",
              help="On SIGTERM/SIGINT, time for calls in flight to finish.")
@_connect_retry_option(SERVER_CONNECT_RETRY)
@click.option("--app-dir", default=".", show_default=True, envvar="RPC_APP_DIR",
              show_envvar=True, type=click.Path(file_okay=False),
              help="Directory put first on sys.path to import MODULE from.")
@click.option("--log-level", type=click.Choice(logconfig.LEVELS, case_sensitive=False),
              default="INFO", show_default=True, envvar="RPC_LOG_LEVEL", show_envvar=True)
@click.option("--log-format", type=click.Choice(logconfig.FORMATS), default="text",
              show_default=True, envvar="RPC_LOG_FORMAT", show_envvar=True,
              help="json: one object per line, for log collectors.")
@click.option("--pidfile", type=click.Path(dir_okay=False), envvar="RPC_PIDFILE",
              show_envvar=True, help="Write the supervisor's pid here; removed on exit.")
@click.option("--detach", is_flag=True, envvar="RPC_DETACH", show_envvar=True,
              help="Run in the background as a classic daemon; returns once workers are ready.")
@click.option("--logfile", type=click.Path(dir_okay=False), envvar="RPC_LOGFILE",
              show_envvar=True,
              help="Append output here (reopened on SIGHUP) [default with --detach: discarded].")
@click.option("--metrics-port", type=click.IntRange(min=1, max=65535), envvar="RPC_METRICS_PORT",
              show_envvar=True, metavar="PORT",
              help="Serve Prometheus metrics and /healthz, /readyz probes over HTTP; worker i "
                   "of --processes uses PORT+i (metrics need the metrics extra, probes do not).")
@click.option("--queue-type", type=click.Choice(["classic", "quorum"]), envvar="RPC_QUEUE_TYPE",
              show_envvar=True,
              help="Declare the request queue as this type [default: the Server's].")
@liveness_file_option()
@click.option("--reload", "reload_", is_flag=True, envvar="RPC_RELOAD", show_envvar=True,
              help="Development only: restart the workers (as SIGHUP does) whenever a .py file "
                   "under --app-dir changes; code that does not load waits for the next change "
                   "(needs watchfiles). Not with --detach.")
def serve(
    target: str, url: str | None, server_id: str | None, processes: int,
    concurrency: int | None, grace: float, connect_retry: float, app_dir: str, log_level: str,
    log_format: str, pidfile: str | None, detach: bool, logfile: str | None,
    metrics_port: int | None, queue_type: str | None, liveness_file: str | None, reload_: bool,
) -> NoReturn:
    """Serve the Server at MODULE:ATTR (or returned by calling it) until stopped.

    \b
    Signals (to the pid in --pidfile, or the foreground process):
      SIGTERM, SIGINT  stop taking requests, finish calls in flight (up to
                       --grace), exit 0; a second signal stops at once
      SIGHUP           restart the workers with fresh code, one by one,
                       without losing requests; reopen --logfile
    A worker that dies is restarted, with backoff. The broker going away
    does not stop the server: it reconnects.

    \b
    Health: --liveness-file PATH is touched every 2 s while every worker's
    server is connected and its I/O alive; `rpc health --liveness-file PATH`
    exits 1 once it is stale: a healthcheck for this one instance, where
    `rpc ping` succeeds if any server of the id answers.
    """
    module, sep, attr = target.partition(":")
    if not (module and sep and attr):
        _fail(ExitCode.BAD_TARGET, f"{target!r} is not MODULE:ATTR (e.g. examples.calc:server)")
    if reload_ and detach:
        raise click.UsageError("--reload is for development, in the foreground: not with --detach")
    if reload_:
        _require_watchfiles()
    if metrics_port is not None and metrics_port + processes - 1 > 65535:
        raise click.BadParameter(f"ports {metrics_port} to {metrics_port + processes - 1} go past "
                                 "65535", param_hint="--metrics-port")
    pid = daemon.Pidfile(pidfile) if pidfile else None
    if pid is not None:
        try:
            pid.check()
        except daemon.PidfileError as exc:
            _fail(ExitCode.PIDFILE, str(exc))
    spec = WorkerSpec(
        target=target, url=url, server_id=server_id, concurrency=concurrency, grace=grace,
        connect_retry=connect_retry, app_dir=app_dir, log_level=log_level.upper(),
        log_format=log_format, metrics_port=metrics_port, queue_type=queue_type,
    )
    report = daemon.detach(logfile, wait=connect_retry + 60) if detach else None
    if logfile is not None and report is None:
        daemon.redirect_output(logfile)
    logconfig.configure(spec.log_level, log_format)
    logging.getLogger(__name__).info(
        "rpc serve %s: %d process(es), broker %s", target, processes, mask_url(resolve_url(url)))
    code = _supervise(spec, processes, pid, report, logfile, liveness_file, reload_)
    if report is not None:
        report.failed(code)  # does nothing once ready() was sent
    sys.exit(code)


def _supervise(
    spec: WorkerSpec, processes: int, pid: daemon.Pidfile | None, report: daemon.Report | None,
    logfile: str | None, liveness_file: str | None = None, reload_: bool = False,
) -> int:
    log = logging.getLogger(__name__)
    if pid is not None:
        try:
            pid.acquire()
        except daemon.PidfileError as exc:
            log.error("%s", exc)
            return ExitCode.PIDFILE
    try:
        with _watching(spec.app_dir, reload_) as changed:
            while True:
                changed.clear()
                supervisor = Supervisor(
                    spec, processes, grace=spec.grace,
                    on_ready=report.ready if report is not None else None,
                    on_reload=(lambda: daemon.redirect_output(logfile)) if logfile else None,
                    liveness_file=liveness_file,
                )
                code = supervisor.run()
                if not reload_ or code != ExitCode.BAD_TARGET:
                    break
                log.error("--reload: %s does not load; serving starts again once a .py file "
                          "changes (Ctrl-C to quit)", spec.target)
                try:
                    while not changed.wait(0.5):
                        pass
                except KeyboardInterrupt:
                    break
    finally:
        if pid is not None:
            pid.release()
    log.info("rpc serve exits with code %d", code)
    return code


def _require_watchfiles() -> None:
    try:
        import watchfiles  # noqa: F401
    except ImportError:
        _fail(ExitCode.ERROR, "--reload needs watchfiles: pip install 'amqp-rpc[reload]'")


@contextmanager
def _watching(app_dir: str, enabled: bool) -> Iterator[threading.Event]:
    """While the block runs, SIGHUP this process when a .py file under ``app_dir`` changes.

    Yields an event also set on each change (never, when not ``enabled``).
    """
    changed = threading.Event()
    if not enabled:
        yield changed
        return
    import watchfiles

    log = logging.getLogger(__name__)
    stop = threading.Event()
    root = os.path.abspath(app_dir)

    def watch() -> None:
        for changes in watchfiles.watch(root, watch_filter=watchfiles.PythonFilter(),
                                        stop_event=stop, raise_interrupt=False):
            names = sorted({os.path.relpath(path, root) for _, path in changes})
            log.info("--reload: %s changed; restarting the workers", ", ".join(names[:5]))
            changed.set()
            os.kill(os.getpid(), signal.SIGHUP)

    log.info("--reload: watching %s for changes to .py files (development only)", root)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the supervisor takes SIGHUP over
    thread = threading.Thread(target=watch, name="rpc-reload-watch", daemon=True)
    thread.start()
    try:
        yield changed
    finally:
        stop.set()
        thread.join(timeout=5)


# -- rpc health ------------------------------------------------------------------------------------

@cli.command(epilog=EPILOG, short_help="Exit 0 if this instance's liveness file is fresh.")
@liveness_file_option(required=True)
@click.option("--max-age", type=click.FloatRange(min=0, min_open=True), default=15.0,
              show_default=True, envvar="RPC_HEALTH_MAX_AGE", show_envvar=True,
              metavar="SECONDS", help="Oldest touch that still counts as alive.")
def health(liveness_file: str, max_age: float) -> None:
    """Exit 0 if `rpc serve --liveness-file` touched the file within --max-age.

    A healthcheck for the instance in this container or machine, with no
    broker round trip: `rpc serve` touches the file every 2 s while each of
    its workers is connected and its I/O thread alive, and stops when one is
    frozen, crashed, or cut off from the broker. Exits 1 otherwise (Docker's
    "unhealthy").
    """
    try:
        age = time.time() - os.stat(liveness_file).st_mtime
    except FileNotFoundError:
        _fail(ExitCode.ERROR, f"no liveness file {liveness_file}: rpc serve is not serving "
                              "(or was not given --liveness-file)")
    if age > max_age:
        _fail(ExitCode.ERROR, f"liveness file {liveness_file} last touched {age:.0f} s ago "
                              f"(more than {max_age:g} s): a worker is frozen, dead or "
                              "disconnected")
    click.echo(f"alive ({liveness_file} touched {age:.1f} s ago)")


# -- client commands -------------------------------------------------------------------------------

@cli.command(epilog=EPILOG, context_settings={"ignore_unknown_options": True},
             short_help="Call a method; print the result as JSON.")
@click.argument("server_id")
@click.argument("method")
@click.argument("args", nargs=-1)
@click.option("--kw", "kwargs", multiple=True, metavar="KEY=VALUE", envvar="RPC_CALL_KW",
              show_envvar=True, help="A keyword argument (repeatable); VALUE parsed like ARGS.")
@_timeout_option(30.0)
@click.option("--serializer", default="msgpack", show_default=True, envvar="RPC_SERIALIZER",
              show_envvar=True, help="msgpack, json, or another registered serializer.")
@_url_option()
@_connect_retry_option(3.0)
@_wait_for_ready_option()
@click.option("--stream", is_flag=True, envvar="RPC_CALL_STREAM", show_envvar=True,
              help="Call a generator method: print each item as a JSON line as it comes "
                   "(--timeout bounds the wait for each item).")
def call(
    server_id: str, method: str, args: tuple[str, ...], kwargs: tuple[str, ...], timeout: float,
    serializer: str, url: str | None, connect_retry: float, wait_for_ready: bool, stream: bool,
) -> None:
    """Call METHOD on SERVER_ID and print the result as JSON.

    \b
    ARGS are JSON literals; anything else is taken as a string:
      rpc call calc add 2 3                 -> add(2, 3)
      rpc call calc stats.mean '[1, 2, 3]'  -> stats.mean([1, 2, 3])
      rpc call calc add '"2"' x             -> add("2", "x")
      rpc call calc power 2 --kw exp=10     -> power(2, exp=10)
      rpc call calc add -1 -2               -> add(-1, -2)
    A remote error prints its type, message and traceback (if the server
    sends them) on stderr and exits 1.
    """
    try:
        content_type_of(serializer)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--serializer") from None
    positional = [parse_value(a) for a in args]
    keywords = dict(parse_keyword(k) for k in kwargs)
    with _client(url, server_id, connect_retry, timeout, serializer) as proxy:
        view = proxy.wait_for_ready(wait_for_ready)
        if stream:
            with view.stream(timeout=timeout).call(method, *positional, **keywords) as items:
                for item in items:
                    click.echo(to_json(item))
            return
        result = view.set_timeout(timeout).call(method, *positional, **keywords)
    click.echo(to_json(result))


@cli.command(epilog=EPILOG, short_help="List a server's methods, signatures and docs.")
@click.argument("server_id")
@_timeout_option(10.0)
@_url_option()
@_connect_retry_option(3.0)
def methods(server_id: str, timeout: float, url: str | None, connect_retry: float) -> None:
    """List the methods of SERVER_ID with their signatures and first doc line."""
    with _client(url, server_id, connect_retry, timeout) as proxy:
        timed = proxy.set_timeout(timeout)
        try:
            names = timed.call("system.list_methods")
        except MethodNotFound:
            _fail(ExitCode.ERROR, f"{server_id!r} answered, but its introspection is off")
        signatures = [timed.future.call("system.method_signature", n) for n in names]
        docs = [timed.future.call("system.method_help", n) for n in names]
        rows = [(f"{name}{sig.result()}", _first_line(doc.result()))
                for name, sig, doc in zip(names, signatures, docs, strict=True)]
    width = min(max((len(left) for left, _ in rows), default=0), METHODS_COLUMN)
    for left, doc in rows:
        if len(left) > width and doc:
            click.echo(left)
            left = ""
        click.echo(f"{left:<{width}}  {doc}".rstrip())


@cli.command(epilog=EPILOG, short_help="Exit 0 if a server answers (a healthcheck).")
@click.argument("server_id")
@_timeout_option(5.0)
@_url_option()
@_connect_retry_option(3.0)
@click.option("--all", "all_", is_flag=True, envvar="RPC_PING_ALL", show_envvar=True,
              help="List every instance that answers within --timeout (a broadcast).")
@click.option("--instance", metavar="HOST:PID", envvar="RPC_PING_INSTANCE", show_envvar=True,
              help="Succeed only if this instance answers (a broadcast, filtered).")
@_wait_for_ready_option()
def ping(server_id: str, timeout: float, url: str | None, connect_retry: float, all_: bool,
         instance: str | None, wait_for_ready: bool) -> None:
    """Exit 0 if a server of SERVER_ID answers within --timeout (a healthcheck).

    \b
    Plain, one server answers (any of them). With --all, every instance
    answering within --timeout is listed (the command waits that long:
    1 s unless --timeout is given); with --instance HOST:PID, only that
    instance counts. Exit 7 when no server (or not that instance) answers.
    """
    if all_ or instance is not None:
        source = click.get_current_context().get_parameter_source("timeout")
        if source is click.core.ParameterSource.DEFAULT:
            timeout = BROADCAST_WINDOW
        _ping_instances(server_id, timeout, url, connect_retry, instance)
        return
    with _client(url, server_id, connect_retry, timeout) as proxy:
        started = time.perf_counter()
        try:
            info = proxy.set_timeout(timeout).wait_for_ready(wait_for_ready).call("system.ping")
        except MethodNotFound:
            click.echo(f"{server_id} answered (its introspection is off)")
            return
        elapsed = (time.perf_counter() - started) * 1000
    click.echo(f"{info['server_id']} answered from {info['host']} pid {info['pid']} "
               f"(up {info['uptime']:.0f} s) in {elapsed:.1f} ms")


def _ping_instances(server_id: str, timeout: float, url: str | None, connect_retry: float,
                    instance: str | None) -> None:
    if instance is not None and not _is_host_pid(instance):
        raise click.BadParameter(f"{instance!r} is not HOST:PID", param_hint="--instance")
    with _client(url, server_id, connect_retry, timeout) as proxy:
        replies = proxy.broadcast(timeout=timeout).call("system.ping")
    if instance is not None:
        replies = [r for r in replies if r.server.endswith(f"@{instance}")]
    if not replies:
        which = f"instance {instance} of {server_id!r}" if instance else f"server of {server_id!r}"
        _fail(ExitCode.NO_SERVER, f"no {which} answered within {timeout:g} s")
    for reply in sorted(replies, key=lambda r: r.server):
        if reply.error is not None or not isinstance(reply.result, dict):
            click.echo(f"{reply.server} answered (its introspection is off)")
        else:
            click.echo(f"{reply.server} answered (up {reply.result['uptime']:.0f} s)")


def _is_host_pid(text: str) -> bool:
    host, sep, pid = text.rpartition(":")
    return bool(host and sep and pid.isdigit())


# -- rpc status ------------------------------------------------------------------------------------

#: Column headings of ``rpc status``, one column per figure of ``system.stats``.
STATUS_COLUMNS = ("INSTANCE", "NODE", "UPTIME", "CALLS", "ERRORS", "IN FLIGHT", "P50 MS",
                  "P99 MS", "QUEUE")


@cli.command(epilog=EPILOG, short_help="Every instance of a server: load, latency, queue.")
@click.argument("server_id")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, envvar="RPC_STATUS_TIMEOUT", show_envvar=True,
              metavar="SECONDS", help="How long to collect the instances' answers.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True, envvar="RPC_STATUS_FORMAT", show_envvar=True)
@click.option("--watch", is_flag=True, envvar="RPC_STATUS_WATCH", show_envvar=True,
              help="Refresh a live table until Ctrl-C (needs rich).")
@click.option("--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              envvar="RPC_STATUS_INTERVAL", show_envvar=True, metavar="SECONDS",
              help="Seconds between refreshes with --watch.")
@_url_option()
@_connect_retry_option(3.0)
def status(server_id: str, timeout: float, fmt: str, watch: bool, interval: float,
           url: str | None, connect_retry: float) -> None:
    """Ask every instance of SERVER_ID for its figures (system.stats) and print one row each.

    \b
    Columns: the instance (id@host:pid), the broker node it is connected
    to, uptime, calls answered, errors, calls in flight, p50 and p99
    latency in ms, and the request queue's depth. An instance without
    system.stats (introspection off, an older rpc) shows its error instead.
    Exits 7 when no instance answers within --timeout.
    """
    if watch:
        if fmt != "text":
            raise click.UsageError("--watch shows a table: not with --format json")
        _watch_status(server_id, timeout, interval, url, connect_retry)
        return
    with _client(url, server_id, connect_retry, timeout) as proxy:
        replies = _collect_stats(proxy, timeout)
    if not replies:
        _fail(ExitCode.NO_SERVER, f"no instance of {server_id!r} answered within {timeout:g} s")
    if fmt == "json":
        click.echo(json.dumps([_stats_record(r) for r in replies], indent=2, default=str))
        return
    rows = [STATUS_COLUMNS, *(_status_row(r) for r in replies), *_total_rows(replies)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(STATUS_COLUMNS))]
    for row in rows:
        cells = [cell.ljust(w) if i < 2 else cell.rjust(w)
                 for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        click.echo("  ".join(cells).rstrip())


def _collect_stats(proxy: Proxy, timeout: float) -> list[BroadcastReply]:
    replies: list[BroadcastReply] = proxy.broadcast(timeout=timeout).call("system.stats")
    return sorted(replies, key=lambda r: r.server)


def _stats_record(reply: BroadcastReply) -> dict[str, Any]:
    if reply.error is not None:
        return {"instance": reply.server, "error": f"{type_name(type(reply.error))}: "
                                                   f"{reply.error}"}
    result = reply.result if isinstance(reply.result, dict) else {"result": reply.result}
    return {"instance": reply.server, **result}


def _status_row(reply: BroadcastReply) -> tuple[str, ...]:
    if reply.error is not None or not isinstance(reply.result, dict):
        reason = ("no system.stats (introspection off, or an older rpc)"
                  if isinstance(reply.error, MethodNotFound) else str(reply.error))
        return (reply.server, reason, *([""] * (len(STATUS_COLUMNS) - 2)))
    stats = reply.result

    def number(key: str, digits: int = 0) -> str:
        value = stats.get(key)
        if value is None:
            return "-"
        return f"{value:.{digits}f}" if digits else str(value)

    return (reply.server, str(stats.get("node") or "-"), format_uptime(stats.get("uptime")),
            number("calls"), number("errors"), number("in_flight"), number("p50_ms", 2),
            number("p99_ms", 2), number("queue_depth"))


def _total_rows(replies: list[BroadcastReply]) -> list[tuple[str, ...]]:
    """A TOTAL row when several instances gave figures: calls, errors and in flight summed, the
    queue's depth (one queue, shared) as its largest report."""
    figures = [r.result for r in replies if r.error is None and isinstance(r.result, dict)]
    if len(figures) < 2:
        return []

    def total(key: str) -> str:
        return str(sum(f.get(key) or 0 for f in figures))

    depths = [f["queue_depth"] for f in figures if f.get("queue_depth") is not None]
    return [("TOTAL", "", "", total("calls"), total("errors"), total("in_flight"), "", "",
             str(max(depths)) if depths else "-")]


def format_uptime(seconds: float | None) -> str:
    """``42s``, ``3m05s``, ``2h07m``, ``3d04h``: short enough for a table column."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _watch_status(server_id: str, timeout: float, interval: float, url: str | None,
                  connect_retry: float) -> None:
    try:
        from rich.console import Console
        from rich.live import Live
        from rich.table import Table
    except ImportError:
        _fail(ExitCode.ERROR, "--watch needs rich: pip install rich (or 'amqp-rpc[bench]')")

    def table(replies: list[BroadcastReply]) -> Table:
        grid = Table(title=f"rpc status {server_id}  ({time.strftime('%H:%M:%S')}, "
                           f"{len(replies)} instance(s); Ctrl-C to quit)")
        for i, heading in enumerate(STATUS_COLUMNS):
            grid.add_column(heading, justify="left" if i < 2 else "right")
        for reply in replies:
            grid.add_row(*_status_row(reply))
        for row in _total_rows(replies):
            grid.add_row(*row, style="bold")
        return grid

    with _client(url, server_id, connect_retry, timeout) as proxy:
        try:
            with Live(table([]), console=Console(), auto_refresh=False) as live:
                while True:
                    live.update(table(_collect_stats(proxy, timeout)), refresh=True)
                    time.sleep(max(interval - timeout, 0))
        except KeyboardInterrupt:
            pass


# -- rpc shell -------------------------------------------------------------------------------------

@cli.command(epilog=EPILOG, short_help="An interactive Python shell with a connected proxy.")
@click.argument("server_id")
@_timeout_option(60.0)
@click.option("--plain", is_flag=True, envvar="RPC_SHELL_PLAIN", show_envvar=True,
              help="Python's own console even when IPython is installed.")
@_url_option()
@_connect_retry_option(3.0)
def shell(server_id: str, timeout: float, plain: bool, url: str | None,
          connect_retry: float) -> None:
    """An interactive Python shell where `proxy` calls SERVER_ID (like nameko shell).

    \b
    IPython when it is installed and standard input is a terminal, else
    Python's own console. In the namespace: proxy (an rpc.Proxy; try
    proxy.system.list_methods()), rpc, and Proxy to open others.
    """
    import rpc

    masked = mask_url(resolve_url(url))
    with _client(url, server_id, connect_retry, timeout) as proxy:
        proxy.default_timeout = timeout
        banner = (f"rpc shell: `proxy` calls {server_id!r} on {masked} "
                  f"(timeout {timeout:g} s)\n{_methods_line(proxy)}")
        namespace = {"proxy": proxy, "rpc": rpc, "Proxy": Proxy}
        if not plain and sys.stdin.isatty() and _ipython(banner, namespace):
            return
        import code

        code.interact(banner=banner, local=namespace, exitmsg="")


def _methods_line(proxy: Proxy) -> str:
    try:
        names = proxy.set_timeout(3).call("system.list_methods")
    except UnknownServer as exc:
        return f"(no server answers yet: {exc})"
    except Exception:
        return "(its methods are unknown: introspection off, or no reply)"
    shown = [n for n in names if not n.startswith("system.")]
    return "methods: " + ", ".join(shown) + "  (and system.*)"


def _ipython(banner: str, namespace: dict[str, Any]) -> bool:
    try:
        import IPython
    except ImportError:
        return False
    click.echo(banner)
    start_ipython: Any = IPython.start_ipython
    start_ipython(argv=["--no-banner", "--no-confirm-exit"], user_ns=namespace)
    return True


cli.add_command(bench)


@cli.command(short_help="Every calling style on memory://, no broker needed.")
def demo() -> None:
    """A no-broker demo: a server and a proxy in this process, on kombu's memory://."""
    from .demo import run

    logconfig.configure("ERROR")
    run(click.echo)


# -- helpers ---------------------------------------------------------------------------------------

def parse_value(text: str) -> Any:
    """A JSON literal (``2``, ``true``, ``[1, 2]``, ``"2"``), else the text as a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_keyword(item: str) -> tuple[str, Any]:
    """``key=value`` into a keyword argument, the value parsed by :func:`parse_value`."""
    key, sep, value = item.partition("=")
    if not sep or not key.isidentifier():
        raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--kw")
    return key, parse_value(value)


def to_json(value: Any) -> str:
    """Results as JSON: bytes as base64 text, sets as lists, anything else by its repr."""
    def fallback(obj: Any) -> Any:
        if isinstance(obj, (bytes, bytearray)):
            return base64.b64encode(obj).decode()
        if isinstance(obj, (set, frozenset)):
            return list(obj)
        return repr(obj)

    return json.dumps(value, default=fallback, ensure_ascii=False)


def _first_line(doc: str) -> str:
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _fail(code: int, message: str) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


@contextmanager
def _client(
    url: str | None, server_id: str, connect_retry: float, timeout: float,
    serializer: str = "msgpack",
) -> Iterator[Proxy]:
    """A proxy whose failures become a message on stderr and the matching exit code."""
    logconfig.configure("WARNING")
    try:
        with Proxy(url, server_id=server_id, serializer=serializer,
                   connect_retry=connect_retry) as proxy:
            yield proxy
    except ConnectionError as exc:
        _fail(for_connection_error(exc), str(exc))
    except RPCTimeout:
        _fail(ExitCode.TIMEOUT, f"no reply from {server_id!r} within {timeout:g} s")
    except UnknownServer as exc:  # ServerUnavailable too: the queue exists, nobody consumes it
        _fail(ExitCode.NO_SERVER, str(exc) or f"no server is serving {server_id!r}")
    except Exception as exc:
        _report_remote(exc)
        sys.exit(ExitCode.ERROR)


def _report_remote(exc: Exception) -> None:
    """Print a remote error: type and message, then the server's traceback if it sent one."""
    if isinstance(exc, RemoteError):
        kind, message = exc.remote_type, exc.remote_message
    else:
        kind, message = type_name(type(exc)), str(exc)
    click.echo(f"Error: {kind}: {message}" if message else f"Error: {kind}", err=True)
    remote_tb = getattr(exc, "remote_traceback", "")
    if remote_tb:
        click.echo("Remote traceback:", err=True)
        click.echo(remote_tb.rstrip("\n"), err=True)
    else:
        click.echo("(no remote traceback: the server runs with send_tracebacks=False)", err=True)


def main() -> None:
    """Entry point of the ``rpc`` console script and ``python -m rpc``."""
    cli(prog_name="rpc")
