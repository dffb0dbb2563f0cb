"""PNG plots of a benchmark result (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rpc.bench.format import pyplot

#: Colours by who made the figure.
COLOURS = {"rpc": "tab:blue", "rpc-async": "tab:cyan", "pika": "tab:gray", "nameko": "tab:red",
           "aiopika": "tab:orange"}


def _colour(name: str) -> str:
    return COLOURS.get(name.split()[0], "tab:green")


def write_plots(result: dict[str, Any], stem: Path) -> list[Path]:
    """Write ``<stem>-headlines.png``, ``-ratios.png``, ``-latency.png`` and ``-cpu.png``."""
    return [_headlines(result, Path(f"{stem}-headlines.png")),
            _ratios(result, Path(f"{stem}-ratios.png")),
            _latency(result, Path(f"{stem}-latency.png")),
            _cpu(result, Path(f"{stem}-cpu.png"))]


#: Bars of the headlines plot end here (their label gives the figure, marked ▸): the streams'
#: items/s ratio (target 10×, often more) would squash every other bar.
HEADLINE_CLIP = 10.0


def _bars(result: dict[str, Any], path: Path, labels: list[str], values: list[float],
          colours: list[str], title: str, xlabel: str, clip: float | None = None) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 0.34 * len(labels) + 1.4))
    try:
        drawn = [min(value, clip) if clip else value for value in values]
        ax.barh(labels, drawn, color=colours)
        ax.axvline(1.0, color="k", linewidth=1)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
        ax.tick_params(axis="y", labelsize=8)
        for i, (value, bar) in enumerate(zip(values, drawn, strict=True)):
            ax.text(bar, i, f" {value:.2f}×" + (" ▸" if bar < value else ""), va="center",
                    fontsize=8)
        ax.set_xlim(0, max(drawn, default=1) * 1.15)
        ax.set_title(f"{title}\n{result['command']}, {result['started'][:10]}", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def _headlines(result: dict[str, Any], path: Path) -> Path:
    """The tracked same-run ratios (the README plot): above 1 is better, except for CPU. The
    figures in seconds or MiB are left to the table: they are not on this scale."""
    rows = [h for h in result["headlines"] if h["ratio"] is not None]
    return _bars(result, path, [h["label"] for h in rows], [h["ratio"] for h in rows],
                 ["tab:purple" if h["figure"] == "client_server" else _colour(h["case"])
                  for h in rows],
                 "rpc against raw pika and its peers, same-run ratios (CPU: lower is better)",
                 "ratio (×)", clip=HEADLINE_CLIP)


def _ratios(result: dict[str, Any], path: Path) -> Path:
    """calls/s of every case against its same-run baseline (prefetch cases and streams have
    their tables)."""
    rows = [r for r in result["summary"] if r["ratio"] is not None and r["baseline"]
            and r["group"] not in ("prefetch", "fairness", "streams")]
    return _bars(result, path, [r["name"] for r in rows], [r["ratio"] for r in rows],
                 [_colour(r["name"]) for r in rows],
                 "calls/s ÷ same-run baseline (pika sequential, or pika with 100 in flight)",
                 "ratio (×)")


def _latency(result: dict[str, Any], path: Path) -> Path:
    """Latency percentiles of the sequential `add` cases (one call in flight), log scale."""
    plt = pyplot()
    keys = ("p50", "p90", "p99", "p99.9")
    runs = [r for r in result["runs"] if r.get("report") and r["rep"] == 0
            and r["case"]["mode"] == "seq" and r["case"]["method"] == "add"]
    fig, ax = plt.subplots(figsize=(8, 4))
    try:
        for run in runs:
            latency = run["report"]["latency_ms"]
            ax.plot(keys, [latency[k] for k in keys], marker="o", label=run["case"]["name"],
                    color=_colour(run["case"]["name"]),
                    linestyle="-" if run["case"]["serializer"] == "msgpack" else "--")
        ax.set_yscale("log")
        ax.set_ylabel("latency (ms, log scale)")
        ax.set_title("Sequential add: latency percentiles (rep 0)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def _cpu(result: dict[str, Any], path: Path) -> Path:
    """CPU µs per call of client, server and broker for the `add` cases, stacked."""
    plt = pyplot()
    rows = [r for r in result["summary"] if r["cpu_client_us"] is not None
            and r["group"] in ("baseline", "latency", "concurrency", "asyncio", "peers",
                               "serializer")
            and "echo" not in r["name"]]
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(rows) + 1.6))
    try:
        left = [0.0] * len(rows)
        for side, colour in (("client", "tab:blue"), ("server", "tab:green"),
                             ("broker", "tab:gray")):
            values = [r[f"cpu_{side}_us"] or 0.0 for r in rows]
            ax.barh([r["name"] for r in rows], values, left=left, color=colour, label=side)
            left = [a + b for a, b in zip(left, values, strict=True)]
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)
        ax.set_xlabel("CPU µs per call")
        ax.set_title("Where the CPU goes, per call")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path
