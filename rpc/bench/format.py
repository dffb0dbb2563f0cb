"""Rendering a load report: text for people, JSON and CSV for tools, a PNG plot (matplotlib)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from ..core.histogram import PERCENTILES, percentile_key

FORMATS = ("text", "json", "csv")
_LATENCY_KEYS = ("min", "mean", *(percentile_key(p) for p in PERCENTILES), "max")
_BAR_WIDTH = 40


def render(report: dict[str, Any], fmt: str) -> str:
    """The report in ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "json":
        return json.dumps(report, indent=2) + "\n"
    if fmt == "csv":
        return render_csv(report)
    if fmt == "text":
        return render_text(report)
    raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")


def render_text(report: dict[str, Any]) -> str:
    """A summary a person reads at a glance: parameters, outcome, latency, histogram."""
    params = report["params"]
    lines = ["Parameters:"]
    lines += [f"  {key:<14} {value}" for key, value in params.items() if value is not None]
    env = report.get("environment") or {}
    if env:
        lines.append("  versions       " + ", ".join(f"{k} {v}" for k, v in env.items()))
    lines += [
        "",
        "Summary:",
        f"  count          {report['count']}",
        f"  ok             {report['ok']}",
        f"  errors         {report['errors']}",
        f"  timeouts       {report['timeouts']}",
        f"  elapsed        {report['elapsed_s']:.3f} s",
        f"  calls/s        {report['calls_per_s']:.1f}",
    ]
    if report.get("client_cpu_us_per_call") is not None:
        lines.append(f"  client CPU     {report['client_cpu_us_per_call']:.0f} µs/call")
    for name, count in report["errors_by_type"].items():
        lines.append(f"  error          {name}: {count}")
    if report.get("results"):
        lines.append("")
        lines.append("Results:")
        for value, count in sorted(report["results"].items(), key=lambda kv: -kv[1]):
            lines.append(f"  {count:>10}  {value}")
    latency = report["latency_ms"]
    lines += ["", "Latency (ms, successful calls):"]
    lines += [f"  {key:<6} {latency[key]:>10.3f}" for key in _LATENCY_KEYS]
    histogram = report["histogram"]
    if histogram:
        lines += ["", "Histogram (ms, log buckets):"]
        top = max(row["count"] for row in histogram) or 1
        for row in histogram:
            bar = "■" * round(row["count"] / top * _BAR_WIDTH)
            lines.append(f"  ≤ {row['le_ms']:>10.3f} [{row['count']:>8}] |{bar}")
    return "\n".join(lines) + "\n"


def csv_row(report: dict[str, Any]) -> dict[str, Any]:
    """The report flattened to one row: parameters, outcome and latency percentiles."""
    row: dict[str, Any] = {f"param_{key}": value for key, value in report["params"].items()}
    for key in ("count", "ok", "errors", "timeouts", "elapsed_s", "calls_per_s", "ok_per_s",
                "client_cpu_us_per_call"):
        row[key] = report[key]
    for key, value in report["latency_ms"].items():
        row[f"latency_{key}_ms"] = value
    row["errors_by_type"] = ";".join(f"{k}={v}" for k, v in report["errors_by_type"].items())
    return row


def render_csv(report: dict[str, Any]) -> str:
    """A header line and one data line (see :func:`csv_row`)."""
    row = csv_row(report)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(row), lineterminator="\n")
    writer.writeheader()
    writer.writerow(row)
    return out.getvalue()


def plot(report: dict[str, Any], path: str | Path) -> Path:
    """Write a PNG: the latency distribution on a log axis, and throughput over time."""
    plt = pyplot()
    fig, (ax_lat, ax_tp) = plt.subplots(1, 2, figsize=(11, 4))
    try:
        histogram = report["histogram"]
        if histogram:
            edges = [row["le_ms"] for row in histogram]
            lows = [report["latency_ms"]["min"] or edges[0] / 2, *edges[:-1]]
            widths = [hi - lo for lo, hi in zip(lows, edges, strict=True)]
            ax_lat.bar(lows, [row["count"] for row in histogram], width=widths, align="edge")
            ax_lat.set_xscale("log")
        latency = report["latency_ms"]
        for key, style in (("p50", "--"), ("p99", ":")):
            if latency[key]:
                label = f"{key} {latency[key]:.2f} ms"
                ax_lat.axvline(latency[key], linestyle=style, color="k", label=label)
        ax_lat.set_xlabel("latency (ms, log scale)")
        ax_lat.set_ylabel("calls")
        ax_lat.set_title("Latency distribution")
        if latency["p50"]:
            ax_lat.legend()
        ax_tp.plot(*throughput_series(report))
        ax_tp.set_xlabel("time (s)")
        ax_tp.set_ylabel("calls/s")
        ax_tp.set_title(f"Throughput (mean {report['calls_per_s']:.0f} calls/s)")
        ax_tp.set_ylim(bottom=0)
        params = report["params"]
        fig.suptitle(f"rpc bench {params.get('server_id')} {params.get('method')} "
                     f"({params.get('mode')}, concurrency {params.get('concurrency')})")
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, dpi=100)
    finally:
        plt.close(fig)
    return out


def throughput_series(report: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Throughput over time for the plot: bin midpoints (s) and calls/s in each bin.

    The last bin ends when the run did, part way through it, so its rate would be a cliff to
    near zero that never happened: it is left out (unless it is the only one).
    """
    interval = report["throughput"]["interval_s"]
    counts = list(report["throughput"]["counts"])
    if len(counts) > 1:
        counts.pop()
    return [(i + 0.5) * interval for i in range(len(counts))], [c / interval for c in counts]


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, imported only when a plot is asked for."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("plots need the bench extra: pip install 'amqp-rpc[bench]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
