"""Short real load runs against the test broker: each mode yields a complete, well-formed report.

No test here asserts a speed: the machine is shared and noisy.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("hdrh", reason="the bench extra is not installed")
pytest.importorskip("rich", reason="the bench extra is not installed")

from cli_support import environment, new_server_id, run_rpc  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from rpc import Server  # noqa: E402
from rpc.bench.loadgen import MODES, LoadSpec, bench, run_load  # noqa: E402
from rpc.bench.stats import schema_problems  # noqa: E402
from rpc.cli.exitcodes import ExitCode  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture
def served(broker_url: str, server_id: str) -> Iterator[str]:
    """A server with ``add``, ``echo`` and ``nap`` on the test broker; yields its id."""
    server = Server(broker_url, server_id=server_id, concurrency=4)
    server.register_function(lambda a, b: a + b, "add")
    server.register_function(lambda value: value, "echo")
    server.register_function(lambda seconds: time.sleep(seconds), "nap")
    server.start()
    try:
        yield server_id
    finally:
        server.stop(grace=5)


def assert_complete(report: dict, calls: int) -> None:
    assert schema_problems(report) == []
    assert report["count"] == report["ok"] == calls
    assert report["errors"] == 0
    assert report["latency_ms"]["min"] <= report["latency_ms"]["p50"] <= report["latency_ms"]["max"]
    assert report["calls_per_s"] > 0
    assert sum(report["throughput"]["counts"]) == calls
    assert sum(row["count"] for row in report["histogram"]) == calls


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_makes_exactly_the_calls_asked_for(broker_url: str, served: str,
                                                     mode: str) -> None:
    spec = LoadSpec(served, "add", (1, 2), url=broker_url, mode=mode, concurrency=4, total=200,
                    warmup=10, count_results=True)
    report = run_load(spec)
    assert_complete(report, 200)
    assert report["results"] == {"3": 200}
    assert report["params"]["mode"] == mode
    assert report["environment"]["broker"].startswith("RabbitMQ")


@pytest.mark.parametrize("mode", MODES)
def test_an_open_loop_run_makes_the_calls_its_schedule_allows(broker_url: str, served: str,
                                                              mode: str) -> None:
    # 100 calls/s for 0.5 s: calls are due at 0, 10, ..., 490 ms, so exactly 50 of them.
    spec = LoadSpec(served, "echo", url=broker_url, mode=mode, concurrency=4, rate=100,
                    duration=0.5, payload_size=64)
    assert_complete(run_load(spec), 50)


def test_errors_are_counted_by_type_and_timeouts_apart(broker_url: str, served: str) -> None:
    missing = run_load(LoadSpec(served, "no_such_method", url=broker_url, total=20,
                                concurrency=2))
    assert missing["errors_by_type"] == {"MethodNotFound": 20}
    assert (missing["ok"], missing["timeouts"]) == (0, 0)

    slow = run_load(LoadSpec(served, "nap", (0.5,), url=broker_url, total=4, concurrency=4,
                             timeout=0.1, mode="callbacks"))
    assert slow["errors_by_type"] == {"RPCTimeout": 4}
    assert slow["timeouts"] == 4
    assert schema_problems(slow) == []


def test_client_processes_share_the_load_and_merge_their_figures(broker_url: str,
                                                                 served: str) -> None:
    report = run_load(LoadSpec(served, "add", (2, 3), url=broker_url, total=101, concurrency=4,
                               processes=2, warmup=4))
    assert_complete(report, 101)
    assert report["client_cpu_s"] > 0


def test_the_bench_command_writes_json_csv_and_a_plot(broker_url: str, served: str,
                                                      tmp_path) -> None:
    runner = CliRunner()
    out, png = tmp_path / "report.json", tmp_path / "report.png"
    result = runner.invoke(bench, [served, "add", "1", "2", "--url", broker_url, "-n", "50",
                                   "-c", "5", "--warmup", "5", "--format", "json",
                                   "-o", str(out), "--plot", str(png), "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert_complete(report, 50)
    assert png.read_bytes()[:4] == b"\x89PNG"

    result = runner.invoke(bench, [served, "echo", "--url", broker_url, "-n", "20",
                                   "--payload-size", "16", "--format", "csv", "-q"])
    assert result.exit_code == 0, result.output
    header, row = result.stdout.strip().splitlines()
    assert "calls_per_s" in header.split(",")
    assert row.count(",") == header.count(",")


def test_the_bench_command_prints_a_text_report(broker_url: str, served: str) -> None:
    ok = CliRunner().invoke(bench, [served, "add", "1", "2", "--url", broker_url, "-n", "30",
                                    "--mode", "threads", "-c", "3"])
    assert ok.exit_code == 0, ok.output
    for needle in ("calls/s", "p99.9", "Histogram", "amqp://guest:**@"):
        assert needle in ok.stdout


def test_bench_of_a_failing_method_stops_after_its_first_call_with_exit_1(
        broker_url: str, served: str) -> None:
    failed = run_rpc("bench", served, "nope", "1", "-n", "5", "-q", env=environment(broker_url))
    assert failed.returncode == ExitCode.ERROR
    assert failed.stdout == ""  # no report
    assert failed.stderr.startswith("Error: the first call, nope(1), failed: "
                                    "rpc.MethodNotFound: no method 'nope'")
    assert failed.stderr.rstrip().endswith("(no load was run)")


def test_bench_of_a_server_id_nobody_serves_exits_7_without_a_report(broker_url: str) -> None:
    failed = run_rpc("bench", new_server_id(), "add", "1", "2", "-q",
                     env=environment(broker_url))
    assert failed.returncode == ExitCode.NO_SERVER
    assert failed.stdout == ""
    assert "no server" in failed.stderr and "(no load was run)" in failed.stderr


def test_bench_draws_a_determinate_progress_bar_for_a_duration(broker_url: str,
                                                               served: str) -> None:
    done = run_rpc("bench", served, "add", "1", "2", "-d", "0.5", "--warmup", "0",
                   env=environment(broker_url, COLUMNS="120"))
    assert done.returncode == 0, done.stderr
    assert "100%" in done.stderr  # a bar without a known end shows no percentage


def test_the_wire_benchmark_pair_answers_calls_and_reports_a_returned_request(
        broker_url: str, server_id: str) -> None:
    from benchmarks import wire, workloads

    stop = threading.Event()
    ready = threading.Event()
    thread = threading.Thread(target=wire.serve, args=(
        broker_url, server_id, {"add": workloads.add}, 10, stop, ready.set), daemon=True)
    thread.start()
    assert ready.wait(10)
    caller = wire.Caller(broker_url, server_id)
    try:
        assert [caller.call("add", [n, 1]) for n in range(3)] == [1, 2, 3]
        nowhere = wire.Caller(broker_url, server_id + ".nowhere")
        try:
            with pytest.raises(RuntimeError, match="did not take"):
                nowhere.call("add", [1, 2])
        finally:
            nowhere.close()
    finally:
        caller.close()
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
