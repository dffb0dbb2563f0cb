"""Benchmark servers, one process each: ``python -m benchmarks.servers KIND --url URL ...``.

Each prints ``READY`` on standard output once it consumes, and stops cleanly on SIGTERM. KIND is
``rpc`` (this framework; options not given are left to its defaults, ``--async-handlers`` adds
the ``async def`` workloads; it also streams the generator ``count``), ``pika`` (the raw floor:
BlockingConnection, msgpack ``[method, args]``, prefetch 100, ack after the reply), ``nameko``,
``aiopika`` (``aio_pika.patterns.RPC``) or ``wire`` (:mod:`benchmarks.wire`: raw sockets,
rpc's wire format, nothing else).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from . import workloads
from .amqp_url import pika_url
from .matrix import PIKA_PREFETCH

#: How long a server keeps running without being stopped, as a guard against leaks (seconds).
LIFETIME = 3600.0


def _ready() -> None:
    sys.stdout.write("READY\n")
    sys.stdout.flush()


def _stop_event() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _functions(options: argparse.Namespace) -> dict[str, Callable[..., Any]]:
    functions = {
        "add": workloads.add,
        "echo": workloads.echo,
        "burn": workloads.burn,
        "task": workloads.task_for(options.label, options.delay_ms),
    }
    # Only on request: an ``async def`` handler adds ``async_concurrency`` to an rpc server's
    # default prefetch, which would change every other case.
    if options.async_handlers:
        functions["sleep_async"] = workloads.sleep_async
    return functions


def serve_rpc(options: argparse.Namespace) -> None:
    from rpc import Server

    # An option not given is left to the Server's own default.
    given = {"concurrency": options.concurrency, "prefetch": options.prefetch}
    server = Server(options.url, server_id=options.server_id, serializer="pickle",
                    **{key: value for key, value in given.items() if value is not None})
    for name, func in _functions(options).items():
        server.register_function(func, name)
    # A generator: its items stream to ``proxy.stream.count(n)`` (no other framework here has
    # streams). A plain generator runs on a worker thread, so no server default changes.
    server.register_function(workloads.count, "count")
    stop = _stop_event()
    server.start()
    try:
        _ready()
        stop.wait(LIFETIME)
    finally:
        server.stop(grace=5)


def serve_pika(options: argparse.Namespace) -> None:
    import msgpack
    import pika

    functions = _functions(options)
    conn = pika.BlockingConnection(pika.URLParameters(pika_url(options.url)))
    channel = conn.channel()
    channel.queue_declare(options.server_id, durable=True)
    channel.basic_qos(prefetch_count=options.prefetch or PIKA_PREFETCH)

    def on_request(ch: Any, method: Any, props: Any, body: bytes) -> None:
        name, args = msgpack.unpackb(body)
        reply = msgpack.packb(functions[name](*args))
        ch.basic_publish("", props.reply_to, reply,
                         pika.BasicProperties(correlation_id=props.correlation_id))
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(options.server_id, on_request)
    stop = _stop_event()
    _ready()
    try:
        while not stop.is_set():
            conn.process_data_events(time_limit=0.5)
    finally:
        conn.close()


def serve_wire(options: argparse.Namespace) -> None:
    from . import wire

    wire.serve(options.url, options.server_id, _functions(options),
                options.prefetch or PIKA_PREFETCH, _stop_event(), _ready)


def serve_nameko(options: argparse.Namespace) -> None:
    import eventlet

    eventlet.monkey_patch()
    from nameko.rpc import rpc
    from nameko.runners import ServiceRunner

    class Service:
        name = options.server_id

        @rpc
        def add(self, a: int, b: int) -> int:
            return workloads.add(a, b)

        @rpc
        def echo(self, value: Any) -> Any:
            return value

    runner = ServiceRunner(config={"AMQP_URI": options.url})
    runner.add_service(Service)
    runner.start()
    stop = _stop_event()
    _ready()
    try:
        waited = 0.0
        while not stop.is_set() and waited < LIFETIME:
            eventlet.sleep(0.2)
            waited += 0.2
    finally:
        runner.stop()


def serve_aiopika(options: argparse.Namespace) -> None:
    import asyncio

    import aio_pika
    from aio_pika.patterns import RPC

    async def add(*, a: int, b: int) -> int:
        return workloads.add(a, b)

    async def echo(*, value: Any) -> Any:
        return value

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        conn = await aio_pika.connect(options.url)
        try:
            channel = await conn.channel()
            await channel.set_qos(prefetch_count=options.prefetch or PIKA_PREFETCH)
            rpc = await RPC.create(channel)
            await rpc.register(f"{options.server_id}.add", add, auto_delete=True)
            await rpc.register(f"{options.server_id}.echo", echo, auto_delete=True)
            _ready()
            try:
                await asyncio.wait_for(stop.wait(), LIFETIME)
            except TimeoutError:
                pass
        finally:
            await conn.close()

    asyncio.run(main())


SERVERS: dict[str, Callable[[argparse.Namespace], None]] = {
    "rpc": serve_rpc, "pika": serve_pika, "nameko": serve_nameko, "aiopika": serve_aiopika,
    "wire": serve_wire,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.servers")
    parser.add_argument("kind", choices=sorted(SERVERS))
    parser.add_argument("--url", required=True)
    parser.add_argument("--server-id", required=True)
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--prefetch", type=int, default=None)
    parser.add_argument("--label", default="server")
    parser.add_argument("--delay-ms", type=float, default=1.0)
    parser.add_argument("--async-handlers", action="store_true",
                        help="also serve the async def workloads (rpc only)")
    options = parser.parse_args(argv)
    SERVERS[options.kind](options)


if __name__ == "__main__":
    main()
