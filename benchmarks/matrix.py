"""The benchmark matrix: which client calls which server how, and what each is compared with.

Pure data: :func:`build_matrix` lists the cases of a run; the runner executes them in order,
reusing a server setup for consecutive cases that share it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .workloads import BURN_N

PAYLOADS_FULL = (64, 1024, 65536, 1048576)
PAYLOADS_QUICK = (1024, 65536)
PREFETCH_FACTORS = (1, 2, 4, 8, 32)
#: Server-side delays (ms) of the fast and the slow server in the fairness cases.
FAIR_DELAYS = (1.0, 10.0)

BASE_SEQ = "pika seq add"
BASE_PIPE = "pika 100 in flight add"
#: rpc's wire format on raw sockets, one write and one read per side (benchmarks.wire): what the
#: broker allows a caller and a server that do nothing else.
WIRE_SEQ = "wire seq add: raw sockets, rpc's frames, confirms and properties"
#: The raw pika server's prefetch (benchmarks.servers.serve_pika).
PIKA_PREFETCH = 100
ASYNC_PIPE_MATCHED = f"rpc-async 100 in flight add, server prefetch {PIKA_PREFETCH} as pika's"
#: One batch of concurrent calls of an ``async def`` handler that sleeps, on a server with
#: default settings: its wall time is the figure.
ASYNC_HANDLER_CALLS = 100
ASYNC_SLEEP_S = 0.1
ASYNC_HANDLER = (f"rpc-async {ASYNC_HANDLER_CALLS} in flight sleep_async {ASYNC_SLEEP_S:g} s, "
                 "default server")

#: Streams: one ``proxy.stream.count(n)`` per phase, its items/s against sequential calls/s of
#: the same proxy kind. n is the phase's call cap times :data:`STREAM_ITEMS_SCALE` (an item
#: costs a fraction of a call); the phase's seconds bound it as well.
STREAM = "rpc stream count"
ASYNC_STREAM = "rpc-async stream count"
STREAM_ITEMS_SCALE = 10.0
#: One stream of this many items to a consumer that sleeps: how the client's and the server's
#: resident memory grow while it runs, for a fixed time (full, quick), whatever ``--seconds``.
MEMORY_ITEMS = 1_000_000
STREAM_MEMORY = f"rpc stream of {MEMORY_ITEMS:,} items to a slow consumer, memory"
MEMORY_SECONDS = (20.0, 10.0)
#: The slow consumer: it sleeps ``sleep_s`` after every ``batch`` items; RSS is sampled every
#: ``sample_every_s`` from ``settle_s`` into the phase (imports and buffers settled by then).
MEMORY_CONSUMER = {"batch": 10, "sleep_s": 0.001, "settle_s": 2.0, "sample_every_s": 0.5}


@dataclass(frozen=True)
class ServerSetup:
    """Server processes serving one queue: their framework, count and options.

    ``concurrency`` None leaves the server's own default; ``async_handlers`` serves the
    ``async def`` workloads too (on rpc they raise the default prefetch, so only when asked).
    """

    kind: str
    processes: int = 1
    concurrency: int | None = 1
    prefetch: int | None = None
    delays_ms: tuple[float, ...] = ()
    async_handlers: bool = False

    def argv(self, index: int) -> list[str]:
        """Extra command-line arguments of server process ``index``."""
        args = [] if self.concurrency is None else ["--concurrency", str(self.concurrency)]
        if self.prefetch is not None:
            args += ["--prefetch", str(self.prefetch)]
        if self.async_handlers:
            args.append("--async-handlers")
        if self.delays_ms:
            delay = self.delays_ms[index % len(self.delays_ms)]
            args += ["--delay-ms", f"{delay:g}", "--label", f"{delay:g}ms"]
        return args


@dataclass(frozen=True)
class Case:
    """One measured workload."""

    name: str
    group: str
    client: str
    server: ServerSetup
    method: str = "add"
    args: tuple[Any, ...] = (1, 2)
    mode: str = "seq"
    concurrency: int = 1
    payload_size: int | None = None
    serializer: str = "msgpack"
    baseline: str | None = BASE_SEQ
    count_results: bool = False
    calls_scale: float = 1.0
    #: Calls of the measured phase and of the warm-up whatever ``--total`` and ``--warmup``
    #: say: one batch of this many, for a case whose figure is the batch's wall time.
    calls: int | None = None
    #: Wall-clock seconds of the measured phase whatever ``--seconds`` says (None: that).
    seconds: float | None = None
    #: Settings of the client's workload (the slow consumer's pace), passed on as they are.
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    tags: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def phase_seconds(self, seconds: float) -> float:
        """The wall-clock cap of this case's measured phase, given ``--seconds``."""
        return self.seconds if self.seconds is not None else seconds

    def client_spec(self, url: str, server_id: str, seconds: float, total: int,
                    warmup: int) -> dict[str, Any]:
        """The JSON the client process gets (see benchmarks.clients)."""
        return {
            "client": self.client, "url": url, "server_id": server_id, "method": self.method,
            "args": list(self.args), "mode": self.mode, "concurrency": self.concurrency,
            "payload_size": self.payload_size, "serializer": self.serializer,
            "seconds": self.phase_seconds(seconds),
            "total": self.calls or max(int(total * self.calls_scale), 1),
            "warmup": self.calls or max(int(warmup * self.calls_scale), 1),
            "count_results": self.count_results, "options": dict(self.options),
        }

    def describe(self) -> dict[str, Any]:
        """The case as a JSON-able dict."""
        data = asdict(self)
        data["args"] = list(self.args)
        data["server"]["delays_ms"] = list(self.server.delays_ms)
        return data


def _size(n: int) -> str:
    if n >= 1 << 20:
        return f"{n >> 20} MiB"
    if n >= 1 << 10:
        return f"{n >> 10} KiB"
    return f"{n} B"


def _echo(n: int) -> dict[str, Any]:
    # Big payloads take longer per call: fewer calls keep a case within its time.
    return {"method": "echo", "args": (), "payload_size": n,
            "calls_scale": 1.0 if n <= 65536 else 0.1}


def build_matrix(quick: bool, peers: frozenset[str] = frozenset()) -> list[Case]:
    """The cases of a run, baselines first (each rep measures them again)."""
    pika = ServerSetup("pika")
    ours = ServerSetup("rpc")
    payloads = PAYLOADS_QUICK if quick else PAYLOADS_FULL
    cases = [
        Case(BASE_SEQ, "baseline", "pika", pika, baseline=None),
        Case(BASE_PIPE, "baseline", "pika", pika, mode="pipe", concurrency=100, baseline=None),
    ]
    cases += [Case(f"pika seq echo {_size(n)}", "baseline", "pika", pika, baseline=None, **_echo(n))
              for n in payloads]
    cases.append(Case(WIRE_SEQ, "baseline", "wire", ServerSetup("wire")))

    cases.append(Case("rpc seq add", "latency", "rpc", ours))
    for c in (1, 10, 100) if not quick else (10, 100):
        cases.append(Case(f"rpc futures {c} in flight add", "concurrency", "rpc", ours,
                          mode="futures", concurrency=c,
                          baseline=BASE_SEQ if c == 1 else BASE_PIPE))
    for c in (4, 16) if not quick else (4,):
        cases.append(Case(f"rpc {c} threads add", "concurrency", "rpc", ours, mode="threads",
                          concurrency=c, baseline=BASE_PIPE))
    cases.append(Case("rpc callbacks 100 in flight add", "concurrency", "rpc", ours,
                      mode="callbacks", concurrency=100, baseline=BASE_PIPE))
    cases.append(Case("rpc-async seq add", "asyncio", "rpc-async", ours))
    cases.append(Case("rpc-async 100 in flight add", "asyncio", "rpc-async", ours, mode="pipe",
                      concurrency=100, baseline=BASE_PIPE))
    # The raw pika server takes 100 requests ahead; an rpc server takes 4 per worker by default.
    cases.append(Case(ASYNC_PIPE_MATCHED, "asyncio", "rpc-async",
                      ServerSetup("rpc", prefetch=PIKA_PREFETCH), mode="pipe", concurrency=100,
                      baseline=BASE_PIPE))

    # Items of one stream against calls one at a time, on the same server as "rpc seq add".
    cases.append(Case(STREAM, "streams", "rpc", ours, method="count", args=(), mode="stream",
                      baseline="rpc seq add", calls_scale=STREAM_ITEMS_SCALE))
    cases.append(Case(ASYNC_STREAM, "streams", "rpc-async", ours, method="count", args=(),
                      mode="stream", baseline="rpc-async seq add",
                      calls_scale=STREAM_ITEMS_SCALE))
    # Its figures are RSS growths in MiB, not a ratio: no baseline.
    cases.append(Case(
        STREAM_MEMORY, "streams", "rpc", ours, method="count", args=(MEMORY_ITEMS,),
        mode="slow-stream", baseline=None, seconds=MEMORY_SECONDS[quick],
        options=dict(MEMORY_CONSUMER),
    ))

    cases += [Case(f"rpc seq echo {_size(n)}", "payload", "rpc", ours,
                   baseline=f"pika seq echo {_size(n)}", **_echo(n)) for n in payloads]
    for serializer in ("json", "pickle"):
        cases.append(Case(f"rpc seq add {serializer}", "serializer", "rpc", ours,
                          serializer=serializer))
        if not quick:
            cases.append(Case(f"rpc seq echo 1 KiB {serializer}", "serializer", "rpc", ours,
                              serializer=serializer, baseline="pika seq echo 1 KiB", **_echo(1024)))

    one = "rpc 1 server process burn, 16 in flight"
    for n in (1, 2):
        cases.append(Case(
            f"rpc {n} server process{'es' if n > 1 else ''} burn, 16 in flight", "processes",
            "rpc", ServerSetup("rpc-serve", processes=n), method="burn", args=(BURN_N,),
            mode="futures", concurrency=16, baseline=None if n == 1 else one, calls_scale=0.05,
        ))

    # Its figure is the batch's wall time (report elapsed_s), not a ratio: no baseline.
    cases.append(Case(
        ASYNC_HANDLER, "async handlers", "rpc-async",
        ServerSetup("rpc", concurrency=None, async_handlers=True), method="sleep_async",
        args=(ASYNC_SLEEP_S,), mode="pipe", concurrency=ASYNC_HANDLER_CALLS, baseline=None,
        calls=ASYNC_HANDLER_CALLS,
    ))

    for peer in sorted(peers):
        setup = ServerSetup(peer)
        cases.append(Case(f"{peer} seq add", "peers", peer, setup))
        cases.append(Case(f"{peer} 100 in flight add", "peers", peer, setup, mode="pipe",
                          concurrency=100, baseline=BASE_PIPE))

    for concurrency in (1,) if quick else (1, 4):
        fair_base = None
        for factor in PREFETCH_FACTORS:
            prefetch = factor if factor == 1 else factor * concurrency
            tags = {"prefetch": prefetch, "server_concurrency": concurrency}
            label = f"prefetch {prefetch}, server concurrency {concurrency}"
            cases.append(Case(
                f"rpc 100 in flight add, {label}", "prefetch", "rpc",
                ServerSetup("rpc", concurrency=concurrency, prefetch=prefetch),
                mode="futures", concurrency=100, baseline=BASE_PIPE, tags=tags,
            ))
            name = f"rpc fast+slow servers, {label}"
            cases.append(Case(
                name, "fairness", "rpc",
                ServerSetup("rpc", processes=2, concurrency=concurrency, prefetch=prefetch,
                            delays_ms=FAIR_DELAYS),
                method="task", args=(), mode="futures", concurrency=10 * concurrency,
                baseline=fair_base, count_results=True, calls_scale=0.1, tags=tags,
            ))
            fair_base = fair_base or name
    return cases
