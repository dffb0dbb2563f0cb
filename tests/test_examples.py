"""examples/: the calculator served by ``rpc serve examples.calc:server``, and the client script."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
from cli_support import REPO, Serve, environment, new_server_id, run_rpc, wait_for, wait_serving

from rpc import Proxy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def calc(broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``rpc serve examples.calc:server`` from the repository root; yields its server id."""
    server_id = new_server_id()
    log = tmp_path_factory.mktemp("examples") / "serve.log"
    serve = Serve("examples.calc:server", "--server-id", server_id, "--processes", "2",
                  env=environment(broker_url), log=log, cwd=REPO)
    try:
        with Proxy(broker_url, server_id=server_id) as proxy:
            wait_serving(proxy, serve)
        yield server_id
    finally:
        serve.close()


def test_calculator_adds_from_the_command_line(calc: str, broker_url: str) -> None:
    done = run_rpc("call", calc, "add", "2", "3", env=environment(broker_url))
    assert (done.returncode, done.stdout) == (0, "5\n")


def test_calculator_serves_its_stats_instance(calc: str, broker_url: str) -> None:
    done = run_rpc("call", calc, "stats.mean", "[1, 2, 3, 4]", env=environment(broker_url))
    assert (done.returncode, done.stdout) == (0, "2.5\n")


def test_calculator_lists_its_functions_and_instance_methods(calc: str, broker_url: str) -> None:
    done = run_rpc("methods", calc, env=environment(broker_url))
    names = [line.split("(")[0] for line in done.stdout.splitlines() if "(" in line]
    assert {"add", "sub", "mul", "div", "power", "slow_add", "stats.mean", "stats.stdev",
            "stats.describe", "divide", "echo", "log_event", "events", "reload", "math.mul",
            "math.hypot"} <= set(names)
    assert re.search(r"^power\(base: float, exp: float = 2\) -> float +Raise base to exp",
                     done.stdout, re.MULTILINE)


def test_calculator_serves_the_readmes_math_instance(calc: str, broker_url: str) -> None:
    with Proxy(broker_url, server_id=calc, timeout=10) as proxy:
        assert proxy.math.mul(2, 4) == 8


def test_calculator_logs_cast_events_it_can_list(calc: str, broker_url: str) -> None:
    with Proxy(broker_url, server_id=calc, timeout=10) as proxy:
        marker = f"started-{calc}"
        proxy.cast.log_event(marker, user="ann")
        # two workers: poll both through broadcasts until one has the event
        wait_for(lambda: any(e.get("message") == marker and e.get("user") == "ann"
                             for r in proxy.broadcast(timeout=0.5).events() for e in r.result),
                 10, "the cast event to be logged")


def test_calculator_answers_a_broadcast_reload_from_every_worker(calc: str, broker_url: str) -> None:
    with Proxy(broker_url, server_id=calc, timeout=10) as proxy:
        replies = proxy.broadcast(timeout=2).reload()
    assert len({r.result["pid"] for r in replies}) == 2
    assert all(r.error is None and r.result["reloads"] >= 1 for r in replies)


def test_calculator_echoes_bytes_unchanged(calc: str, broker_url: str) -> None:
    with Proxy(broker_url, server_id=calc, timeout=10) as proxy:
        assert proxy.echo(b"\x00raw") == b"\x00raw"


def test_calculator_divide_raises_zero_division_on_the_caller(calc: str, broker_url: str) -> None:
    with Proxy(broker_url, server_id=calc, timeout=10) as proxy:
        with pytest.raises(ZeroDivisionError):
            proxy.divide(1, 0)


def test_calculator_counts_division_by_zero_as_an_expected_error(
    calc: str, broker_url: str,
) -> None:
    with Proxy(broker_url, server_id=calc, timeout=10) as proxy:
        with pytest.raises(ZeroDivisionError):
            proxy.div(1, 0)
    done = run_rpc("status", calc, "--format", "json", env=environment(broker_url))
    records = json.loads(done.stdout)
    assert sum(r["expected_errors"] for r in records) >= 1
    assert sum(r["errors"] for r in records) == 0


def test_client_script_shows_every_calling_style(calc: str, broker_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "examples/client.py", "--server-id", calc], cwd=REPO,
        env=environment(broker_url), capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "add(2, 3) = 5",
        "power(2, exp=10) = 1024",
        "stats.describe([2, 4, 4, 4, 5, 5, 7, 9]) = "
        "{'count': 8, 'min': 2, 'max': 9, 'mean': 5.0, 'stdev': 2.0}",
        "math.mul(2, 4) = 8",
        "futures mul(i, i) = [0, 1, 4, 9, 16]",
        "callback sub(10, 4) = 6",
        "div(1, 0) raised ZeroDivisionError: division by zero",
        "slow_add with a 0.2 s timeout raised RPCTimeout",
        "gather = [3, 12]",
        "cast log_event = None (no reply awaited)",
        "broadcast reload: 2 instance(s) answered",  # the fixture's two worker processes
    ]
