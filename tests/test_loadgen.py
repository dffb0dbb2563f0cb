"""The load generator's arithmetic, on synthetic input: no broker, no clock-dependent assertions."""

from __future__ import annotations

import csv
import io
import json

import pytest

pytest.importorskip("hdrh", reason="the bench extra is not installed")

from rpc.bench.format import render  # noqa: E402
from rpc.bench.loadgen import LoadSpec, Plan, call_args, parse_arg  # noqa: E402
from rpc.bench.stats import (  # noqa: E402
    MAX_DISTINCT_RESULTS,
    REPORT_SCHEMA,
    THROUGHPUT_INTERVAL,
    Tally,
    build_report,
    error_name,
    scheduled_time,
    schema_problems,
    split_evenly,
)
from rpc.core.errors import MethodNotFound, RPCTimeout  # noqa: E402
from rpc.core.histogram import LatencyHistogram, log_buckets, percentile_key  # noqa: E402

# -- percentiles ---------------------------------------------------------------------------------


def uniform_histogram(n: int = 1000) -> LatencyHistogram:
    """Latencies of 1, 2, ..., n milliseconds."""
    histogram = LatencyHistogram()
    for ms in range(1, n + 1):
        histogram.record(ms / 1000)
    return histogram


def test_percentiles_of_a_uniform_distribution_are_within_the_histograms_precision() -> None:
    summary = uniform_histogram().summary_ms()
    # HdrHistogram keeps 3 significant digits: values are exact to 0.1 %.
    assert summary["min"] == pytest.approx(1.0, rel=1e-3)
    assert summary["p50"] == pytest.approx(500, rel=1e-3)
    assert summary["p90"] == pytest.approx(900, rel=1e-3)
    assert summary["p99"] == pytest.approx(990, rel=1e-3)
    assert summary["p99.9"] == pytest.approx(999, rel=1e-3)
    assert summary["max"] == pytest.approx(1000, rel=1e-3)
    assert summary["mean"] == pytest.approx(500.5, rel=1e-3)


def test_one_slow_outlier_moves_the_max_but_not_the_median() -> None:
    histogram = LatencyHistogram()
    for _ in range(999):
        histogram.record(0.001)
    histogram.record(2.0)
    summary = histogram.summary_ms()
    assert summary["p50"] == pytest.approx(1.0, rel=1e-3)
    assert summary["p99"] == pytest.approx(1.0, rel=1e-3)
    assert summary["max"] == pytest.approx(2000, rel=1e-3)


def test_an_empty_histogram_reports_zeros() -> None:
    summary = LatencyHistogram().summary_ms()
    assert set(summary.values()) == {0.0}
    assert {"min", "mean", "p50", "p90", "p95", "p99", "p99.9", "max"} <= set(summary)


def test_histograms_merge_losslessly_through_their_encoding() -> None:
    low, high = LatencyHistogram(), LatencyHistogram()
    for ms in range(1, 501):
        low.record(ms / 1000)
    for ms in range(501, 1001):
        high.record(ms / 1000)
    merged = LatencyHistogram(low.encode())
    merged.merge(LatencyHistogram(high.encode()))
    assert merged.count == 1000
    assert merged.summary_ms() == uniform_histogram().summary_ms()


def test_latencies_out_of_range_are_clamped_not_lost() -> None:
    histogram = LatencyHistogram()
    histogram.record(0.0)
    histogram.record(-1.0)  # a clock step backwards must not crash a long run
    assert histogram.count == 2
    assert histogram.summary_ms()["min"] == pytest.approx(0.001)


def test_percentile_keys_read_as_people_write_them() -> None:
    assert [percentile_key(p) for p in (50.0, 99.0, 99.9)] == ["p50", "p99", "p99.9"]


def test_log_buckets_keep_every_sample_and_end_at_the_maximum() -> None:
    recorded = uniform_histogram().recorded()
    buckets = log_buckets(recorded, 10)
    assert len(buckets) == 10
    assert sum(count for _, count in buckets) == 1000
    edges = [edge for edge, _ in buckets]
    assert edges == sorted(edges)
    assert edges[-1] == recorded[-1][0]
    # Log-spaced: the top bucket (a factor of ~2 wide) holds far more than the bottom one.
    assert buckets[-1][1] > buckets[0][1]


def test_log_buckets_of_identical_values_are_one_bucket() -> None:
    assert log_buckets([(1.5, 7)]) == [(1.5, 7)]
    assert log_buckets([]) == []


# -- rate scheduling -----------------------------------------------------------------------------


def test_an_open_loop_schedule_spaces_calls_evenly_from_the_start() -> None:
    assert [scheduled_time(10.0, 4.0, n) for n in range(5)] == [10.0, 10.25, 10.5, 10.75, 11.0]
    with pytest.raises(ValueError):
        scheduled_time(0.0, 0.0, 1)


def test_a_plan_hands_out_due_times_until_its_count_is_reached() -> None:
    plan = Plan(total=3, stop=1e9, rate=100.0, start=50.0)
    assert [plan.take() for _ in range(4)] == [50.0, 50.01, 50.02, None]


def test_a_plan_stops_at_its_time_limit_however_many_calls_remain() -> None:
    plan = Plan(total=None, stop=50.05, rate=100.0, start=50.0)
    due = []
    while (t := plan.take()) is not None:
        due.append(t)
    assert due == pytest.approx([50.0, 50.01, 50.02, 50.03, 50.04])


def test_processes_interleave_one_shared_schedule() -> None:
    # Two client processes at 10 calls/s in all: each sends every other slot.
    first = Plan(total=3, stop=1e9, rate=10.0, start=0.0, offset=0, stride=2)
    second = Plan(total=3, stop=1e9, rate=10.0, start=0.0, offset=1, stride=2)
    assert [first.take() for _ in range(3)] == pytest.approx([0.0, 0.2, 0.4])
    assert [second.take() for _ in range(3)] == pytest.approx([0.1, 0.3, 0.5])


def test_a_closed_loop_plan_says_now_until_the_count_is_reached() -> None:
    plan = Plan(total=2, stop=1e18, rate=None, start=0.0)
    assert [plan.take() for _ in range(3)] == [0.0, 0.0, None]


def test_work_splits_evenly_between_processes() -> None:
    assert split_evenly(10, 3) == [4, 3, 3]
    assert split_evenly(2, 4) == [1, 1, 0, 0]
    assert sum(split_evenly(1001, 7)) == 1001


# -- error counting ------------------------------------------------------------------------------


def test_a_tally_counts_successes_and_errors_by_type() -> None:
    tally = Tally(start=0.0)
    tally.record_ok(0.0, 0.002)
    tally.record_ok(0.1, 0.101)
    tally.record_error(error_name(RPCTimeout("late")), 0.2, 0.3)
    tally.record_error(error_name(RPCTimeout("late")), 0.2, 0.3)
    tally.record_error(error_name(MethodNotFound("nope")), 0.25, 0.26)
    assert tally.ok == 2
    assert tally.errors == {"RPCTimeout": 2, "MethodNotFound": 1}
    assert tally.completed == 5
    assert tally.latency.count == 2  # latency is of successful calls only


def test_a_tally_bins_completions_over_time() -> None:
    tally = Tally(start=100.0)
    for done in (100.01, 100.05, 100.15, 100.35):
        tally.record_ok(done - 0.001, done)
    assert THROUGHPUT_INTERVAL == 0.1
    assert tally.throughput == [2, 1, 0, 1]


def test_a_tally_counts_distinct_results_up_to_a_limit() -> None:
    tally = Tally(start=0.0, count_results=True)
    for value in range(MAX_DISTINCT_RESULTS + 10):
        tally.record_ok(0.0, 0.001, value)
    tally.record_ok(0.0, 0.001, 0)
    assert tally.results is not None
    assert tally.results["0"] == 2
    assert tally.results["other"] == 10
    assert len(tally.results) == MAX_DISTINCT_RESULTS + 1


def test_tallies_from_several_processes_merge() -> None:
    first, second = Tally(start=5.0), Tally(start=7.0)
    first.record_ok(5.0, 5.05)
    first.record_error("RPCTimeout", 5.0, 5.25)
    second.record_ok(7.0, 7.15)
    merged = Tally(start=0.0)
    merged.merge(first.snapshot())
    merged.merge(second.snapshot())
    assert (merged.ok, merged.errors, merged.completed) == (2, {"RPCTimeout": 1}, 3)
    assert merged.throughput == [1, 1, 1]
    assert merged.first_sent == 0.0
    assert merged.last_done == pytest.approx(0.25)


# -- the report ----------------------------------------------------------------------------------


def sample_report() -> dict:
    tally = Tally(start=0.0)
    for i in range(100):
        tally.record_ok(i / 100, i / 100 + 0.002)
    tally.record_error("RPCTimeout", 0.5, 1.5)
    return build_report({"server_id": "calc", "method": "add", "mode": "futures",
                         "concurrency": 4}, tally, client_cpu_s=0.0101)


def test_a_report_has_every_figure_and_matches_its_schema() -> None:
    report = sample_report()
    assert schema_problems(report) == []
    assert report["schema"] == REPORT_SCHEMA
    assert (report["count"], report["ok"], report["errors"], report["timeouts"]) == (101, 100, 1, 1)
    assert report["errors_by_type"] == {"RPCTimeout": 1}
    assert report["elapsed_s"] == pytest.approx(1.5)  # first send to last completion
    assert report["calls_per_s"] == pytest.approx(101 / 1.5, rel=1e-3)
    assert report["latency_ms"]["p50"] == pytest.approx(2.0, rel=1e-3)
    assert report["client_cpu_us_per_call"] == pytest.approx(100.0)
    assert sum(row["count"] for row in report["histogram"]) == 100


def test_schema_problems_name_what_is_missing_or_inconsistent() -> None:
    report = sample_report()
    del report["timeouts"]
    report["ok"] = 5
    problems = schema_problems(report)
    assert "missing key 'timeouts'" in problems
    assert "count is not ok + errors" in problems


def test_an_empty_run_still_reports() -> None:
    report = build_report({}, Tally(start=0.0))
    assert schema_problems(report) == []
    assert report["calls_per_s"] == 0.0


def test_reports_render_as_text_json_and_csv() -> None:
    report = sample_report()
    text = render(report, "text")
    for needle in ("calls/s", "p99.9", "RPCTimeout: 1", "Histogram", "■"):
        assert needle in text
    assert json.loads(render(report, "json")) == report
    rows = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    assert len(rows) == 1
    assert rows[0]["count"] == "101"
    assert rows[0]["errors_by_type"] == "RPCTimeout=1"
    with pytest.raises(ValueError):
        render(report, "xml")


def test_a_plot_is_a_png(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from rpc.bench.format import plot

    path = plot(sample_report(), tmp_path / "run.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- parameters ----------------------------------------------------------------------------------


def test_a_spec_without_bounds_gets_a_call_count() -> None:
    assert LoadSpec("calc", "add").check().total == 1000
    assert LoadSpec("calc", "add", duration=5).check().total is None


@pytest.mark.parametrize("change", [
    {"mode": "bursts"}, {"concurrency": 0}, {"processes": 3, "concurrency": 2},
    {"rate": 0}, {"timeout": -1}, {"total": -5},
])
def test_impossible_specs_are_refused(change: dict) -> None:
    with pytest.raises(ValueError):
        LoadSpec("calc", "add", **change).check()


def test_the_params_of_a_report_never_show_the_password() -> None:
    params = LoadSpec("calc", "add", url="amqp://bob:s3cret@broker:5672//").params()
    assert "s3cret" not in json.dumps(params)
    assert params["url"] == "amqp://bob:**@broker:5672//"


def test_the_payload_is_bytes_except_under_json() -> None:
    assert call_args(LoadSpec("calc", "echo", payload_size=4)) == (b"xxxx",)
    assert call_args(LoadSpec("calc", "echo", args=(1,), payload_size=2, serializer="json")) == (
        1, "xx")
    assert call_args(LoadSpec("calc", "add", args=(1, 2))) == (1, 2)


def test_command_line_arguments_are_json_literals_or_strings() -> None:
    assert [parse_arg(a) for a in ("1", "2.5", "[1, 2]", '"7"', "hello", "null")] == [
        1, 2.5, [1, 2], "7", "hello", None]


# -- progress and the throughput plot --------------------------------------------------------------

def test_progress_follows_the_call_count_when_only_a_total_is_given() -> None:
    from rpc.bench.loadgen import progress_fraction

    spec = LoadSpec("calc", "add", total=200).check()
    assert progress_fraction(spec, 50, elapsed=100.0) == 0.25


def test_progress_follows_the_clock_when_only_a_duration_is_given() -> None:
    from rpc.bench.loadgen import progress_fraction

    spec = LoadSpec("calc", "add", duration=10).check()
    assert progress_fraction(spec, 123456, elapsed=2.5) == 0.25


def test_progress_with_a_total_and_a_duration_follows_whichever_ends_the_run_first() -> None:
    from rpc.bench.loadgen import progress_fraction

    spec = LoadSpec("calc", "add", total=1000, duration=10).check()
    assert progress_fraction(spec, 100, elapsed=5.0) == 0.5
    assert progress_fraction(spec, 900, elapsed=5.0) == 0.9
    assert progress_fraction(spec, 2000, elapsed=50.0) == 1.0


def test_the_throughput_plot_leaves_out_the_last_partial_bin() -> None:
    from rpc.bench.format import throughput_series

    report = {"throughput": {"interval_s": 0.1, "counts": [100, 100, 100, 7]}}
    times, rates = throughput_series(report)
    assert rates == pytest.approx([1000.0, 1000.0, 1000.0])
    assert times == pytest.approx([0.05, 0.15, 0.25])


def test_the_throughput_plot_of_a_one_bin_run_keeps_that_bin() -> None:
    from rpc.bench.format import throughput_series

    assert throughput_series({"throughput": {"interval_s": 0.1, "counts": [5]}})[1] == \
        pytest.approx([50.0])
