"""Benchmark clients, one process each: ``python -m benchmarks.clients '<case JSON>'``.

A client warms up, prints ``WARM``, waits for a ``GO`` line on standard input (the driver snapshots
server and broker CPU in between), runs the measured phase and prints ``RESULT <report JSON>``: a
report in the layout of ``rpc bench --format json``, whatever the client's framework. It exits at
the next line on standard input, once the driver has taken its CPU time.

Kinds: ``rpc`` (this framework, through :func:`rpc.bench.loadgen.run_load`); ``pika`` (the raw floor:
direct reply-to, one call at a time, or a callback-driven window of ``concurrency`` calls);
``nameko`` (standalone ``ClusterRpcProxy``: calls, or a ``call_async`` window); ``rpc-async``
(this framework's ``AsyncProxy``) and ``aiopika`` (``aio_pika.patterns.RPC``), both driven alike
on one event loop: awaits one after another, or ``concurrency`` tasks in flight.

``wire`` (:mod:`benchmarks.wire`) calls one at a time on raw sockets with rpc's wire format.

Streams (``rpc`` and ``rpc-async``, mode ``stream``): one ``proxy.stream.count(total)`` whose
items count as the calls of the report (items/s, the wait for each item as its latency), left
(closed) when the phase's seconds run out. Mode ``slow-stream`` (``rpc``): one long stream to a
consumer that sleeps, sampling the resident memory of this process and of the servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import itertools
import json
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any

from rpc.bench.stats import Tally, build_report, error_name

from .amqp_url import pika_url

#: Seconds a call may take before it counts as a timeout.
CALL_TIMEOUT = 10.0
#: Wall-clock cap of an asyncio client's warm-up (the driver waits 60 s for WARM).
WARMUP_SECONDS = 30.0


def _handshake() -> None:
    sys.stdout.write("WARM\n")
    sys.stdout.flush()
    if sys.stdin.readline().strip() != "GO":
        raise SystemExit("the driver did not say GO")


def _args(case: dict[str, Any]) -> list[Any]:
    args = list(case.get("args", []))
    if case.get("payload_size") is not None:
        args.append(b"x" * case["payload_size"])
    return args


class _Clock:
    """The bounds of a measured phase: a call count and a wall-clock limit."""

    def __init__(self, case: dict[str, Any]) -> None:
        self.total = int(case["total"])
        self.start = time.perf_counter()
        self.stop = self.start + float(case["seconds"])
        self.issued = 0

    def more(self) -> bool:
        if self.issued >= self.total or time.perf_counter() >= self.stop:
            return False
        self.issued += 1
        return True


def _measured(case: dict[str, Any], run: Callable[[_Clock, Tally], None]) -> dict[str, Any]:
    _handshake()
    clock = _Clock(case)
    tally = Tally(clock.start)
    cpu = time.process_time()
    run(clock, tally)
    cpu = time.process_time() - cpu
    return build_report(dict(case), tally, client_cpu_s=cpu)


#: Mebibytes, in bytes.
MIB = 1 << 20


def stream_phase(items: Iterator[Any], stop: float, tally: Tally) -> int:
    """Iterate ``items`` until the stream ends or ``stop`` (``perf_counter``) passes, recording
    each item with the wait since the previous one (the first: since the phase began) as its
    latency; then close it, which stops the generator on the server if it has items left.
    An error ends the phase, counted once. Returns the items received."""
    last = time.perf_counter()
    received = 0
    try:
        for _ in items:
            now = time.perf_counter()
            tally.record_ok(last, now)
            last = now
            received += 1
            if now >= stop:
                break
    except Exception as exc:
        tally.record_error(error_name(exc), last, time.perf_counter())
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()
    return received


async def stream_phase_async(items: AsyncIterator[Any], stop: float, tally: Tally) -> int:
    """:func:`stream_phase` for ``async for``: closed with ``aclose()`` when left."""
    last = time.perf_counter()
    received = 0
    try:
        async with contextlib.aclosing(items):  # type: ignore[type-var]
            async for _ in items:
                now = time.perf_counter()
                tally.record_ok(last, now)
                last = now
                received += 1
                if now >= stop:
                    break
    except Exception as exc:
        tally.record_error(error_name(exc), last, time.perf_counter())
    return received


def slow_stream_phase(items: Iterator[Any], start: float, stop: float, tally: Tally,
                      pace: dict[str, Any],
                      sample: Callable[[], tuple[float, float]]) -> list[list[float]]:
    """Consume ``items`` slowly until the stream ends or ``stop`` passes: ``pace["sleep_s"]``
    after every ``pace["batch"]`` items; from ``pace["settle_s"]`` after ``start`` on, every
    ``pace["sample_every_s"]``, ``sample()`` (client MiB, server MiB) is taken. Closes the
    stream when it leaves. Returns the samples, ``[seconds since start, client, server]``."""
    batch, sleep_s = max(int(pace["batch"]), 1), float(pace["sleep_s"])
    every = float(pace["sample_every_s"])
    due = start + float(pace["settle_s"])
    samples: list[list[float]] = []
    last = time.perf_counter()
    received = 0
    try:
        for _ in items:
            now = time.perf_counter()
            tally.record_ok(last, now)
            received += 1
            if received % batch == 0:
                time.sleep(sleep_s)
                now = time.perf_counter()
                if now >= due:
                    samples.append([round(now - start, 3), *sample()])
                    while due <= now:
                        due += every
            last = now
            if now >= stop:
                break
    except Exception as exc:
        tally.record_error(error_name(exc), last, time.perf_counter())
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()
    return samples


def rss_growth(samples: list[list[float]]) -> dict[str, float | None]:
    """Growth in MiB of the client's and the server's RSS, last sample minus first, and the
    peak above the first; None for each without two samples."""
    out: dict[str, float | None] = {}
    for column, side in ((1, "client"), (2, "server")):
        values = [row[column] for row in samples]
        ok = len(values) >= 2
        out[f"{side}_rss_growth_mib"] = round(values[-1] - values[0], 3) if ok else None
        out[f"{side}_rss_peak_growth_mib"] = round(max(values) - values[0], 3) if ok else None
    return out


def _rss_sampler(server_pids: list[int]) -> Callable[[], tuple[float, float]]:
    """``sample()``: this process's RSS and the servers' summed, in MiB."""
    import psutil

    me = psutil.Process()
    servers = [psutil.Process(pid) for pid in server_pids]

    def sample() -> tuple[float, float]:
        server = 0
        for proc in servers:
            with contextlib.suppress(psutil.Error):
                server += proc.memory_info().rss
        return round(me.memory_info().rss / MIB, 3), round(server / MIB, 3)

    return sample


def run_rpc_stream(case: dict[str, Any]) -> dict[str, Any]:
    """Modes ``stream`` and ``slow-stream`` of the ``rpc`` client (one :class:`rpc.Proxy`)."""
    from rpc import Proxy

    with Proxy(case["url"], server_id=case["server_id"], timeout=CALL_TIMEOUT,
               serializer=case["serializer"]) as proxy:
        streams = proxy.stream(timeout=CALL_TIMEOUT)  # the longest wait for one item
        method = case["method"]
        length = case["args"][0] if case.get("args") else case["total"]
        warm = Tally()
        stream_phase(getattr(streams, method)(case["warmup"]),
                     time.perf_counter() + WARMUP_SECONDS, warm)
        if warm.error_count:
            raise SystemExit(f"warm-up stream failed: {warm.errors}")
        _handshake()
        clock = _Clock(case)
        tally = Tally(clock.start)
        cpu = time.process_time()
        items = getattr(streams, method)(length)
        extra: dict[str, Any] = {}
        if case["mode"] == "stream":
            stream_phase(items, clock.stop, tally)
        else:
            sample = _rss_sampler(case.get("server_pids", []))
            samples = slow_stream_phase(items, clock.start, clock.stop, tally, case["options"],
                                        sample)
            # A plain call needs the server's only worker, which the stream held: its reply
            # shows the generator stopped.
            closed = time.perf_counter()
            try:
                proxy.add(1, 2)
                extra["freed_s"] = round(time.perf_counter() - closed, 3)
            except Exception as exc:
                tally.record_error(f"after close: {error_name(exc)}", closed, time.perf_counter())
                extra["freed_s"] = None
            extra.update(rss_growth(samples))
            extra["memory"] = {"samples": samples, "columns": ["s", "client MiB", "server MiB"],
                               "items": tally.ok, "pace": case["options"]}
        cpu = time.process_time() - cpu
    return {**build_report(dict(case), tally, client_cpu_s=cpu), **extra}


def run_rpc(case: dict[str, Any]) -> dict[str, Any]:
    if case["mode"] in ("stream", "slow-stream"):
        return run_rpc_stream(case)
    from rpc.bench.loadgen import LoadSpec, run_load

    mode = case["mode"]
    spec = LoadSpec(
        server_id=case["server_id"], method=case["method"], args=tuple(case.get("args", [])),
        url=case["url"], mode="threads" if mode == "seq" else mode,
        concurrency=case["concurrency"], total=case["total"], duration=case["seconds"],
        warmup=case["warmup"], timeout=CALL_TIMEOUT, serializer=case["serializer"],
        payload_size=case.get("payload_size"), count_results=case.get("count_results", False),
    )
    report = run_load(spec, ready=_handshake)
    report["params"] = dict(case)
    return report


def run_pika(case: dict[str, Any]) -> dict[str, Any]:
    import msgpack
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(pika_url(case["url"])))
    channel = conn.channel()
    replies: dict[str, bytes] = {}
    on_reply: list[Callable[[str, bytes], None]] = [replies.__setitem__]
    channel.basic_consume(
        "amq.rabbitmq.reply-to", lambda ch, m, props, body: on_reply[0](props.correlation_id, body),
        auto_ack=True,
    )
    body = msgpack.packb([case["method"], _args(case)])
    ids = (str(i) for i in itertools.count())
    queue_name = case["server_id"]

    def publish() -> str:
        cid = next(ids)
        channel.basic_publish("", queue_name, body, pika.BasicProperties(
            reply_to="amq.rabbitmq.reply-to", correlation_id=cid))
        return cid

    def call() -> Any:
        cid = publish()
        deadline = time.monotonic() + CALL_TIMEOUT
        while cid not in replies:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no reply to {cid}")
            conn.process_data_events(time_limit=CALL_TIMEOUT)
        return msgpack.unpackb(replies.pop(cid))

    def sequential(clock: _Clock, tally: Tally) -> None:
        while clock.more():
            sent = time.perf_counter()
            try:
                call()
            except Exception as exc:
                tally.record_error(error_name(exc), sent, time.perf_counter())
            else:
                tally.record_ok(sent, time.perf_counter())

    def pipelined(clock: _Clock, tally: Tally) -> None:
        sent_at: dict[str, float] = {}

        def send() -> None:
            sent = time.perf_counter()
            sent_at[publish()] = sent

        def received(cid: str, reply: bytes) -> None:
            msgpack.unpackb(reply)
            tally.record_ok(sent_at.pop(cid), time.perf_counter())
            if clock.more():
                send()

        on_reply[0] = received
        for _ in range(case["concurrency"]):
            if clock.more():
                send()
        deadline = clock.stop + CALL_TIMEOUT
        while sent_at and time.perf_counter() < deadline:
            conn.process_data_events(time_limit=0.1)
        for sent in sent_at.values():
            tally.record_error("TimeoutError", sent, time.perf_counter())

    try:
        for _ in range(case["warmup"]):
            call()
        return _measured(case, sequential if case["mode"] == "seq" else pipelined)
    finally:
        conn.close()


def run_wire(case: dict[str, Any]) -> dict[str, Any]:
    from .wire import Caller

    caller = Caller(case["url"], case["server_id"])
    args = _args(case)

    def sequential(clock: _Clock, tally: Tally) -> None:
        while clock.more():
            sent = time.perf_counter()
            try:
                caller.call(case["method"], args)
            except Exception as exc:
                tally.record_error(error_name(exc), sent, time.perf_counter())
            else:
                tally.record_ok(sent, time.perf_counter())

    try:
        for _ in range(case["warmup"]):
            caller.call(case["method"], args)
        return _measured(case, sequential)
    finally:
        caller.close()


def run_nameko(case: dict[str, Any]) -> dict[str, Any]:
    from nameko.standalone.rpc import ClusterRpcProxy

    args = _args(case)
    with ClusterRpcProxy({"AMQP_URI": case["url"]}, timeout=CALL_TIMEOUT) as cluster:
        method = getattr(getattr(cluster, case["server_id"]), case["method"])
        for _ in range(case["warmup"]):
            method(*args)

        def sequential(clock: _Clock, tally: Tally) -> None:
            while clock.more():
                sent = time.perf_counter()
                try:
                    method(*args)
                except Exception as exc:
                    tally.record_error(error_name(exc), sent, time.perf_counter())
                else:
                    tally.record_ok(sent, time.perf_counter())

        def pipelined(clock: _Clock, tally: Tally) -> None:
            window: deque[tuple[Any, float]] = deque()
            while True:
                while window and (len(window) >= case["concurrency"] or clock.issued >= clock.total
                                  or time.perf_counter() >= clock.stop):
                    reply, sent = window.popleft()
                    try:
                        reply.result()
                    except Exception as exc:
                        tally.record_error(error_name(exc), sent, time.perf_counter())
                    else:
                        tally.record_ok(sent, time.perf_counter())
                if not clock.more():
                    break
                window.append((method.call_async(*args), time.perf_counter()))

        return _measured(case, sequential if case["mode"] == "seq" else pipelined)


async def _drive_async(case: dict[str, Any], call: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    """Warm up, then measure ``call()`` on the running loop: awaited one after another (mode
    ``seq``), or with ``concurrency`` tasks in flight, a new one as each ends. The warm-up runs
    the same way, so a batch of slow concurrent calls warms up in one batch's time."""

    async def one(tally: Tally, slots: asyncio.Semaphore | None = None) -> None:
        sent = time.perf_counter()
        try:
            await call()
        except Exception as exc:
            tally.record_error(error_name(exc), sent, time.perf_counter())
        else:
            tally.record_ok(sent, time.perf_counter())
        finally:
            if slots is not None:
                slots.release()

    async def phase(clock: _Clock, tally: Tally) -> None:
        if case["mode"] == "seq":
            while clock.more():
                await one(tally)
            return
        slots = asyncio.Semaphore(case["concurrency"])
        tasks: set[asyncio.Task[None]] = set()
        while clock.more():
            await slots.acquire()
            task = asyncio.create_task(one(tally, slots))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=CALL_TIMEOUT + 5)

    await phase(_Clock({**case, "total": case["warmup"], "seconds": WARMUP_SECONDS}), Tally())
    await asyncio.get_running_loop().run_in_executor(None, _handshake)
    clock = _Clock(case)
    tally = Tally(clock.start)
    cpu = time.process_time()
    await phase(clock, tally)
    cpu = time.process_time() - cpu
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]  # asyncio or uvloop
    return build_report({**case, "event_loop": loop}, tally, client_cpu_s=cpu)


def _run_async(main: Callable[[], Coroutine[Any, Any, dict[str, Any]]]) -> dict[str, Any]:
    """``main()`` on a new event loop: uvloop's when uvloop is installed (it is not required)."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if importlib.util.find_spec("uvloop") is not None:
        factory = importlib.import_module("uvloop").new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def run_rpc_async(case: dict[str, Any]) -> dict[str, Any]:
    from rpc import AsyncProxy

    args = _args(case)

    async def main() -> dict[str, Any]:
        async with AsyncProxy(case["url"], server_id=case["server_id"], timeout=CALL_TIMEOUT,
                              serializer=case["serializer"]) as proxy:
            if case["mode"] == "stream":
                return await _stream_async(case, proxy)
            # as an application writes it: ``await proxy.add(1, 2)``
            return await _drive_async(case, lambda: getattr(proxy, case["method"])(*args))

    return _run_async(main)


async def _stream_async(case: dict[str, Any], proxy: Any) -> dict[str, Any]:
    """``async for`` over one stream of ``total`` items (after a warm-up stream)."""
    streams = proxy.stream(timeout=CALL_TIMEOUT)
    method = case["method"]
    warm = Tally()
    await stream_phase_async(getattr(streams, method)(case["warmup"]),
                             time.perf_counter() + WARMUP_SECONDS, warm)
    if warm.error_count:
        raise SystemExit(f"warm-up stream failed: {warm.errors}")
    await asyncio.get_running_loop().run_in_executor(None, _handshake)
    clock = _Clock(case)
    tally = Tally(clock.start)
    cpu = time.process_time()
    await stream_phase_async(getattr(streams, method)(case["total"]), clock.stop, tally)
    cpu = time.process_time() - cpu
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    return build_report({**case, "event_loop": loop}, tally, client_cpu_s=cpu)


def run_aiopika(case: dict[str, Any]) -> dict[str, Any]:
    import aio_pika
    from aio_pika.patterns import RPC

    kwargs = {"add": lambda: {"a": case["args"][0], "b": case["args"][1]},
              "echo": lambda: {"value": _args(case)[-1]}}[case["method"]]()
    name = f"{case['server_id']}.{case['method']}"

    async def main() -> dict[str, Any]:
        conn = await aio_pika.connect(case["url"])
        try:
            rpc = await RPC.create(await conn.channel())
            return await _drive_async(
                case, lambda: asyncio.wait_for(rpc.call(name, kwargs=kwargs), CALL_TIMEOUT))
        finally:
            await conn.close()

    return _run_async(main)


CLIENTS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "rpc": run_rpc, "rpc-async": run_rpc_async, "pika": run_pika, "nameko": run_nameko,
    "aiopika": run_aiopika, "wire": run_wire,
}


def main(argv: list[str] | None = None) -> None:
    case = json.loads((argv if argv is not None else sys.argv[1:])[0])
    report = CLIENTS[case["client"]](case)
    sys.stdout.write("RESULT " + json.dumps(report) + "\n")
    sys.stdout.flush()
    sys.stdin.readline()  # stay alive until the driver has read this process's CPU time


if __name__ == "__main__":
    main()
