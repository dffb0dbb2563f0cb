"""The benchmark suite's pure parts: its matrix, same-run ratios, medians and result schema."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("psutil", reason="the bench extra is not installed")

from benchmarks.amqp_url import pika_url  # noqa: E402
from benchmarks.analysis import (  # noqa: E402
    RESULT_SCHEMA,
    add_ratios,
    cpu_per_call,
    headlines,
    markdown,
    pair_ratio,
    result_problems,
    summarize,
)
from benchmarks.clients import (  # noqa: E402
    rss_growth,
    slow_stream_phase,
    stream_phase,
)
from benchmarks.matrix import (  # noqa: E402
    ASYNC_HANDLER,
    ASYNC_STREAM,
    BASE_PIPE,
    BASE_SEQ,
    MEMORY_ITEMS,
    STREAM,
    STREAM_MEMORY,
    WIRE_SEQ,
    build_matrix,
)
from rpc.bench.stats import Tally  # noqa: E402


def fake_run(name: str, rep: int, calls_per_s: float, *, baseline: str | None = BASE_SEQ,
             cpu: tuple[float, float, float] = (0.1, 0.1, 0.1), calls: int = 1000,
             group: str = "latency") -> dict:
    """A run record as the runner writes it, with made-up figures."""
    return {
        "case": {"name": name, "group": group, "baseline": baseline, "tags": {}},
        "rep": rep,
        "report": {"calls_per_s": calls_per_s, "count": calls, "errors": 0,
                   "elapsed_s": calls / calls_per_s if calls_per_s else 0.0,
                   "latency_ms": {"p50": 1.0, "p99": 2.0}, "results": None},
        "cpu_s": dict(zip(("client", "server", "broker"), cpu, strict=True)),
        "error": None,
        "other_share": 0.0,
    }


def test_cpu_per_call_is_microseconds_per_side_and_summed() -> None:
    per_call = cpu_per_call({"client": 0.2, "server": 0.3, "broker": None}, 1000)
    assert per_call["client"] == pytest.approx(200)
    assert per_call["client_server"] == pytest.approx(500)
    assert per_call["broker"] is None and per_call["total"] is None


def test_ratios_are_taken_against_the_baseline_of_the_same_rep() -> None:
    runs = [
        fake_run(BASE_SEQ, 0, 1000, baseline=None), fake_run("rpc seq add", 0, 1500),
        fake_run(BASE_SEQ, 1, 500, baseline=None), fake_run("rpc seq add", 1, 1000),
    ]
    add_ratios(runs)
    assert [run["ratio"] for run in runs] == [1.0, 1.5, 1.0, 2.0]
    # The machine was twice as slow in rep 1; the ratio, not the raw figure, is what compares.
    [base, ours] = summarize(runs)
    assert ours["ratio"] == pytest.approx(1.75)
    assert ours["calls_per_s"] == pytest.approx(1250)
    assert base["ratio"] == 1.0
    assert pair_ratio(runs, "rpc seq add", BASE_SEQ) == pytest.approx(1.75)


def test_cpu_ratio_compares_client_plus_server_cost_per_call() -> None:
    runs = [fake_run(BASE_SEQ, 0, 1000, baseline=None, cpu=(0.4, 0.4, 0.3)),
            fake_run("rpc seq add", 0, 1000, cpu=(0.1, 0.1, 0.3))]
    add_ratios(runs)
    assert runs[1]["cpu_ratio"] == pytest.approx(0.25)


def test_a_failed_run_has_no_ratio_and_does_not_break_the_summary() -> None:
    failed = fake_run("rpc seq add", 0, 0)
    failed.update(report=None, cpu_s=None, error="RuntimeError: server died")
    runs = [fake_run(BASE_SEQ, 0, 1000, baseline=None), failed]
    add_ratios(runs)
    assert failed["ratio"] is None
    row = summarize(runs)[1]
    assert row["reps"] == 0 and row["failed"] == ["RuntimeError: server died"]


def test_a_rep_whose_calls_failed_gives_no_figure_but_its_errors_are_counted() -> None:
    # Calls failing at once look fast: that rep must not make a ratio or a headline.
    failing = fake_run("rpc-async seq add", 1, 90000, calls=20000, group="asyncio")
    failing["report"].update(errors=20000, errors_by_type={"TypeError": 20000})
    runs = [fake_run(BASE_SEQ, 0, 1000, baseline=None), fake_run("rpc seq add", 0, 1000),
            fake_run("rpc-async seq add", 0, 900, group="asyncio"),
            fake_run(BASE_SEQ, 1, 1000, baseline=None), fake_run("rpc seq add", 1, 1000),
            failing]
    add_ratios(runs)
    assert failing["ratio"] is None
    row = next(row for row in summarize(runs) if row["name"] == "rpc-async seq add")
    assert (row["reps"], row["ratio"], row["errors"]) == (1, 0.9, 20000)
    assert row["failed"] == ["20000 of 20000 calls failed (TypeError 20000)"]
    assert pair_ratio(runs, "rpc-async seq add", "rpc seq add") == pytest.approx(0.9)


def test_headlines_cover_the_tracked_figures_measured() -> None:
    runs = [fake_run(BASE_SEQ, 0, 1000, baseline=None), fake_run("rpc seq add", 0, 1200),
            fake_run("nameko seq add", 0, 300)]
    add_ratios(runs)
    found = {h["label"]: h["ratio"] for h in headlines(runs)}
    assert found["sequential calls/s vs raw pika sequential"] == pytest.approx(1.2)
    assert found["sequential calls/s vs nameko sequential"] == pytest.approx(4.0)
    assert not any("aio-pika" in label for label in found)


def test_asyncproxy_headlines_compare_with_the_sync_proxy_raw_pika_and_aio_pika() -> None:
    runs = [fake_run(BASE_SEQ, 0, 1000, baseline=None),
            fake_run(BASE_PIPE, 0, 2000, baseline=None),
            fake_run("rpc seq add", 0, 1600),
            fake_run("rpc-async seq add", 0, 1520, group="asyncio"),
            fake_run("rpc-async 100 in flight add", 0, 2800, baseline=BASE_PIPE, group="asyncio"),
            fake_run("aiopika seq add", 0, 500, group="peers"),
            fake_run("aiopika 100 in flight add", 0, 700, baseline=BASE_PIPE, group="peers")]
    add_ratios(runs)
    found = {h["label"]: (h["ratio"], h["target"]) for h in headlines(runs)}
    assert found["AsyncProxy sequential calls/s vs sync Proxy sequential"] == (0.95, ">= 0.95")
    assert found["AsyncProxy 100 in flight calls/s vs raw pika pipelined"] == (1.4, ">= 1.3")
    assert found["AsyncProxy sequential vs aio-pika RPC sequential"] == (3.04, ">= 3.0")
    assert found["AsyncProxy 100 in flight vs aio-pika 100 in flight"] == (4.0, ">= 3.0")
    assert found["sequential calls/s vs raw pika sequential"] == (1.6, ">= 1.5")
    assert found["client+server CPU per call, sequential, vs raw pika"][1] == "<= 0.4"


def test_the_async_handler_headline_is_the_batchs_wall_time_not_a_ratio() -> None:
    # 100 calls in 0.2 s, then 0.4 s in a second rep: the median is 0.3 s.
    runs = [fake_run(ASYNC_HANDLER, rep, calls_per_s, baseline=None, calls=100,
                     group="async handlers") for rep, calls_per_s in ((0, 500), (1, 250))]
    result = result_of(runs)
    [headline] = result["headlines"]
    assert headline["case"] == ASYNC_HANDLER and headline["versus"] is None
    assert headline["ratio"] is None
    assert (headline["value"], headline["unit"], headline["target"]) == (0.3, "s", "< 0.5 s")
    assert f"| {headline['label']} | **0.30 s** | < 0.5 s |" in markdown(result)


def result_of(runs: list[dict]) -> dict:
    add_ratios(runs)
    return {"schema": RESULT_SCHEMA, "started": "2026-01-01T00:00:00+00:00",
            "command": "python -m benchmarks --quick", "url": "amqp://guest:**@127.0.0.1//",
            "quick": True, "reps": 1, "environment": {"python": "3.11"}, "skipped": {},
            "runs": runs, "summary": summarize(runs), "headlines": headlines(runs),
            "elapsed_s": 1.0}


def test_a_result_matches_its_schema_and_renders_as_markdown() -> None:
    result = result_of([fake_run(BASE_SEQ, 0, 1000, baseline=None),
                        fake_run("rpc seq add", 0, 1500)])
    assert result_problems(result) == []
    table = markdown(result)
    assert "| sequential calls/s vs raw pika sequential | **1.50×** | >= 1.5 |" in table
    assert "| rpc seq add | 1.50 |" in table
    del result["runs"][0]["rep"]
    assert result_problems(result) == ["run 0 has no 'rep'"]


def test_the_prefetch_table_pairs_throughput_with_fairness() -> None:
    tags = {"prefetch": 8, "server_concurrency": 1}
    fair = fake_run("fair 8", 0, 200, baseline=None, group="fairness")
    fair["case"]["tags"] = tags
    fair["report"]["results"] = {"'1ms'": 50, "'10ms'": 50}
    tput = fake_run("tput 8", 0, 9000, baseline=None, group="prefetch")
    tput["case"]["tags"] = tags
    table = markdown(result_of([tput, fair]))
    assert "| 1 | 8 | 9000 | 1.00 | 200 | 2.0 | 0.50 |" in table


def test_the_quick_matrix_is_a_subset_of_the_full_one() -> None:
    quick = {case.name for case in build_matrix(True)}
    full = {case.name for case in build_matrix(False)}
    assert quick < full
    assert len(quick) <= 33
    # Cases whose phase has a fixed length (whatever --seconds) keep the quick run short.
    assert sum(case.seconds or 0 for case in build_matrix(True)) <= 10


def test_every_baseline_a_case_names_is_measured_in_the_same_matrix() -> None:
    for quick in (True, False):
        cases = build_matrix(quick, frozenset({"nameko", "aiopika"}))
        names = {case.name for case in cases}
        assert {BASE_SEQ, BASE_PIPE} <= names
        assert all(case.baseline in names for case in cases if case.baseline)
        assert len(names) == len(cases)


def test_both_matrices_measure_asyncproxy_on_the_usual_server_against_the_baselines() -> None:
    for quick in (True, False):
        cases = {case.name: case for case in build_matrix(quick)}
        seq, window = cases["rpc-async seq add"], cases["rpc-async 100 in flight add"]
        assert seq.server == window.server == cases["rpc seq add"].server
        assert (seq.client, seq.mode, seq.baseline) == ("rpc-async", "seq", BASE_SEQ)
        assert (window.mode, window.concurrency, window.baseline) == ("pipe", 100, BASE_PIPE)


def test_the_async_handler_case_is_one_batch_of_100_calls_on_a_default_server() -> None:
    for quick in (True, False):
        case = next(case for case in build_matrix(quick) if case.name == ASYNC_HANDLER)
        assert (case.client, case.method, case.args) == ("rpc-async", "sleep_async", (0.1,))
        # no --concurrency: the server's defaults, with the async def workloads registered
        assert case.server.argv(0) == ["--async-handlers"]
        spec = case.client_spec("amqp://", "q", seconds=1.0, total=20_000, warmup=200)
        assert spec["total"] == spec["warmup"] == spec["concurrency"] == 100
    # no other server registers it: an async def handler raises an rpc server's default prefetch
    assert not any(c.server.async_handlers for c in build_matrix(True) if c.name != ASYNC_HANDLER)


def test_peers_are_measured_only_when_installed() -> None:
    assert not any(case.client == "nameko" for case in build_matrix(True))
    with_peer = build_matrix(True, frozenset({"nameko"}))
    assert {case.name for case in with_peer if case.client == "nameko"} == {
        "nameko seq add", "nameko 100 in flight add"}


def test_pika_reads_the_default_vhost_from_kombus_double_slash() -> None:
    assert pika_url("amqp://guest:guest@127.0.0.1:5672//") == "amqp://guest:guest@127.0.0.1:5672/%2F"
    assert pika_url("amqp://u:p@host:5672/prod") == "amqp://u:p@host:5672/prod"


def test_the_cluster_benchmark_compares_each_side_with_one_node_in_the_same_mode_and_rep() -> None:
    from benchmarks.cluster import BASELINE, compare

    def run(side: str, mode: str, rep: int, calls_per_s: float, cpu: tuple[float, ...]) -> dict:
        return {"side": side, "mode": mode, "rep": rep,
                "report": {"count": 1000, "errors": 0, "calls_per_s": calls_per_s,
                           "latency_ms": {"p50": 1.0}},
                "cpu_s": dict(zip(("client", "server", "broker"), cpu, strict=True))}

    rows = compare([run(BASELINE, "seq", 0, 2000, (0.1, 0.1, 0.2)),
                    run(BASELINE, "100 in flight", 0, 8000, (0.1, 0.1, 0.1)),
                    run("3 nodes, quorum", "seq", 0, 1000, (0.1, 0.1, 0.6))])
    quorum = next(row for row in rows if row["side"] == "3 nodes, quorum")
    assert quorum["ratio"] == pytest.approx(0.5)
    assert quorum["cpu_us_broker"] == pytest.approx(600)
    assert quorum["cpu_ratio_broker"] == pytest.approx(3.0)
    assert quorum["cpu_ratio_client_server"] == pytest.approx(1.0)
    assert quorum["cpu_ratio_total"] == pytest.approx(2.0)


def test_stream_cases_compare_items_per_second_with_sequential_calls_of_the_same_proxy() -> None:
    for quick in (True, False):
        cases = {case.name: case for case in build_matrix(quick)}
        sync, aio = cases[STREAM], cases[ASYNC_STREAM]
        assert (sync.client, aio.client) == ("rpc", "rpc-async")
        for case, base in ((sync, "rpc seq add"), (aio, "rpc-async seq add")):
            assert (case.method, case.args, case.mode, case.baseline) == (
                "count", (), "stream", base)
            assert case.server == cases[base].server  # the same server process, reused
            spec = case.client_spec("amqp://", "q", seconds=1.0, total=20_000, warmup=200)
            # one stream of 10x the call cap, bounded by the phase's seconds too
            assert (spec["total"], spec["warmup"], spec["seconds"]) == (200_000, 2000, 1.0)


def test_the_memory_case_is_a_long_stream_to_a_slow_consumer_for_a_fixed_time() -> None:
    for quick, seconds in ((True, 10.0), (False, 20.0)):
        case = next(c for c in build_matrix(quick) if c.name == STREAM_MEMORY)
        assert (case.client, case.method, case.args, case.mode) == (
            "rpc", "count", (MEMORY_ITEMS,), "slow-stream")
        assert case.baseline is None and MEMORY_ITEMS == 1_000_000
        spec = case.client_spec("amqp://", "q", seconds=1.0, total=20_000, warmup=200)
        assert spec["seconds"] == case.phase_seconds(1.0) == seconds
        assert spec["options"]["sleep_s"] > 0 and spec["options"]["settle_s"] < seconds
    # --only "rpc stream count" picks the throughput case alone
    assert [c.name for c in build_matrix(True) if "rpc stream count" in c.name] == [STREAM]


def memory_run(rep: int, client: float | None, server: float | None) -> dict:
    run = fake_run(STREAM_MEMORY, rep, 8000, baseline=None, calls=80_000, group="streams")
    run["report"].update(client_rss_growth_mib=client, server_rss_growth_mib=server,
                         client_rss_peak_growth_mib=None if client is None else client + 0.5,
                         server_rss_peak_growth_mib=None if server is None else server + 0.5,
                         freed_s=0.01)
    return run


def test_stream_headlines_are_items_per_second_ratios_and_memory_growth_in_mib() -> None:
    runs = [fake_run(BASE_SEQ, 0, 1000, baseline=None),
            fake_run("rpc seq add", 0, 2000),
            fake_run("rpc-async seq add", 0, 2500, group="asyncio"),
            fake_run(STREAM, 0, 30_000, baseline="rpc seq add", calls=30_000, group="streams"),
            fake_run(ASYNC_STREAM, 0, 20_000, baseline="rpc-async seq add", calls=20_000,
                     group="streams"),
            memory_run(0, 0.25, 1.5), memory_run(1, 0.75, -0.5), memory_run(2, 0.5, 0.0)]
    result = result_of(runs)
    found = {h["label"]: h for h in result["headlines"]}
    items = found["streamed items/s vs sequential calls/s"]
    assert (items["ratio"], items["target"]) == (15.0, ">= 10")
    assert found["AsyncProxy streamed items/s vs AsyncProxy sequential calls/s"]["ratio"] == 8.0
    client = found["1,000,000-item stream to a slow consumer: client RSS growth"]
    server = found["1,000,000-item stream to a slow consumer: server RSS growth"]
    assert (client["ratio"], client["value"], client["unit"], client["target"]) == (
        None, 0.5, "MiB", "< 5 MiB")
    assert (server["value"], server["versus"]) == (0.0, None)  # median of 1.5, -0.5, 0.0
    table = markdown(result)
    assert f"| {client['label']} | **0.50 MiB** | < 5 MiB |" in table
    assert "| streamed items/s vs sequential calls/s | **15.00×** | >= 10 |" in table
    assert "| rpc stream count | 30000 | rpc seq add | 2000 | 15.00 |" in table
    assert "client **0.50** (1.00), server **0.00** (0.50)" in table
    row = next(row for row in result["summary"] if row["name"] == STREAM_MEMORY)
    assert row["server_rss_peak_growth_mib"] == 0.5 and row["freed_s"] == 0.01
    assert result_problems(result) == []


def test_no_memory_headline_without_two_samples() -> None:
    assert rss_growth([[2.0, 50.0, 60.0]])["client_rss_growth_mib"] is None
    result = result_of([memory_run(0, None, None)])
    assert result["headlines"] == []


class FakeStream:
    """An iterator of ``n`` items, one every ``gap`` seconds, that records its close()."""

    def __init__(self, n: int, gap: float = 0.0, fail_at: int | None = None) -> None:
        self.n, self.gap, self.fail_at = n, gap, fail_at
        self.given = 0
        self.closed = False

    def __iter__(self) -> FakeStream:
        return self

    def __next__(self) -> int:
        if self.given == self.fail_at:
            raise TimeoutError("no item")
        if self.given >= self.n:
            raise StopIteration
        time.sleep(self.gap)
        self.given += 1
        return self.given - 1

    def close(self) -> None:
        self.closed = True


def test_a_stream_phase_stops_at_its_end_or_its_time_and_closes_the_stream() -> None:
    tally = Tally(time.perf_counter())
    ended = FakeStream(50)
    assert stream_phase(ended, time.perf_counter() + 30, tally) == 50 and ended.closed
    endless = FakeStream(10**9, gap=0.001)
    started = time.perf_counter()
    received = stream_phase(endless, started + 0.1, tally)
    assert time.perf_counter() - started < 5 and endless.closed and received == endless.given
    assert tally.ok == 50 + received and tally.error_count == 0
    failing = FakeStream(10, fail_at=3)
    assert stream_phase(failing, time.perf_counter() + 30, tally) == 3 and failing.closed
    assert tally.errors == {"TimeoutError": 1}


def test_a_slow_consumer_samples_memory_after_it_settles_and_closes_the_stream() -> None:
    pace = {"batch": 5, "sleep_s": 0.002, "settle_s": 0.1, "sample_every_s": 0.05}
    stream = FakeStream(10**9)
    sizes = iter(range(1000))
    start = time.perf_counter()
    samples = slow_stream_phase(stream, start, start + 0.6, Tally(start), pace,
                                lambda: (float(next(sizes)), 100.0))
    assert stream.closed and stream.given < 10**9
    assert 2 <= len(samples) <= 11  # every 50 ms from 100 ms to 600 ms (fewer on a busy box)
    assert all(row[0] >= 0.1 for row in samples)
    assert [row[1] for row in samples] == [float(i) for i in range(len(samples))]
    growth = rss_growth(samples)
    assert growth["client_rss_growth_mib"] == len(samples) - 1
    assert growth["server_rss_growth_mib"] == growth["server_rss_peak_growth_mib"] == 0.0


def test_the_wire_case_runs_in_every_run_and_is_compared_with_raw_pika() -> None:
    for quick in (True, False):
        wire = {case.name: case for case in build_matrix(quick)}[WIRE_SEQ]
        assert wire.group == "baseline"  # so every --only run measures it too
        assert (wire.client, wire.server.kind, wire.baseline) == ("wire", "wire", "pika seq add")


def test_the_sequential_figure_is_also_read_against_the_wire_case() -> None:
    runs = [fake_run(BASE_SEQ, 0, 1000, baseline=None),
            fake_run(WIRE_SEQ, 0, 1600), fake_run("rpc seq add", 0, 1200)]
    add_ratios(runs)
    found = {h["label"]: h["ratio"] for h in headlines(runs)}
    assert found["sequential calls/s vs the wire case: how close rpc comes to its floor"] == \
        pytest.approx(0.75)
    assert found["the wire case's sequential calls/s vs raw pika: what the broker leaves room for"] \
        == pytest.approx(1.6)
