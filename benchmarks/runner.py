"""Executing the matrix: server processes per setup, one client process per case, CPU snapshots."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import psutil

from .amqp_url import pika_url
from .matrix import Case, ServerSetup
from .procs import ROOT, Child, broker_pid, cpu_seconds, machine_cpu_seconds

logger = logging.getLogger(__name__)


class Servers:
    """The server processes of the current setup; a new setup replaces them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.setup: ServerSetup | None = None
        self.children: list[Child] = []
        self.server_id = ""
        self.queues: set[str] = set()

    def use(self, setup: ServerSetup) -> None:
        """Make ``setup`` the running one, starting its processes if it is not already."""
        if setup == self.setup and all(c.proc.poll() is None for c in self.children):
            return
        self.stop()
        self.server_id = f"bench-{setup.kind}-{uuid.uuid4().hex[:8]}"
        self.queues.add(self.server_id)
        if setup.kind == "nameko":
            self.queues.add(f"rpc-{self.server_id}")
        self.setup = setup
        if setup.kind == "rpc-serve":
            self.children.append(Child(
                "rpc", "serve", "benchmarks.serve_target:server", "--url", self.url,
                "--server-id", self.server_id, "--processes", str(setup.processes),
                "--app-dir", str(ROOT), "--log-level", "WARNING", *setup.argv(0)))
            wait_for_consumers(self.url, self.server_id, setup.processes, timeout=60)
            return
        for index in range(setup.processes):
            self.children.append(Child("benchmarks.servers", setup.kind, "--url", self.url,
                                       "--server-id", self.server_id, *setup.argv(index)))
        for child in self.children:
            child.expect("READY", timeout=60)

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in self.children]

    def stop(self) -> None:
        for child in self.children:
            child.stop()
        self.children = []
        self.setup = None


#: Share of the machine that other processes may use during a phase before it is measured again.
NOISE_LIMIT = 0.25


def run_case(case: Case, servers: Servers, *, seconds: float, total: int, warmup: int,
             broker: int | None) -> dict[str, Any]:
    """Measure ``case`` once; the run record of :mod:`benchmarks.analysis`."""
    servers.use(case.server)
    spec = case.client_spec(servers.url, servers.server_id, seconds, total, warmup)
    spec["server_pids"] = servers.pids  # whose memory a memory case samples
    client = Child("benchmarks.clients", json.dumps(spec))
    try:
        client.expect("WARM", timeout=60 + warmup * 0.05)
        pids = {"client": [client.pid], "driver": [os.getpid()]}
        before = _snapshot(servers.pids, pids, broker)
        client.send("GO")
        report = json.loads(client.expect("RESULT", timeout=case.phase_seconds(seconds) + 60))
        after = _snapshot(servers.pids, pids, broker)
        client.send("BYE")
        client.proc.wait(timeout=30)
    finally:
        client.stop()
    used = {key: _delta(before[key], after[key]) for key in before}
    cpu: dict[str, float | None] = {
        "client": report["client_cpu_s"], "server": used["server"], "broker": used["broker"],
    }
    ours = sum(used[key] or 0.0 for key in ("server", "broker", "client", "driver"))
    cpu["other"] = other = max((used["machine"] or 0.0) - ours, 0.0)
    cores = psutil.cpu_count() or 1
    return {"case": case.describe(), "report": report, "cpu_s": cpu, "error": None,
            "other_share": round(other / max(used["wall"] or 1e-9, 1e-9) / cores, 3)}


def _delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def _snapshot(server_pids: list[int], pids: dict[str, list[int]],
              broker: int | None) -> dict[str, float | None]:
    snap: dict[str, float | None] = {key: cpu_seconds(group) for key, group in pids.items()}
    snap["server"] = cpu_seconds(server_pids, tree=True)
    snap["broker"] = None if broker is None else cpu_seconds([broker])
    snap["machine"] = machine_cpu_seconds()
    snap["wall"] = time.monotonic()
    return snap


def run_matrix(cases: list[Case], url: str, *, reps: int, seconds: float, total: int, warmup: int,
               retries: int = 1, budget: float = 840.0,
               on_run: Callable[[dict[str, Any]], None] | None = None,
               ) -> list[dict[str, Any]]:
    """Every case, ``reps`` times over; a case that fails is recorded with its error, not fatal.

    A phase during which other processes used over :data:`NOISE_LIMIT` of the machine is
    measured again, up to ``retries`` times, while the run keeps within its time ``budget``
    (pro rata); the last attempt is kept, with its noise share.
    """
    clock = time.monotonic()
    planned = len(cases) * reps
    broker = broker_pid(url)
    if broker is None:
        logger.warning("broker pid not found: broker CPU will not be reported")
    servers = Servers(url)
    runs: list[dict[str, Any]] = []
    try:
        for rep in range(reps):
            for case in cases:
                started = time.monotonic()
                try:
                    for attempt in range(retries + 1):
                        run = run_case(case, servers, seconds=seconds, total=total,
                                       warmup=warmup, broker=broker)
                        run["attempts"] = attempt + 1
                        allowed = budget * (len(runs) + 1) / planned
                        if run["other_share"] <= NOISE_LIMIT or (
                                time.monotonic() - clock > allowed):
                            break
                except Exception as exc:
                    servers.stop()
                    run = {"case": case.describe(), "report": None,
                           "cpu_s": None, "error": f"{type(exc).__name__}: {exc}"[:2000]}
                run["rep"] = rep
                run["wall_s"] = round(time.monotonic() - started, 3)
                runs.append(run)
                if on_run is not None:
                    on_run(run)
    finally:
        servers.stop()
        delete_queues(url, servers.queues)
    return runs


def wait_for_consumers(url: str, queue: str, count: int, timeout: float) -> None:
    """Wait until ``queue`` exists with ``count`` consumers (the workers of ``rpc serve``)."""
    import pika
    import pika.exceptions

    deadline = time.monotonic() + timeout
    conn = pika.BlockingConnection(pika.URLParameters(pika_url(url)))
    try:
        while time.monotonic() < deadline:
            channel = conn.channel()
            try:
                found = channel.queue_declare(queue, passive=True).method.consumer_count
                channel.close()
            except pika.exceptions.ChannelClosedByBroker:  # not declared yet
                found = 0
            if found >= count:
                return
            time.sleep(0.1)
    finally:
        conn.close()
    raise RuntimeError(f"{queue!r} did not get {count} consumer(s) within {timeout:g} s")


def delete_queues(url: str, names: set[str]) -> None:
    """Remove the durable request queues the servers declared, so the broker is left as found."""
    if not names:
        return
    import pika

    try:
        conn = pika.BlockingConnection(pika.URLParameters(pika_url(url)))
    except Exception as exc:
        logger.warning("cannot delete benchmark queues: %s", exc)
        return
    try:
        for name in names:
            channel = conn.channel()
            try:
                channel.queue_delete(name)
                channel.close()
            except Exception:  # already gone (auto-delete) closes the channel: next one
                logger.debug("queue %s not deleted", name, exc_info=True)
    finally:
        conn.close()
