"""The ``rpc`` command (:mod:`rpc.cli.main`): serving as a daemon with worker processes, calling,
status and load tests. It needs the ``cli`` extra (click), which the library does not."""

from __future__ import annotations


def main() -> None:
    """Entry point of the ``rpc`` script and of ``python -m rpc``."""
    try:
        from .main import main as command
    except ModuleNotFoundError as exc:
        if exc.name != "click":
            raise
        raise SystemExit("the rpc command needs click: pip install 'amqp-rpc[cli]'") from None
    command()
