"""The ``rpc`` command line: help, options, and call/methods/ping against a real ``rpc serve``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import kombu
import pytest
from cli_support import (
    Serve,
    environment,
    free_port,
    new_server_id,
    run_rpc,
    wait_for,
    wait_serving,
    write_app,
)
from click.testing import CliRunner

from rpc import Proxy, Server
from rpc.cli.exitcodes import ExitCode
from rpc.cli.main import cli, format_uptime, parse_keyword, parse_value, to_json

pytestmark = pytest.mark.integration


@dataclass
class Served:
    """A running ``rpc serve app:server`` and how to reach it."""

    server_id: str
    env: dict[str, str]
    serve: Serve
    app_dir: Path


@pytest.fixture(scope="module")
def served(broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    app_dir = write_app(tmp_path_factory.mktemp("cli-app"))
    server_id = new_server_id()
    env = environment(broker_url)
    serve = Serve("app:server", "--server-id", server_id, "--app-dir", str(app_dir),
                  "--concurrency", "3", "--log-format", "json", env=env,
                  log=app_dir / "serve.log")
    try:
        with Proxy(broker_url, server_id=server_id) as proxy:
            wait_serving(proxy, serve)
        yield Served(server_id, env, serve, app_dir)
    finally:
        serve.close()


def rpc(served: Served, *args: str) -> tuple[int, str, str]:
    done = run_rpc(*args, env=served.env)
    return done.returncode, done.stdout, done.stderr


# -- help and options (no broker) ------------------------------------------------------------------

def test_help_lists_the_exit_codes() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for code in ExitCode:
        assert f"  {int(code)}  " in result.output


def test_every_option_reads_an_rpc_environment_variable_shown_in_help() -> None:
    group = cli
    for name, command in group.commands.items():
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert isinstance(param.envvar, str) and param.envvar.startswith("RPC_"), (
                    f"rpc {name} {param.opts[0]} has no RPC_ environment variable")
                assert param.show_envvar, f"rpc {name} {param.opts[0]} hides its variable"


def test_version_names_the_package_kombu_and_python() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("rpc 0.1.0 (amqp-rpc), kombu ")
    assert "Python 3." in result.output


def test_arguments_are_json_literals_or_else_strings() -> None:
    assert [parse_value(a) for a in ["2", "2.5", "true", "null", '"2"', "[1, 2]", "hello"]] == [
        2, 2.5, True, None, "2", [1, 2], "hello"]


def test_keyword_arguments_are_key_equals_value() -> None:
    assert parse_keyword("exp=10") == ("exp", 10)
    assert parse_keyword("name=a=b") == ("name", "a=b")


def test_a_keyword_argument_without_equals_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["call", "calc", "add", "--kw", "nokey"])
    assert result.exit_code == ExitCode.USAGE
    assert "KEY=VALUE" in result.output


def test_status_shows_uptimes_in_two_units_at_most() -> None:
    assert [format_uptime(s) for s in (None, 42.9, 185, 7620, 273600)] == [
        "-", "42s", "3m05s", "2h07m", "3d04h"]


def test_metrics_ports_past_65535_are_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["serve", "app:server", "--metrics-port", "65535",
                                      "--processes", "2"])
    assert result.exit_code == ExitCode.USAGE
    assert "ports 65535 to 65536 go past 65535" in result.output


def test_results_that_json_lacks_are_printed_as_base64_and_lists() -> None:
    assert json.loads(to_json({"raw": b"\x00\xff", "set": {1}})) == {"raw": "AP8=", "set": [1]}


# -- rpc call --------------------------------------------------------------------------------------

def test_call_prints_the_result_as_json(served: Served) -> None:
    assert rpc(served, "call", served.server_id, "add", "[1]", "[2, 3]") == (0, "[1, 2, 3]\n", "")


def test_call_stream_prints_each_item_as_a_json_line(served: Served) -> None:
    assert rpc(served, "call", "--stream", served.server_id, "count", "3") == (0, "0\n1\n2\n", "")


def test_call_takes_bare_words_as_strings(served: Served) -> None:
    assert rpc(served, "call", served.server_id, "add", "hello", "-world")[:2] == (
        0, '"hello-world"\n')


def test_call_takes_negative_numbers_as_arguments_not_options(served: Served) -> None:
    assert rpc(served, "call", served.server_id, "add", "-1", "-2")[:2] == (0, "-3\n")


def test_call_passes_keyword_arguments(served: Served) -> None:
    assert rpc(served, "call", served.server_id, "add", "2", "--kw", "b=40")[:2] == (0, "42\n")


def test_call_with_json_serializer_gets_the_same_result(served: Served) -> None:
    assert rpc(served, "call", "--serializer", "json", served.server_id, "add", "2", "3")[:2] == (
        0, "5\n")


def test_call_of_a_raising_method_prints_type_message_and_remote_traceback(
    served: Served,
) -> None:
    code, out, err = rpc(served, "call", served.server_id, "fail", "boom")
    assert code == ExitCode.ERROR
    assert out == ""
    assert err.startswith("Error: ValueError: boom\nRemote traceback:\nTraceback")
    assert 'raise ValueError(message)' in err


def test_call_of_an_unknown_method_exits_1_naming_it(served: Served) -> None:
    code, _, err = rpc(served, "call", served.server_id, "nope")
    assert code == ExitCode.ERROR
    assert err.startswith("Error: rpc.MethodNotFound: no method 'nope'")


def test_call_without_reply_in_time_exits_6(served: Served, tmp_path: Path) -> None:
    code, _, err = rpc(served, "call", "--timeout", "0.3", served.server_id, "hold",
                       str(tmp_path / "held"), "2")
    assert code == ExitCode.TIMEOUT
    assert err == f"Error: no reply from '{served.server_id}' within 0.3 s\n"


def test_call_to_a_server_id_nobody_serves_exits_7(served: Served) -> None:
    code, _, err = rpc(served, "call", new_server_id(), "add", "1", "2")
    assert code == ExitCode.NO_SERVER
    assert "no server is serving" in err


@pytest.fixture
def abandoned(broker_url: str) -> Iterator[str]:
    """A server id whose queue exists but whose only server stopped; the queue is deleted after."""
    server_id = new_server_id()
    stopped = Server(broker_url, server_id=server_id)
    stopped.start()
    stopped.stop(grace=1)  # its queue stays, without a consumer
    try:
        yield server_id
    finally:
        with kombu.Connection(broker_url) as conn:
            conn.default_channel.queue_delete(server_id)


def test_call_to_a_server_id_whose_servers_all_stopped_exits_7_saying_nobody_consumes(
    served: Served, abandoned: str,
) -> None:
    code, _, err = rpc(served, "call", abandoned, "add", "1", "2")
    assert code == ExitCode.NO_SERVER
    assert err == f"Error: no server is consuming '{abandoned}' (0 requests waiting)\n"


def test_ping_of_a_server_id_whose_servers_all_stopped_exits_7_at_once(
    served: Served, abandoned: str,
) -> None:
    started = time.monotonic()
    code, _, err = rpc(served, "ping", abandoned, "--timeout", "20")
    assert code == ExitCode.NO_SERVER
    assert "no server is consuming" in err
    assert time.monotonic() - started < 15  # not after the 20 s timeout


def test_call_with_wait_for_ready_waits_for_a_server_to_consume_again(
    served: Served, abandoned: str, broker_url: str, tmp_path: Path,
) -> None:
    out = tmp_path / "call.out"
    with open(out, "w") as sink:
        waiting = subprocess.Popen(
            [sys.executable, "-m", "rpc", "call", abandoned, "add", "1", "2", "--wait-for-ready",
             "--timeout", "30"], env=served.env, stdout=sink, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
    try:
        time.sleep(2)
        assert waiting.poll() is None, out.read_text()  # still waiting, not exit 7
        back = Server(broker_url, server_id=abandoned)
        back.register_function(lambda a, b: a + b, "add")
        back.start()
        try:
            assert waiting.wait(20) == 0, out.read_text()
        finally:
            back.stop(grace=1)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait(10)
    assert out.read_text() == "3\n"


def test_call_with_broker_unreachable_exits_4(served: Served) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    code, _, err = rpc(served, "call", "--url", url, "--connect-retry", "0", "calc", "add")
    assert code == ExitCode.UNREACHABLE
    assert "cannot connect to broker at amqp://guest:**@127.0.0.1" in err


def test_call_with_refused_credentials_exits_5_without_showing_the_password(
    served: Served, broker_url: str,
) -> None:
    url = broker_url.replace("guest:guest@", "guest:s3cret-pw@")
    code, _, err = rpc(served, "call", "--url", url, "calc", "add")
    assert code == ExitCode.REFUSED
    assert "refused" in err
    assert "s3cret-pw" not in err


# -- rpc methods and rpc ping ----------------------------------------------------------------------

def test_methods_lists_each_method_with_signature_and_first_doc_line(served: Served) -> None:
    code, out, _ = rpc(served, "methods", served.server_id)
    assert code == 0
    lines = out.splitlines()
    assert [line.split("(")[0] for line in lines] == [
        "add", "count", "fail", "hold", "system.list_methods", "system.method_help",
        "system.method_signature", "system.ping", "system.stats"]
    assert lines[0].split() == ["add(a,", "b)", "Add", "a", "and", "b."]


def test_ping_exits_0_and_names_the_answering_process(served: Served) -> None:
    code, out, _ = rpc(served, "ping", served.server_id)
    assert code == 0
    assert out.startswith(f"{served.server_id} answered from ")
    assert " pid " in out


def test_ping_of_a_server_id_nobody_serves_fails(served: Served) -> None:
    code, _, _ = rpc(served, "ping", new_server_id(), "--timeout", "1")
    assert code == ExitCode.NO_SERVER


def test_ping_counts_a_server_without_introspection_as_alive(
    broker_url: str, tmp_path: Path,
) -> None:
    server_id = new_server_id()
    env = environment(broker_url)
    serve = Serve("app:quiet", "--server-id", server_id, "--app-dir", str(write_app(tmp_path)),
                  env=env, log=tmp_path / "serve.log")
    try:
        wait_for(lambda: "serving with 1 worker" in serve.output, 20, "the server to start")
        done = run_rpc("ping", server_id, env=env)
        assert (done.returncode, done.stdout) == (0, f"{server_id} answered (its introspection "
                                                     "is off)\n")
    finally:
        serve.close()


# -- rpc serve: logs and startup failures ----------------------------------------------------------

def test_serve_logs_json_lines_with_the_password_masked(served: Served) -> None:
    lines = [json.loads(line) for line in served.serve.output.splitlines()]
    assert {"time", "level", "logger", "pid", "message"} <= set(lines[0])
    serving = [e["message"] for e in lines if e["message"].startswith("serving ")]
    assert serving and "guest:**@" in serving[0]
    assert "guest:guest@" not in served.serve.output


def test_serve_concurrency_overrides_the_servers_and_scales_its_default_prefetch(
    served: Served,
) -> None:
    assert re.search(r"concurrency 3[,;] prefetch 12\b", served.serve.output)


def test_serve_of_a_missing_module_exits_3(served: Served) -> None:
    code, _, err = rpc(served, "serve", "no_such_module_here:server", "--app-dir",
                       str(served.app_dir))
    assert code == ExitCode.BAD_TARGET
    assert "no module named 'no_such_module_here'" in err


def test_serve_of_an_attribute_that_is_no_server_exits_3(served: Served) -> None:
    code, _, err = rpc(served, "serve", "app:not_a_server", "--app-dir", str(served.app_dir))
    assert code == ExitCode.BAD_TARGET
    assert "app:not_a_server is a int, not a Server" in err


def test_serve_of_a_target_without_colon_exits_3(served: Served) -> None:
    code, _, err = rpc(served, "serve", "app.server")
    assert code == ExitCode.BAD_TARGET
    assert "is not MODULE:ATTR" in err


def test_serve_with_broker_unreachable_exits_4(served: Served) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    code, _, err = rpc(served, "serve", "app:server", "--app-dir", str(served.app_dir),
                       "--url", url, "--connect-retry", "0")
    assert code == ExitCode.UNREACHABLE
    assert "cannot connect to broker at amqp://guest:**@127.0.0.1" in err


def test_serve_with_refused_credentials_exits_5(served: Served, broker_url: str) -> None:
    url = broker_url.replace("guest:guest@", "guest:s3cret-pw@")
    code, _, err = rpc(served, "serve", "app:server", "--app-dir", str(served.app_dir),
                       "--url", url)
    assert code == ExitCode.REFUSED
    assert "s3cret-pw" not in err


def test_serve_takes_a_factory_and_its_options_from_rpc_environment_variables(
    broker_url: str, tmp_path: Path,
) -> None:
    server_id = new_server_id()
    env = environment(broker_url, RPC_SERVER_ID=server_id, RPC_APP_DIR=str(write_app(tmp_path)))
    serve = Serve("app:make_server", env=env, log=tmp_path / "serve.log")
    try:
        with Proxy(broker_url, server_id=server_id) as proxy:
            assert wait_serving(proxy, serve)["server_id"] == server_id
    finally:
        serve.close()


# -- rpc demo --------------------------------------------------------------------------------------

def test_demo_shows_every_calling_style_without_a_broker() -> None:
    done = run_rpc("demo", env=environment("amqp://guest:guest@127.0.0.1:1//"), timeout=20)
    assert done.returncode == 0, done.stderr
    for label in ("synchronous", "instance method", "future", "callback", "timeout",
                  "remote error"):
        assert f"\n{label} " in done.stdout
    assert "ZeroDivisionError: division by zero" in done.stdout
