"""``python -m benchmarks [--quick]``: run the matrix; write results/<timestamp>.json, .md, PNGs."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rpc.bench.loadgen import broker_version
from rpc.transport.urls import mask_url

from .analysis import RESULT_SCHEMA, add_ratios, headlines, markdown, summarize
from .matrix import build_matrix
from .runner import run_matrix

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672//"
LOOPBACK = ("localhost", "127.0.0.1", "::1")
#: Peers and the module that shows each is installed.
PEERS = {"nameko": "nameko", "aiopika": "aio_pika"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--url", default=os.environ.get("RPC_BROKER_URL") or DEFAULT_URL,
                        help="broker URL, loopback only (default: $RPC_BROKER_URL or local)")
    parser.add_argument("--quick", action="store_true", help="reduced matrix, under 2 minutes")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (quick 1, full 3)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="wall-clock cap of each measured phase (quick 1.0, full 2.5)")
    parser.add_argument("--total", type=int, default=20_000, help="call cap of each phase")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up calls of each case")
    parser.add_argument("--only", action="append", default=[],
                        help="run only cases whose name contains this (repeatable); "
                             "baselines always run")
    parser.add_argument("--retries", type=int, default=None,
                        help="re-measure a phase disturbed by other processes (quick 1, full 2)")
    parser.add_argument("--no-peers", action="store_true", help="skip nameko and aio-pika")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    options = parser.parse_args(argv)
    if urlsplit(options.url).hostname not in LOOPBACK:
        parser.error(f"benchmarks run against a loopback broker only, not {mask_url(options.url)}")
    options.reps = options.reps or (1 if options.quick else 3)
    options.seconds = options.seconds or (1.0 if options.quick else 2.5)
    if options.retries is None:
        options.retries = 1 if options.quick else 2
    options.budget = 100.0 if options.quick else 780.0
    return options


def installed_peers(skip: bool) -> tuple[frozenset[str], dict[str, str]]:
    """The peers to measure, and why the others are skipped."""
    if skip:
        return frozenset(), {peer: "--no-peers" for peer in PEERS}
    found, skipped = set(), {}
    for peer, module in PEERS.items():
        if importlib.util.find_spec(module) is None:
            skipped[peer] = "not installed: pip install 'amqp-rpc[bench-peers]'"
        else:
            found.add(peer)
    return frozenset(found), skipped


def environment(url: str) -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count()}
    for dist in ("amqp-rpc", "kombu", "amqp", "pika", "nameko", "aio-pika"):
        try:
            env[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    env["broker"] = broker_version(url) or "unknown"
    env["commit"] = _commit()
    return env


def _commit() -> str:
    """The git commit measured, marked dirty when rpc/ has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "rpc"], cwd=root,
                               check=True, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty.strip() else "")


def _line(run: dict[str, Any]) -> str:
    if run["error"]:
        return f"  {run['case']['name']:<58} FAILED {run['error'].splitlines()[0][:120]}"
    report = run["report"]
    line = (f"  {run['case']['name']:<58} {report['calls_per_s']:>9.0f} "
            f"{'items' if 'stream' in run['case']['mode'] else 'calls'}/s  "
            f"p50 {report['latency_ms']['p50']:>7.3f} ms  errors {report['errors']}  "
            f"noise {run['other_share']:.2f}")
    if "client_rss_growth_mib" in report:
        line += (f"  RSS growth client {report['client_rss_growth_mib']} MiB, "
                 f"server {report['server_rss_growth_mib']} MiB")
    return line


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pika").setLevel(logging.ERROR)  # its channel-close chatter while polling
    peers, skipped = installed_peers(options.no_peers)
    cases = build_matrix(options.quick, peers)
    if options.only:
        wanted = {c.name for c in cases if any(part in c.name for part in options.only)}
        wanted |= {c.baseline for c in cases if c.name in wanted and c.baseline}
        cases = [c for c in cases if c.name in wanted or c.group == "baseline"]
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    args = argv if argv is not None else sys.argv[1:]
    command = shlex.join(["python", "-m", "benchmarks", *args])
    print(f"{len(cases)} cases x {options.reps} rep(s) against {mask_url(options.url)}"
          + (f"; skipped: {', '.join(skipped)}" if skipped else ""), flush=True)
    clock = time.monotonic()
    runs = run_matrix(cases, options.url, reps=options.reps, seconds=options.seconds,
                      total=options.total, warmup=options.warmup, retries=options.retries,
                      budget=options.budget,
                      on_run=lambda run: print(_line(run), flush=True))
    add_ratios(runs)
    result = {
        "schema": RESULT_SCHEMA, "started": started.isoformat(timespec="seconds"),
        "command": command, "url": mask_url(options.url), "quick": options.quick,
        "reps": options.reps, "environment": environment(options.url), "skipped": skipped,
        "runs": runs, "summary": summarize(runs), "headlines": headlines(runs),
        "elapsed_s": round(time.monotonic() - clock, 1),
    }
    options.output_dir.mkdir(parents=True, exist_ok=True)
    stem = options.output_dir / stamp
    Path(f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(result)
    Path(f"{stem}.md").write_text(table)
    from .plots import write_plots

    plots = write_plots(result, stem)
    print()
    print(table)
    print(f"wrote {stem}.json, {stem}.md, " + ", ".join(str(p) for p in plots))
    print(f"took {result['elapsed_s']:.0f} s")
    return 1 if all(run["error"] for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
