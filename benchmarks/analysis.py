"""From measured runs to figures: CPU per call, same-run ratios, medians and the Markdown tables.

No I/O here. A *run* is one case measured once::

    {"case": {...}, "rep": 0, "report": <rpc bench JSON report>,
     "cpu_s": {"client": s, "server": s, "broker": s or None, "other": s}, "error": None}

Ratios are taken within a rep (against the baseline measured in that rep), then the median
over reps is reported: on a shared machine only same-run ratios are comparable.
"""

from __future__ import annotations

from collections.abc import Iterable
from statistics import median
from typing import Any

from .matrix import (
    ASYNC_HANDLER,
    ASYNC_PIPE_MATCHED,
    ASYNC_STREAM,
    MEMORY_ITEMS,
    STREAM,
    STREAM_MEMORY,
    WIRE_SEQ,
)

RESULT_SCHEMA = "rpc-benchmarks/1"
SIDES = ("client", "server", "broker")


def cpu_per_call(cpu_s: dict[str, float | None], calls: int) -> dict[str, float | None]:
    """CPU µs per call of each side, of client + server, and of all three (None if unknown)."""
    if calls <= 0:
        return dict.fromkeys((*SIDES, "client_server", "total"))
    out: dict[str, float | None] = {}
    for side in SIDES:
        value = cpu_s.get(side)
        out[side] = None if value is None else value / calls * 1e6
    client, server, broker = out["client"], out["server"], out["broker"]
    out["client_server"] = None if client is None or server is None else client + server
    out["total"] = None if out["client_server"] is None or broker is None else (
        out["client_server"] + broker)
    return out


def ratio(value: float | None, base: float | None) -> float | None:
    """``value / base``, or None when either is missing or the base is zero."""
    if value is None or base is None or base == 0:
        return None
    return value / base


def _usable(run: dict[str, Any]) -> bool:
    """Whether a run's figures count: it ran, and none of its calls failed (a call that fails
    fast would pass for a fast call)."""
    report = run.get("report")
    return run.get("error") is None and report is not None and report["errors"] == 0


def _call_failures(run: dict[str, Any]) -> str:
    report = run["report"]
    kinds = ", ".join(f"{name} {n}" for name, n in report["errors_by_type"].items())
    return f"{report['errors']} of {report['count']} calls failed ({kinds})"


def add_ratios(runs: list[dict[str, Any]]) -> None:
    """Set ``ratio`` (calls/s) and ``cpu_ratio`` (client + server CPU per call) on every run,
    against its case's baseline in the same rep; a baseline's own ratios are 1.0."""
    by_key = {(run["rep"], run["case"]["name"]): run for run in runs if _usable(run)}
    for run in runs:
        run["cpu_us_per_call"] = cpu_per_call(
            run.get("cpu_s") or {}, run["report"]["count"] if _usable(run) else 0)
        base_name = run["case"]["baseline"] or run["case"]["name"]
        base = by_key.get((run["rep"], base_name))
        if not _usable(run) or base is None:
            run["ratio"] = run["cpu_ratio"] = None
            continue
        base_cpu = cpu_per_call(base.get("cpu_s") or {}, base["report"]["count"])
        run["ratio"] = ratio(run["report"]["calls_per_s"], base["report"]["calls_per_s"])
        run["cpu_ratio"] = ratio(run["cpu_us_per_call"]["client_server"], base_cpu["client_server"])


def _median(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return median(kept) if kept else None


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per case (in matrix order): medians over reps of every figure."""
    order: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        order.setdefault(run["case"]["name"], []).append(run)
    rows = []
    for name, group in order.items():
        good = [run for run in group if _usable(run)]
        ran = [run for run in group if run.get("report") is not None]
        case = group[0]["case"]
        row: dict[str, Any] = {
            "name": name, "group": case["group"], "baseline": case["baseline"],
            "tags": case.get("tags", {}), "reps": len(good),
            "failed": [run["error"] for run in group if run.get("error")]
                      + [_call_failures(run) for run in ran if run["report"]["errors"]],
            "ratio": _median(run["ratio"] for run in good),
            "cpu_ratio": _median(run["cpu_ratio"] for run in good),
            "calls_per_s": _median(run["report"]["calls_per_s"] for run in good),
            "calls": sum(run["report"]["count"] for run in good),
            "errors": sum(run["report"]["errors"] for run in ran),
            "noise": _median(run.get("other_share") for run in good),
        }
        for key in ("p50", "p99"):
            row[f"{key}_ms"] = _median(run["report"]["latency_ms"][key] for run in good)
        for key in MEMORY_FIGURES:
            if any(key in run["report"] for run in good):
                row[key] = _median(run["report"].get(key) for run in good)
        for key in (*SIDES, "client_server", "total"):
            row[f"cpu_{key}_us"] = _median(run["cpu_us_per_call"][key] for run in good)
        row["share"] = result_shares(good)
        rows.append(row)
    return rows


def result_shares(runs: list[dict[str, Any]]) -> dict[str, float] | None:
    """Fraction of calls per returned value over ``runs`` (which server served them), if counted."""
    totals: dict[str, int] = {}
    for run in runs:
        for value, count in (run["report"].get("results") or {}).items():
            totals[value] = totals.get(value, 0) + count
    calls = sum(totals.values())
    return {value: count / calls for value, count in sorted(totals.items())} if calls else None


def pair_ratio(runs: list[dict[str, Any]], name: str, base: str,
               key: str = "calls_per_s") -> float | None:
    """Median over reps of ``name``'s figure divided by ``base``'s in the same rep."""
    found: dict[tuple[int, str], float] = {}
    for run in runs:
        if _usable(run) and run["case"]["name"] in (name, base):
            value = (run["report"][key] if key in run["report"]
                     else run["cpu_us_per_call"][key])
            found[(run["rep"], run["case"]["name"])] = value
    reps = {rep for rep, _ in found}
    return _median(ratio(found.get((rep, name)), found.get((rep, base))) for rep in sorted(reps))


def case_median(runs: list[dict[str, Any]], name: str, key: str) -> float | None:
    """Median over reps of ``name``'s own figure ``key`` (a report key, such as elapsed_s)."""
    return _median(run["report"].get(key) for run in runs
                   if _usable(run) and run["case"]["name"] == name)


#: What a memory case's report adds: RSS growth of each side over the phase after it settled
#: (last sample minus first, and the peak above the first), MiB; and the seconds from leaving
#: the stream to the reply of a call that needed the worker the stream held.
MEMORY_FIGURES = ("client_rss_growth_mib", "server_rss_growth_mib", "client_rss_peak_growth_mib",
                  "server_rss_peak_growth_mib", "freed_s")
#: The unit of each figure a headline gives as it is (not as a ratio).
FIGURE_UNITS = {"elapsed_s": "s", "client_rss_growth_mib": "MiB",
                "server_rss_growth_mib": "MiB"}


#: The figures the project tracks: (label, case, compared with, figure, target). A same-run
#: ratio of ``figure`` to the case compared with; with None, the case's own ``figure``, in its
#: unit (:data:`FIGURE_UNITS`).
HEADLINES: tuple[tuple[str, str, str | None, str, str | None], ...] = (
    ("sequential calls/s vs raw pika sequential", "rpc seq add", "pika seq add",
     "calls_per_s", ">= 1.5"),
    ("100 futures in flight calls/s vs raw pika pipelined (100)",
     "rpc futures 100 in flight add", "pika 100 in flight add", "calls_per_s", ">= 1.0"),
    ("client+server CPU per call, sequential, vs raw pika", "rpc seq add", "pika seq add",
     "client_server", "<= 0.4"),
    ("client+server CPU per call, 100 in flight, vs raw pika pipelined",
     "rpc futures 100 in flight add", "pika 100 in flight add", "client_server", "<= 1.0"),
    ("the wire case's sequential calls/s vs raw pika: what the broker leaves room for",
     WIRE_SEQ, "pika seq add", "calls_per_s", None),
    ("the wire case's client+server CPU per call vs raw pika", WIRE_SEQ, "pika seq add",
     "client_server", None),
    ("sequential calls/s vs the wire case: how close rpc comes to its floor", "rpc seq add",
     WIRE_SEQ, "calls_per_s", None),
    ("sequential calls/s vs nameko sequential", "rpc seq add", "nameko seq add",
     "calls_per_s", ">= 4.0"),
    ("100 in flight calls/s vs nameko 100 in flight", "rpc futures 100 in flight add",
     "nameko 100 in flight add", "calls_per_s", ">= 5.0"),
    ("sequential calls/s vs aio-pika RPC pattern sequential", "rpc seq add", "aiopika seq add",
     "calls_per_s", None),
    ("100 in flight calls/s vs aio-pika RPC pattern 100 in flight",
     "rpc futures 100 in flight add", "aiopika 100 in flight add", "calls_per_s", None),
    ("2 server processes vs 1, CPU-bound function", "rpc 2 server processes burn, 16 in flight",
     "rpc 1 server process burn, 16 in flight", "calls_per_s", ">= 1.7"),
    ("AsyncProxy sequential calls/s vs sync Proxy sequential", "rpc-async seq add",
     "rpc seq add", "calls_per_s", ">= 0.95"),
    ("AsyncProxy 100 in flight calls/s vs raw pika pipelined", "rpc-async 100 in flight add",
     "pika 100 in flight add", "calls_per_s", ">= 1.3"),
    ("the same, server prefetch 100 as the raw pika server's (default: 4 per worker)",
     ASYNC_PIPE_MATCHED, "pika 100 in flight add", "calls_per_s", ">= 1.3"),
    ("AsyncProxy sequential vs aio-pika RPC sequential", "rpc-async seq add", "aiopika seq add",
     "calls_per_s", ">= 3.0"),
    ("AsyncProxy 100 in flight vs aio-pika 100 in flight", "rpc-async 100 in flight add",
     "aiopika 100 in flight add", "calls_per_s", ">= 3.0"),
    ("100 concurrent calls of an async def handler sleeping 0.1 s, default server: wall seconds",
     ASYNC_HANDLER, None, "elapsed_s", "< 0.5 s"),
    ("streamed items/s vs sequential calls/s", STREAM, "rpc seq add", "calls_per_s", ">= 10"),
    ("AsyncProxy streamed items/s vs AsyncProxy sequential calls/s", ASYNC_STREAM,
     "rpc-async seq add", "calls_per_s", ">= 10"),
    (f"{MEMORY_ITEMS:,}-item stream to a slow consumer: client RSS growth", STREAM_MEMORY, None,
     "client_rss_growth_mib", "< 5 MiB"),
    (f"{MEMORY_ITEMS:,}-item stream to a slow consumer: server RSS growth", STREAM_MEMORY, None,
     "server_rss_growth_mib", "< 5 MiB"),
)


def headlines(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tracked figures that this run measured, median over reps: a same-run ``ratio``, or
    (``versus`` None) the case's own figure as ``value`` in ``unit``, with ``ratio`` None."""
    out: list[dict[str, Any]] = []
    for label, name, base, key, target in HEADLINES:
        entry = {"label": label, "case": name, "versus": base, "figure": key, "target": target}
        if base is None:
            value = case_median(runs, name, key)
            if value is not None:
                out.append({**entry, "ratio": None, "value": round(value, 3),
                            "unit": FIGURE_UNITS.get(key, "s")})
            continue
        value = pair_ratio(runs, name, base, key)
        if value is not None:
            out.append({**entry, "ratio": round(value, 3)})
    return out


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _headline_figure(headline: dict[str, Any]) -> str:
    if headline["ratio"] is None:
        return f"{headline['value']:.2f} {headline['unit']}"
    return f"{headline['ratio']:.2f}×"


def _cpu(row: dict[str, Any]) -> str:
    return " / ".join(_fmt(row[f"cpu_{side}_us"], 0) for side in SIDES)


def markdown(result: dict[str, Any]) -> str:
    """The Markdown report: headline figures, then every case, then the prefetch trade-off."""
    env = result.get("environment", {})
    lines = [
        f"# Benchmarks {result['started']}",
        "",
        f"`{result['command']}` against {result['url']}; {result['reps']} rep(s), "
        f"{'quick' if result['quick'] else 'full'} matrix, {env.get('cpus', '?')} CPUs. "
        + ", ".join(f"{k} {v}" for k, v in env.items() if k != "cpus") + ".",
        "",
        "Ratios are same-run: each figure divided by its baseline measured in the same rep, "
        "median over reps. Absolute figures hold for this machine only.",
        "",
        "## Headline figures",
        "",
        "| figure | value | target |",
        "|---|---|---|",
    ]
    lines += [f"| {h['label']} | **{_headline_figure(h)}** | {h['target'] or ''} |"
              for h in result["headlines"]]
    lines += [
        "",
        "## All cases",
        "",
        "× is calls/s against the baseline named; CPU × is client+server CPU per call against "
        "the baseline's. Noise is the share of the machine other processes used meanwhile.",
        "",
        "| case | × | CPU × | baseline | calls/s | p50 ms | p99 ms | CPU µs/call client / server "
        "/ broker | errors | reps | noise |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["summary"]:
        lines.append(
            f"| {row['name']} | {_fmt(row['ratio'])} | {_fmt(row['cpu_ratio'])} | "
            f"{row['baseline'] or '(itself)'} | {_fmt(row['calls_per_s'], 0)} | "
            f"{_fmt(row['p50_ms'], 3)} | {_fmt(row['p99_ms'], 3)} | {_cpu(row)} | "
            f"{row['errors']} | {row['reps']} | {_fmt(row['noise'])} |"
        )
    prefetch = [row for row in result["summary"] if row["group"] in ("prefetch", "fairness")]
    if prefetch:
        lines += [
            "",
            "## Prefetch trade-off",
            "",
            "Throughput: one server, 100 futures in flight calling `add`. Fairness: two servers "
            "on one queue, one taking 1 ms per call and one 10 ms (sleeping), 10 calls in flight "
            "per unit of server concurrency; the share is the fraction of calls the slow server "
            "ran.",
            "",
            "| server concurrency | prefetch | 100 in flight calls/s | × raw pipelined | "
            "fast+slow calls/s | fast+slow p99 ms | slow server's share |",
            "|---|---|---|---|---|---|---|",
        ]
        cells: dict[tuple[int, int], dict[str, dict[str, Any]]] = {}
        for row in prefetch:
            key = (row["tags"]["server_concurrency"], row["tags"]["prefetch"])
            cells.setdefault(key, {})[row["group"]] = row
        for (concurrency, value), pair in sorted(cells.items()):
            tp, fair = pair.get("prefetch"), pair.get("fairness")
            slow = None
            if fair and fair["share"]:
                slow = next((s for v, s in fair["share"].items() if "10ms" in v), 0.0)
            empty: dict[str, Any] = {"calls_per_s": None, "ratio": None, "p99_ms": None}
            tp, fair = tp or empty, fair or empty
            lines.append(
                f"| {concurrency} | {value} | {_fmt(tp['calls_per_s'], 0)} | "
                f"{_fmt(tp['ratio'])} | {_fmt(fair['calls_per_s'], 0)} | "
                f"{_fmt(fair['p99_ms'], 1)} | {_fmt(slow)} |"
            )
    lines += _streams_table(result["summary"])
    if result.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(f"{k} ({v})" for k, v in result["skipped"].items())]
    return "\n".join(lines) + "\n"


def _streams_table(summary: list[dict[str, Any]]) -> list[str]:
    """The streams section: items/s against sequential calls/s, and the slow consumer's memory."""
    rows = {row["name"]: row for row in summary}
    lines: list[str] = []
    pairs = [(STREAM, "rpc seq add"), (ASYNC_STREAM, "rpc-async seq add")]
    measured = [(rows[name], rows.get(base)) for name, base in pairs if name in rows]
    if measured:
        lines += [
            "",
            "## Streams",
            "",
            "One `proxy.stream.count(n)` per phase (window 100, the default), small items (the "
            "integers): items/s against sequential calls/s of the same proxy kind, same run.",
            "",
            "| case | items/s | compared with | calls/s | × | p50 / p99 ms per item |",
            "|---|---|---|---|---|---|",
        ]
        for row, base in measured:
            lines.append(
                f"| {row['name']} | {_fmt(row['calls_per_s'], 0)} | "
                f"{row['baseline']} | {_fmt(base['calls_per_s'] if base else None, 0)} | "
                f"{_fmt(row['ratio'])} | {_fmt(row['p50_ms'], 3)} / {_fmt(row['p99_ms'], 3)} |")
    memory = rows.get(STREAM_MEMORY)
    if memory:
        lines += [
            "",
            f"Slow consumer: one stream of {MEMORY_ITEMS:,} items, read at {_fmt(memory['calls_per_s'], 0)} "
            "items/s, left early. RSS growth after the phase settled, last sample minus first "
            "(peak above the first), MiB: client "
            f"**{_fmt(memory.get('client_rss_growth_mib'))}** "
            f"({_fmt(memory.get('client_rss_peak_growth_mib'))}), server "
            f"**{_fmt(memory.get('server_rss_growth_mib'))}** "
            f"({_fmt(memory.get('server_rss_peak_growth_mib'))}); the server's worker was free "
            f"{_fmt(memory.get('freed_s'), 3)} s after the stream was left.",
        ]
    return lines


#: Top-level keys of a results file and their types.
RESULT_KEYS: dict[str, type | tuple[type, ...]] = {
    "schema": str, "started": str, "command": str, "url": str, "quick": bool, "reps": int,
    "environment": dict, "skipped": dict, "runs": list, "summary": list, "headlines": list,
    "elapsed_s": (int, float),
}


def result_problems(result: dict[str, Any]) -> list[str]:
    """What is wrong with a results file's shape (empty when it matches the schema)."""
    problems = [f"missing key {k!r}" for k in RESULT_KEYS if k not in result]
    problems += [f"{k!r} is {type(result[k]).__name__}" for k, t in RESULT_KEYS.items()
                 if k in result and not isinstance(result[k], t)]
    if result.get("schema") != RESULT_SCHEMA:
        problems.append(f"schema is not {RESULT_SCHEMA!r}")
    for i, run in enumerate(result.get("runs", [])):
        for key in ("case", "rep", "cpu_s", "error", "ratio", "cpu_ratio"):
            if key not in run:
                problems.append(f"run {i} has no {key!r}")
    for i, row in enumerate(result.get("summary", [])):
        for key in ("name", "ratio", "calls_per_s", "p50_ms", "p99_ms", "cpu_client_server_us"):
            if key not in row:
                problems.append(f"summary row {i} has no {key!r}")
    return problems
