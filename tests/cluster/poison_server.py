"""A server process for the dead-letter test: ``python poison_server.py URLS SERVER_ID LIMIT``.

It serves ``SERVER_ID`` from a quorum queue with ``delivery_limit=LIMIT`` and prints ``serving``
on stdout once it consumes. ``poison()`` kills the process before the request is acknowledged,
so the broker redelivers it to the next server; ``echo(x)`` answers. It exits by itself after
60 s, as a guard against leaks.
"""

from __future__ import annotations

import os
import sys
import time

import rpc


def main() -> None:
    urls, server_id, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    server = rpc.Server(urls, server_id=server_id, queue_type="quorum", delivery_limit=limit,
                        heartbeat=2)

    @server.expose
    def poison() -> None:
        os._exit(3)

    @server.expose
    def echo(x: object) -> object:
        return x

    server.start()
    print("serving", flush=True)
    try:
        time.sleep(60)
    finally:
        server.stop(grace=1)


if __name__ == "__main__":
    main()
