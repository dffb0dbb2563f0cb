"""Exit codes of the ``rpc`` command, one per cause an operator or a script acts on differently."""

from __future__ import annotations

from enum import IntEnum

from ..core.errors import AccessRefused


class ExitCode(IntEnum):
    """What ``rpc`` exits with; shown in ``rpc --help`` and docs/production.md."""

    OK = 0
    #: The remote method raised (``rpc call``), an unexpected error, or a forced stop.
    ERROR = 1
    #: Bad command line (click's own usage exit).
    USAGE = 2
    #: MODULE:ATTR could not be imported, or is not a Server nor a callable returning one.
    BAD_TARGET = 3
    #: The broker could not be reached within the connect retry window.
    UNREACHABLE = 4
    #: The broker refused the credentials or the virtual host.
    REFUSED = 5
    #: No reply within the timeout (``call``, ``methods``, ``ping``, ``bench``'s first call).
    TIMEOUT = 6
    #: No server serves that server id: none declared it (the broker returned the request), or
    #: its queue has no consumer now (``ServerUnavailable``); also ``ping --instance``, ``status``.
    NO_SERVER = 7
    #: The pidfile names a process that is still running.
    PIDFILE = 8


_MEANINGS = {
    ExitCode.OK: "success; for serve, a clean stop after SIGTERM or SIGINT",
    ExitCode.ERROR: "the remote method raised, an unexpected error, or a second signal",
    ExitCode.USAGE: "bad command line",
    ExitCode.BAD_TARGET: "MODULE:ATTR cannot be imported or is not a Server",
    ExitCode.UNREACHABLE: "broker unreachable",
    ExitCode.REFUSED: "broker refused the credentials or vhost",
    ExitCode.TIMEOUT: "no reply within --timeout",
    ExitCode.NO_SERVER: "no server consumes that SERVER_ID",
    ExitCode.PIDFILE: "the pidfile names a running process",
}

#: Exit codes a worker uses to say it could not start; the supervisor passes them on.
STARTUP_FAILURES = frozenset({ExitCode.BAD_TARGET, ExitCode.UNREACHABLE, ExitCode.REFUSED})


def describe(code: int) -> str:
    """A short reason for ``code``, for log lines about exited processes."""
    try:
        return _MEANINGS[ExitCode(code)]
    except ValueError:
        return "unexpected exit"


def table() -> str:
    """The exit codes as lines of ``code  meaning``, for help texts."""
    return "\n".join(f"{int(code)}  {meaning}" for code, meaning in _MEANINGS.items())


def for_connection_error(exc: BaseException) -> ExitCode:
    """REFUSED when the broker turned the login, vhost or a permission down, else UNREACHABLE."""
    return ExitCode.REFUSED if isinstance(exc, AccessRefused) else ExitCode.UNREACHABLE
