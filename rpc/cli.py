"""The ``rpc`` command: run servers as daemons, and call, list and ping them from a shell.

This is the only place that reads argv, configures logging and decides exit codes. Every option
also comes from an ``RPC_...`` environment variable, declared one by one: click's
``auto_envvar_prefix`` would name them after the subcommand (``RPC_SERVE_URL``).
"""

from __future__ import annotations

import base64
import json
import logging
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import click
import kombu

from . import __version__, daemon, logconfig
from .config import URL_ENV, mask_url, resolve_url
from .errors import (
    ConnectionError,
    MethodNotFound,
    RemoteError,
    RPCTimeout,
    UnknownServer,
    type_name,
)
from .exitcodes import ExitCode, for_connection_error, table
from .loadgen import bench
from .proxy import Proxy
from .serialization import content_type_of
from .supervisor import Supervisor
from .worker import WorkerSpec

EPILOG = "\b\nExit codes:\n" + "\n".join(f"  {line}" for line in table().splitlines())

#: Widest signature column of ``rpc methods``; longer signatures put their doc on the next line.
METHODS_COLUMN = 48

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
@click.option("--grace", type=click.FloatRange(min=0), default=30.0, show_default=True,
              envvar="RPC_GRACE", show_envvar=True, metavar="SECONDS",
              help="On SIGTERM/SIGINT, time for calls in flight to finish.")
@_connect_retry_option(10.0)
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
def serve(
    target: str, url: str | None, server_id: str | None, processes: int,
    concurrency: int | None, grace: float, connect_retry: float, app_dir: str, log_level: str,
    log_format: str, pidfile: str | None, detach: bool, logfile: str | None,
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
    """
    module, sep, attr = target.partition(":")
    if not (module and sep and attr):
        _fail(ExitCode.BAD_TARGET, f"{target!r} is not MODULE:ATTR (e.g. examples.calc:server)")
    pid = daemon.Pidfile(pidfile) if pidfile else None
    if pid is not None:
        try:
            pid.check()
        except daemon.PidfileError as exc:
            _fail(ExitCode.PIDFILE, str(exc))
    spec = WorkerSpec(
        target=target, url=url, server_id=server_id, concurrency=concurrency, grace=grace,
        connect_retry=connect_retry, app_dir=app_dir, log_level=log_level.upper(),
        log_format=log_format,
    )
    report = daemon.detach(logfile, wait=connect_retry + 60) if detach else None
    if logfile is not None and report is None:
        daemon.redirect_output(logfile)
    logconfig.configure(spec.log_level, log_format)
    logging.getLogger(__name__).info(
        "rpc serve %s: %d process(es), broker %s", target, processes, mask_url(resolve_url(url)))
    code = _supervise(spec, processes, pid, report, logfile)
    if report is not None:
        report.failed(code)  # does nothing once ready() was sent
    sys.exit(code)


def _supervise(
    spec: WorkerSpec, processes: int, pid: daemon.Pidfile | None, report: daemon.Report | None,
    logfile: str | None,
) -> int:
    log = logging.getLogger(__name__)
    if pid is not None:
        try:
            pid.acquire()
        except daemon.PidfileError as exc:
            log.error("%s", exc)
            return ExitCode.PIDFILE
    try:
        supervisor = Supervisor(
            spec, processes, grace=spec.grace,
            on_ready=report.ready if report is not None else None,
            on_reload=(lambda: daemon.redirect_output(logfile)) if logfile else None,
        )
        code = supervisor.run()
    finally:
        if pid is not None:
            pid.release()
    log.info("rpc serve exits with code %d", code)
    return code


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
def call(
    server_id: str, method: str, args: tuple[str, ...], kwargs: tuple[str, ...], timeout: float,
    serializer: str, url: str | None, connect_retry: float,
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
        result = proxy.set_timeout(timeout).call(method, *positional, **keywords)
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
def ping(server_id: str, timeout: float, url: str | None, connect_retry: float) -> None:
    """Exit 0 if a server of SERVER_ID answers within --timeout (a healthcheck)."""
    with _client(url, server_id, connect_retry, timeout) as proxy:
        started = time.perf_counter()
        try:
            info = proxy.set_timeout(timeout).call("system.ping")
        except MethodNotFound:
            click.echo(f"{server_id} answered (its introspection is off)")
            return
        elapsed = (time.perf_counter() - started) * 1000
    click.echo(f"{info['server_id']} answered from {info['host']} pid {info['pid']} "
               f"(up {info['uptime']:.0f} s) in {elapsed:.1f} ms")


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
    except UnknownServer:
        _fail(ExitCode.NO_SERVER, f"no server is serving {server_id!r}")
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
