"""Every ```python and ```console block of README.md and docs/*.md runs, against a real broker.

``examples.calc`` is served (``rpc serve``, two workers) for the whole module; each block runs in
a subprocess of its own, from the repository root, with ``RPC_BROKER_URL`` (and
``RPC_TEST_BROKER_URL``) naming the test broker. So that the docs read naturally and the tests
never share a queue, two substitutions are made in each block's text:

* the server id ``calc`` becomes this module's own (``examples.calc`` keeps its module name);
* the URL ``amqp://guest:guest@localhost:5672//`` becomes the test broker's.

How a block runs:

* python: executed as a script (top-level ``await`` allowed), with ``rpc``, ``Proxy``,
  ``Server``, ``yaml``, a connected ``proxy`` and an unstarted ``server`` already defined, as
  the docs' snippets assume. A block defining ``test_*`` functions is run by pytest instead. A
  block that ends in ``server.serve()`` is started, must answer on the broker, and must stop with
  exit 0 on SIGTERM.
* console: each command (lines after ``$ `` when the block has prompts, else every line) runs in
  bash, with ``rpc`` and ``python`` this interpreter. It must exit 0, or N when its comment says
  ``(exit N)``. An ``rpc call`` must print the result its comment (``# 5``) or the next output
  lines show. ``rpc serve`` without ``--detach`` is started in the background until the block
  ends, once its workers serve.

A block that cannot run here (Docker, pip, apt, system paths) is skipped, visibly, by a comment
right before it in the doc, ``<!-- not-run: why -->``, or, in docs this suite's owners do not
edit, by an entry of NOT_RUN below with its reason. A doc change that breaks a block fails here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_support import REPO, Serve, environment, wait_for, wait_serving

from rpc import Proxy

pytestmark = pytest.mark.integration

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LANGUAGES = ("python", "console")
DOC_URL = "amqp://guest:guest@localhost:5672//"
#: ``calc`` as a server id: not a module name (examples.calc), a file (calc.pid) or a word part.
SERVER_ID = re.compile(r"(?<![\w.\-/])calc(?![\w.:\-/])")
NOT_RUN_MARK = re.compile(r"<!--\s*not-run:\s*(.*?)\s*-->")

#: Blocks that cannot run here, in docs whose text this suite does not own: (doc, a line of the
#: block) -> why. An entry that no longer matches a block fails test_every_not_run_entry_matches.
NOT_RUN: dict[tuple[str, str], str] = {
    ("README.md", 'pip install -e ".[cli]" && rpc demo'):
        "the quick start installs the package and runs the whole suite; tests/test_readme.py "
        "checks it instead",
    ("README.md", 'pip install -e ".[test]" && python -m pytest'):
        "runs this very test suite",
    ("README.md", 'proxy = rpc_server(instances={"inventory": Inventory()})'):
        "an excerpt of docs/testing.md's complete example (Inventory is defined there), which "
        "runs in full",
    ("docs/production.md", "--detach --pidfile /run/rpc/calc.pid --logfile"):
        "writes to /run and /var/log; detaching is tested in tests/test_daemon.py",
    ("docs/production.md", "$ docker compose up -d"):
        "needs Docker; tests/test_compose.py checks docker-compose.yml",
    ("docs/production.md", "rabbitmqctl add_vhost prod --default-queue-type quorum"):
        "changes the broker's vhosts (rabbitmqctl)",
    ("docs/production.md", "$ pip install 'amqp-rpc[metrics]'"):
        "installs a package and binds port 9100; tests/test_health.py serves --metrics-port",
}


@dataclass(frozen=True)
class Block:
    """One fenced block of a doc."""

    doc: str  # path relative to the repository
    line: int  # of the opening fence, from 1
    language: str
    text: str
    not_run: str | None  # why it is skipped, from a marker or NOT_RUN

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}:{self.language}"


def blocks_of(path: Path) -> list[Block]:
    """The fenced blocks of one markdown file (indented fences too, as in list items)."""
    doc = str(path.relative_to(REPO))
    lines = path.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = re.match(r"^(\s*)```(\S*)\s*$", lines[i])
        if not opening:
            i += 1
            continue
        indent, language = opening.group(1), opening.group(2)
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        body = [line[len(indent):] if line.startswith(indent) else line.lstrip()
                for line in lines[i + 1:end]]
        text = "\n".join(body) + "\n"
        previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        mark = NOT_RUN_MARK.search(previous)
        reason = mark.group(1) if mark else next(
            (why for (d, needle), why in NOT_RUN.items() if d == doc and needle in text), None)
        found.append(Block(doc, i + 1, language, text, reason))
        i = end + 1
    return found


ALL_BLOCKS = [block for path in DOCS for block in blocks_of(path)]
RUNNABLE = [block for block in ALL_BLOCKS if block.language in LANGUAGES]


# -- the environment blocks run in -----------------------------------------------------------------

@dataclass
class Stage:
    """Where blocks run: the served calculator's id, the environment, a bin directory."""

    server_id: str
    broker_url: str
    env: dict[str, str]
    tmp: Path

    def adapt(self, text: str) -> str:
        return SERVER_ID.sub(self.server_id, text.replace(DOC_URL, self.broker_url))


@pytest.fixture(scope="module")
def stage(broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    tmp = tmp_path_factory.mktemp("docs-blocks")
    server_id = f"docs-calc-{uuid.uuid4().hex[:10]}"
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for name, command in (("rpc", f'{shlex.quote(sys.executable)} -m rpc "$@"'),
                          ("python", f'{shlex.quote(sys.executable)} "$@"')):
        (bin_dir / name).write_text(f"#!/bin/sh\nexec {command}\n")
        (bin_dir / name).chmod(0o755)
    env = environment(broker_url, RPC_TEST_BROKER_URL=broker_url, RPC_SERVER_ID=server_id,
                      PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", COLUMNS="120")
    serve = Serve("examples.calc:server", "--processes", "2", env=env, log=tmp / "calc.log",
                  cwd=REPO)
    try:
        with Proxy(broker_url, server_id=server_id) as proxy:
            wait_serving(proxy, serve, timeout=30)
        yield Stage(server_id, broker_url, env, tmp)
    finally:
        serve.close()


# -- python blocks ---------------------------------------------------------------------------------

RUNNER = textwrap.dedent('''
    import ast, asyncio, inspect, os, sys

    import yaml

    import rpc
    from rpc import Proxy, Server

    source = open(sys.argv[1]).read()
    proxy = Proxy(server_id=os.environ["RPC_SERVER_ID"], timeout=10)
    server = Server(server_id=os.environ["RPC_SERVER_ID"] + "-unstarted")
    namespace = {"__name__": "__main__", "rpc": rpc, "Proxy": Proxy, "Server": Server,
                 "yaml": yaml, "proxy": proxy, "server": server}
    code = compile(source, sys.argv[1], "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)
    if inspect.iscoroutine(result):
        asyncio.run(result)
    proxy.close()
''')


def serves_forever(source: str) -> bool:
    return source.rstrip().splitlines()[-1].split("#")[0].strip().endswith(".serve()")


def run_python(block: Block, stage: Stage) -> None:
    source = stage.adapt(block.text)
    script = stage.tmp / f"block_{block.line}.py"
    if re.search(r"^def test_", source, re.MULTILINE):
        test_file = stage.tmp / f"test_block_{block.line}.py"
        test_file.write_text(source)
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
             str(test_file), "--rootdir", str(stage.tmp)], cwd=stage.tmp, env=stage.env,
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, f"{block.id} failed under pytest:\n{done.stdout}{done.stderr}"
        return
    script.write_text(source)
    runner = stage.tmp / "runner.py"
    runner.write_text(RUNNER)
    argv = [sys.executable, str(runner), str(script)]
    if serves_forever(source):
        run_server_block(block, argv, stage)
        return
    done = subprocess.run(argv, cwd=REPO, env=stage.env, capture_output=True, text=True,
                          timeout=90, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"{block.id} failed:\n{done.stdout}{done.stderr}"


def run_server_block(block: Block, argv: list[str], stage: Stage) -> None:
    """Start a block that serves; it must answer on the broker, then stop cleanly on SIGTERM."""
    log = stage.tmp / f"serve_{block.line}.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(argv, cwd=REPO, env=stage.env, stdout=sink,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        with Proxy(stage.broker_url, server_id=stage.server_id) as proxy:
            def answered() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"{block.id} exited:\n{log.read_text()}")
                replies = proxy.broadcast(timeout=0.5).call("system.ping")
                return any(r.server.endswith(f":{proc.pid}") for r in replies)

            wait_for(answered, 30, f"{block.id}'s server to answer")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


# -- console blocks --------------------------------------------------------------------------------

@dataclass
class Command:
    line: str
    output: list[str]


def commands_of(text: str) -> list[Command]:
    """Commands and the output lines shown after each (only in blocks with ``$`` prompts)."""
    lines = text.splitlines()
    prompted = any(line.startswith("$ ") for line in lines)
    commands: list[Command] = []
    pending = ""
    for line in lines:
        if prompted and not line.startswith("$ ") and not pending:
            if commands and line.strip():
                commands[-1].output.append(line)
            continue
        body = line[2:] if line.startswith("$ ") else line
        if not body.strip() or body.lstrip().startswith("#"):
            continue
        if body.rstrip().endswith("\\"):
            pending += body.rstrip()[:-1] + " "
            continue
        commands.append(Command(pending + body, []))
        pending = ""
    return commands


def comment_of(line: str) -> str:
    """The ``# ...`` comment at the end of a shell command ('' when none): a ``#`` that starts a
    word outside quotes."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[i + 1:].strip()
    return ""


def expected_result(command: Command) -> str | None:
    """What an ``rpc call`` must print: its output lines, or a JSON literal opening its comment."""
    if command.output:
        return "\n".join(command.output)
    first = re.split(r"[;,]?\s", comment_of(command.line), maxsplit=1)[0]
    try:
        json.loads(first)
    except ValueError:
        return None
    return first


def run_console(block: Block, stage: Stage) -> None:
    background: list[Serve] = []
    try:
        for command in commands_of(stage.adapt(block.text)):
            words = command.line.split("#")[0].split()
            if words[:2] == ["rpc", "serve"] and "--detach" not in words:
                serve = Serve(*shlex.split(command.line, comments=True)[2:], env=stage.env,
                              log=stage.tmp / f"serve_{block.line}_{len(background)}.log",
                              cwd=REPO)
                background.append(serve)
                wait_for(lambda s=serve: _serving(s), 60, f"{command.line!r} to serve")
                continue
            done = subprocess.run(["bash", "-c", command.line], cwd=REPO, env=stage.env,
                                  capture_output=True, text=True, timeout=90,
                                  stdin=subprocess.DEVNULL)
            status = re.search(r"\(exit (\d+)\)", comment_of(command.line))
            expected_code = int(status.group(1)) if status else 0
            assert done.returncode == expected_code, (
                f"{block.id}: {command.line!r} exited {done.returncode}, not {expected_code}:\n"
                f"{done.stdout}{done.stderr}")
            want = expected_result(command) if words[:2] == ["rpc", "call"] else None
            if want is not None and expected_code == 0:
                assert done.stdout.strip() == want, f"{block.id}: {command.line!r}"
    finally:
        for serve in background:
            serve.signal(signal.SIGTERM)
            try:
                serve.wait(40)
            finally:
                serve.close()


def _serving(serve: Serve) -> bool:
    if serve.proc.poll() is not None:
        raise AssertionError(f"rpc serve exited with {serve.proc.returncode}:\n{serve.output}")
    return "serving with " in serve.output


# -- the tests -------------------------------------------------------------------------------------

@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_doc_block_runs(block: Block, stage: Stage) -> None:
    if block.not_run is not None:
        pytest.skip(f"{block.id} not run: {block.not_run}")
    if block.language == "python":
        run_python(block, stage)
    else:
        run_console(block, stage)


def test_every_not_run_entry_matches_a_block() -> None:
    stale = [key for key in NOT_RUN
             if not any(b.doc == key[0] and key[1] in b.text for b in ALL_BLOCKS)]
    assert stale == []


def test_every_not_run_marker_gives_a_reason() -> None:
    for path in DOCS:
        for line in path.read_text().splitlines():
            if "not-run" in line:
                mark = NOT_RUN_MARK.search(line)
                assert mark and mark.group(1), f"{path.name}: {line!r} gives no reason"


def test_the_docs_have_blocks_to_run() -> None:
    assert sum(b.not_run is None for b in RUNNABLE) >= 10


def test_console_commands_parse_prompts_continuations_and_output() -> None:
    commands = commands_of("$ rpc call calc add 2 3\n5\n$ rpc serve a:b \\\n      --x 1\nok\n")
    assert [(c.line, c.output) for c in commands] == [
        ("rpc call calc add 2 3", ["5"]), ("rpc serve a:b        --x 1", ["ok"])]


def test_a_comment_starts_at_a_hash_outside_quotes() -> None:
    assert comment_of("rpc call calc echo '#1' x#2   # 5 (exit 1)") == "5 (exit 1)"


def test_an_rpc_call_comment_opening_with_a_json_literal_is_its_expected_result() -> None:
    assert expected_result(Command("rpc call calc power 2 --kw exp=10   # 1024; ARGS are", [])) \
        == "1024"
    assert expected_result(Command("rpc methods calc   # every method", [])) is None
