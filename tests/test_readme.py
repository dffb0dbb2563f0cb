"""The README's quick start stays true: two commands, the second the one CI runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quick_start() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```console\n(.*?)```", section, re.S)
    assert block, "the quick start has no console block"
    return [line.split("#", 1)[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_quick_start_is_two_commands():
    assert len(quick_start()) == 2


def test_ci_runs_the_readmes_test_command():
    install, test = quick_start()[1].split(" && ")
    ci = (ROOT / ".ci" / "run").read_text()
    assert test in ci
    assert install.replace("pip install", "pip install -q --disable-pip-version-check") in ci \
        or install.split()[-1] in ci


def test_the_demo_command_runs_without_a_broker():
    assert quick_start()[0].endswith("rpc demo")
    done = subprocess.run([sys.executable, "-m", "rpc", "demo"], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "RPC_BROKER_URL": "amqp://nowhere:1//"})
    assert done.returncode == 0, done.stderr
    assert "ZeroDivisionError" in done.stdout
