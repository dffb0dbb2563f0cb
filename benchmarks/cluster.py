"""``python -m benchmarks.cluster``: a three-node cluster with a quorum queue against one node.

One run starts its own brokers (``benchmarks/rabbit_cluster.py``, the code the cluster tests
use): a standalone node and a three-node cluster, on loopback ports of their own. Then it
measures, with the suite's client processes (``benchmarks.clients``) and a server process per
side, sequential ``add`` calls and 100 futures in flight, against:

* ``1 node, classic`` — the baseline: one node, a classic request queue;
* ``3 nodes, quorum, same node`` — client and server on the queue leader's node;
* ``3 nodes, quorum, other node`` — the client on another node than the server and the leader
  (how a cluster is used: clients connect to any node);
* ``3 nodes, classic, other node`` — the same with a classic queue, to tell the cost of the
  cluster hop from the cost of replication.

Each case reports calls/s and CPU µs per call of the client + server processes and of the
broker (all the nodes of its side), and its ratio to the baseline in the same mode and rep.
Writes ``results/<timestamp>-cluster.json`` and ``.md``; every node is killed at the end.

    python -m benchmarks.cluster                       # 3,000 calls per phase, 1 rep
    python -m benchmarks.cluster --total 10000 --reps 3
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from statistics import median
from typing import Any

import psutil

from .procs import Child, cpu_seconds, machine_cpu_seconds
from .rabbit_cluster import RabbitCluster, available

RESULTS = Path(__file__).resolve().parent / "results"
BASELINE = "1 node, classic"
MODES = (("seq", 1), ("futures", 100))


@dataclass(frozen=True)
class Side:
    """Where a case's server and client connect, and the request queue's type."""

    name: str
    server_url: str
    client_url: str
    queue_type: str
    brokers: tuple[int, ...]  # beam pids whose CPU counts as the broker's


def mode_name(mode: str, concurrency: int) -> str:
    return "seq" if mode == "seq" else f"{concurrency} in flight"


# -- the server process ----------------------------------------------------------------------------


def serve(options: argparse.Namespace) -> None:
    """``python -m benchmarks.cluster serve``: an rpc server of ``add``; READY once consuming."""
    from rpc import Server

    from . import workloads

    extra: dict[str, Any] = {}
    if options.queue_type != "classic":
        extra["queue_type"] = options.queue_type
    server = Server(options.url, server_id=options.server_id, **extra)
    server.register_function(workloads.add, "add")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    try:
        sys.stdout.write("READY\n")
        sys.stdout.flush()
        stop.wait(3600)
    finally:
        server.stop(grace=5)


# -- measuring ---------------------------------------------------------------------------------------


def measure(side: Side, mode: str, concurrency: int, *, total: int, seconds: float,
            warmup: int) -> dict[str, Any]:
    """One phase: a fresh server and client on ``side``; the client's report and CPU used."""
    server_id = f"bench-cluster-{uuid.uuid4().hex[:8]}"
    server = Child("benchmarks.cluster", "serve", "--url", side.server_url,
                   "--server-id", server_id, "--queue-type", side.queue_type)
    client = None
    try:
        server.expect("READY", timeout=60)
        spec = {"client": "rpc", "url": side.client_url, "server_id": server_id, "method": "add",
                "args": [1, 2], "mode": mode, "concurrency": concurrency, "payload_size": None,
                "serializer": "msgpack", "seconds": seconds, "total": total, "warmup": warmup,
                "count_results": False}
        client = Child("benchmarks.clients", json.dumps(spec))
        client.expect("WARM", timeout=60 + warmup * 0.05)
        before = _snapshot(server.pid, client.pid, side.brokers)
        client.send("GO")
        report = json.loads(client.expect("RESULT", timeout=seconds + 60))
        after = _snapshot(server.pid, client.pid, side.brokers)
        client.send("BYE")
        client.proc.wait(timeout=30)
    finally:
        if client is not None:
            client.stop()
        server.stop()
    used = {key: after[key] - before[key] for key in before}
    ours = used["client"] + used["server"] + used["broker"]
    cores = psutil.cpu_count() or 1
    return {
        "side": side.name, "queue_type": side.queue_type, "mode": mode_name(mode, concurrency),
        "report": {key: report[key] for key in ("count", "errors", "errors_by_type",
                                                "calls_per_s", "latency_ms", "client_cpu_s")},
        "cpu_s": {"client": report["client_cpu_s"], "server": used["server"],
                  "broker": used["broker"]},
        "other_share": round(max(used["machine"] - ours, 0.0) / max(used["wall"], 1e-9) / cores,
                             3),
    }


def _snapshot(server: int, client: int, brokers: tuple[int, ...]) -> dict[str, float]:
    return {"server": cpu_seconds([server], tree=True), "client": cpu_seconds([client]),
            "broker": cpu_seconds(list(brokers)), "machine": machine_cpu_seconds(),
            "wall": time.monotonic()}


def per_call_us(run: dict[str, Any]) -> dict[str, float | None]:
    """CPU µs per call: client + server processes, broker, and their total."""
    count = run["report"]["count"]
    if not count:
        return {"client_server": None, "broker": None, "total": None}
    cpu = run["cpu_s"]
    client_server = ((cpu["client"] or 0.0) + cpu["server"]) / count * 1e6
    broker = cpu["broker"] / count * 1e6
    return {"client_server": round(client_server, 1), "broker": round(broker, 1),
            "total": round(client_server + broker, 1)}


def compare(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (side, mode): medians over reps, and ratios to :data:`BASELINE` in the same
    mode and rep (calls/s, CPU per call of client + server, of the broker, and in total)."""
    base = {(run["rep"], run["mode"]): run for run in runs if run["side"] == BASELINE}
    rows: dict[tuple[str, str], dict[str, list[float]]] = {}
    for run in runs:
        row = rows.setdefault((run["side"], run["mode"]), {})
        cpu = per_call_us(run)
        figures: dict[str, float | None] = {
            "calls_per_s": run["report"]["calls_per_s"],
            "p50_ms": run["report"]["latency_ms"]["p50"],
            "errors": run["report"]["errors"],
            **{f"cpu_us_{key}": value for key, value in cpu.items()},
        }
        ref = base.get((run["rep"], run["mode"]))
        if ref is not None and ref["report"]["calls_per_s"]:
            ref_cpu = per_call_us(ref)
            figures["ratio"] = run["report"]["calls_per_s"] / ref["report"]["calls_per_s"]
            for key in ("client_server", "broker", "total"):
                value, ref_value = cpu[key], ref_cpu[key]
                if value is not None and ref_value:
                    figures[f"cpu_ratio_{key}"] = value / ref_value
        for key, value in figures.items():
            if value is not None:
                row.setdefault(key, []).append(float(value))
    return [{"side": side, "mode": mode, "reps": len(values.get("calls_per_s", [])),
             **{key: round(median(vals), 3) for key, vals in values.items()}}
            for (side, mode), values in rows.items()]


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| side | mode | calls/s | × calls/s | p50 ms | client+server µs/call | × | "
        "broker µs/call | × | total µs/call | × | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def fmt(row: dict[str, Any], key: str, spec: str) -> str:
        return format(row[key], spec) if key in row else "–"

    for row in rows:
        lines.append(
            f"| {row['side']} | {row['mode']} | {fmt(row, 'calls_per_s', '.0f')} | "
            f"{fmt(row, 'ratio', '.2f')} | {fmt(row, 'p50_ms', '.2f')} | "
            f"{fmt(row, 'cpu_us_client_server', '.0f')} | "
            f"{fmt(row, 'cpu_ratio_client_server', '.2f')} | {fmt(row, 'cpu_us_broker', '.0f')} | "
            f"{fmt(row, 'cpu_ratio_broker', '.2f')} | {fmt(row, 'cpu_us_total', '.0f')} | "
            f"{fmt(row, 'cpu_ratio_total', '.2f')} | {fmt(row, 'errors', '.0f')} |")
    return "\n".join(lines) + "\n"


# -- the run -----------------------------------------------------------------------------------------


def start_brokers() -> tuple[RabbitCluster, RabbitCluster]:
    """A standalone node and a three-node cluster, booted in parallel."""
    single = RabbitCluster(size=1, prefix="rpcb-one")
    cluster = RabbitCluster(size=3, prefix="rpcb")
    errors: list[BaseException] = []

    def boot(target: RabbitCluster) -> None:
        try:
            target.start()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=boot, args=(t,)) for t in (single, cluster)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        single.stop()
        cluster.stop()
        raise errors[0]
    return single, cluster


def sides(single: RabbitCluster, cluster: RabbitCluster) -> list[Side]:
    one = (single.nodes[0].beam_pid or 0,)
    three = tuple(node.beam_pid or 0 for node in cluster.nodes)
    everywhere = ";".join(cluster.urls)  # round-robin: the server lands on node 1, the leader
    other = ";".join(cluster.urls_from(1))
    return [
        Side(BASELINE, single.url(0), single.url(0), "classic", one),
        Side("3 nodes, quorum, same node", everywhere, everywhere, "quorum", three),
        Side("3 nodes, quorum, other node", everywhere, other, "quorum", three),
        Side("3 nodes, classic, other node", everywhere, other, "classic", three),
    ]


def run(options: argparse.Namespace) -> dict[str, Any]:
    started = datetime.now(UTC)
    clock = time.monotonic()
    single, cluster = start_brokers()
    print(f"brokers up in {time.monotonic() - clock:.0f} s", flush=True)
    runs: list[dict[str, Any]] = []
    try:
        for rep in range(options.reps):
            for side in sides(single, cluster):
                for mode, concurrency in MODES:
                    try:
                        result = measure(side, mode, concurrency, total=options.total,
                                         seconds=options.seconds, warmup=options.warmup)
                    except Exception as exc:
                        print(f"  {side.name:<30} {mode_name(mode, concurrency):<14} FAILED "
                              f"{exc}"[:300], flush=True)
                        continue
                    result["rep"] = rep
                    runs.append(result)
                    cpu = per_call_us(result)
                    print(f"  {side.name:<30} {result['mode']:<14} "
                          f"{result['report']['calls_per_s']:>8.0f} calls/s  "
                          f"client+server {cpu['client_server']} µs/call  "
                          f"broker {cpu['broker']} µs/call  "
                          f"errors {result['report']['errors']}  "
                          f"noise {result['other_share']:.2f}", flush=True)
    finally:
        single.stop()
        cluster.stop()
    return {
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join(["python", "-m", "benchmarks.cluster", *options.argv]),
        "total": options.total, "reps": options.reps, "cpus": psutil.cpu_count(),
        "runs": runs, "summary": compare(runs),
        "elapsed_s": round(time.monotonic() - clock, 1),
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster serve")
        parser.add_argument("--url", required=True)
        parser.add_argument("--server-id", required=True)
        parser.add_argument("--queue-type", default="classic", choices=("classic", "quorum"))
        serve(parser.parse_args(argv[1:]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--total", type=int, default=3000, help="calls of each measured phase")
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="wall-clock cap of each measured phase")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up calls of each phase")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    options = parser.parse_args(argv)
    options.argv = argv
    if not available():
        parser.error("needs /usr/lib/rabbitmq/bin/rabbitmq-server (apt-get install rabbitmq-server)")
    result = run(options)
    table = markdown(result["summary"])
    stamp = datetime.fromisoformat(result["started"]).strftime("%Y%m%dT%H%M%SZ")
    options.output_dir.mkdir(parents=True, exist_ok=True)
    stem = options.output_dir / f"{stamp}-cluster"
    Path(f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    Path(f"{stem}.md").write_text(f"# {result['command']}\n\n{table}")
    print()
    print(table)
    print(f"wrote {stem}.json, {stem}.md; took {result['elapsed_s']:.0f} s")
    return 0 if result["runs"] else 1


if __name__ == "__main__":
    sys.exit(main())
