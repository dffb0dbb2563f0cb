"""A server process for the process-fault tests: ``python serverproc.py URL SERVER_ID RUNS_FILE``.

It serves with :meth:`rpc.Server.serve` (so SIGTERM stops it gracefully) and logs to stderr; the
tests wait for its "serving" line. Every handler run appends ``<tag> <pid>`` to RUNS_FILE, so a
test can count how often each request ran and where.

The one test hook, ``crash_after_reply``, lives here and not in the library: it makes the link
publish that call's reply *without* its acknowledgement and then ``os._exit(1)``, which is a
server dying after the reply left and before the broker saw the ack.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from typing import Any

import rpc
import rpc.transport.amqp
import rpc.transport.kombu

_hook = threading.local()


def _install_crash_hook() -> None:
    for cls in (rpc.transport.amqp.AMQPLink, rpc.transport.kombu.KombuLink):
        original = cls.publish

        def publish(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            if not getattr(_hook, "crash", False):
                return _original(self, *args, **kwargs)
            kwargs.pop("ack", None)  # the reply goes out, its ack never does
            _original(self, *args, **kwargs)
            logging.getLogger("serverproc").warning("crashing after the reply, before the ack")
            os._exit(1)

        cls.publish = publish  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("server_id")
    parser.add_argument("runs")
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--prefetch", type=int, default=None)
    parser.add_argument("--delivery-limit", type=int, default=None,
                        help="serve from a quorum queue with this x-delivery-limit")
    options = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    _install_crash_hook()
    pid = os.getpid()

    def record(tag: str) -> bool:
        """Note a run of ``tag``; True if it is the first run anywhere."""
        with open(options.runs, "a+") as runs:
            runs.seek(0)
            first = not any(line.split()[0] == tag for line in runs)
            runs.write(f"{tag} {pid}\n")
        return first

    server = rpc.Server(
        options.url, server_id=options.server_id, heartbeat=options.heartbeat,
        concurrency=options.concurrency, prefetch=options.prefetch, send_tracebacks=True,
        queue_arguments=None if options.delivery_limit is None else {
            "x-queue-type": "quorum", "x-delivery-limit": options.delivery_limit},
    )

    @server.expose
    def work(tag: str, seconds: float) -> list[Any]:
        """Run for ``seconds`` the first time ``tag`` runs, at once on a redelivery."""
        if record(tag):
            time.sleep(seconds)
        return [tag, pid]

    def work_once(tag: str, seconds: float) -> list[Any]:
        """``work`` acknowledged before it runs (at-most-once)."""
        return work(tag, seconds)

    server.register_function(work_once, at_most_once=True)

    @server.expose
    def die(tag: str) -> None:
        """A poison request: it kills every server that runs it."""
        record(tag)
        os._exit(1)

    @server.expose
    def crash_after_reply(tag: str) -> list[Any]:
        if record(tag):
            _hook.crash = True
        return [tag, pid]

    @server.expose
    def whoami() -> int:
        return pid

    server.serve()


if __name__ == "__main__":
    main()
