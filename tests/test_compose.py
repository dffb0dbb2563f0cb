"""docker-compose.yml and the Dockerfile, checked as files: Docker cannot run on this machine."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from rpc.cli.worker import ALIVE_INTERVAL

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert set(compose) <= {"services", "volumes", "networks", "configs", "secrets", "name"}
    return compose["services"]  # type: ignore[no-any-return]


def published(service: dict[str, Any]) -> set[int]:
    """Container ports a service publishes, from short-syntax entries like 127.0.0.1:5672:5672."""
    return {int(str(entry).rsplit(":", 1)[-1].split("/")[0]) for entry in service["ports"]}


def test_compose_has_a_broker_and_the_example_server(services: dict[str, Any]) -> None:
    assert set(services) == {"rabbitmq", "calc"}


def test_broker_is_the_official_management_image_on_5672_and_15672(
    services: dict[str, Any],
) -> None:
    rabbitmq = services["rabbitmq"]
    image, _, tag = rabbitmq["image"].partition(":")
    assert image == "rabbitmq" and tag.endswith("-management")
    assert published(rabbitmq) == {5672, 15672}
    assert all(str(entry).startswith("127.0.0.1:") for entry in rabbitmq["ports"])


def test_broker_healthcheck_is_rabbitmq_diagnostics_ping(services: dict[str, Any]) -> None:
    assert services["rabbitmq"]["healthcheck"]["test"] == [
        "CMD", "rabbitmq-diagnostics", "-q", "ping"]


def test_server_runs_rpc_serve_with_two_processes_from_the_dockerfile(
    services: dict[str, Any],
) -> None:
    calc = services["calc"]
    assert calc["build"] == "."
    assert calc["command"] == ["rpc", "serve", "examples.calc:server", "--processes", "2"]
    assert calc["environment"]["RPC_BROKER_URL"] == "amqp://guest:guest@rabbitmq:5672//"


def test_server_waits_for_a_healthy_broker(services: dict[str, Any]) -> None:
    assert services["calc"]["depends_on"] == {"rabbitmq": {"condition": "service_healthy"}}


def test_server_healthcheck_is_rpc_health_on_the_liveness_file_rpc_serve_touches(
    services: dict[str, Any],
) -> None:
    calc = services["calc"]
    assert calc["healthcheck"]["test"][:3] == ["CMD", "rpc", "health"]
    assert "--liveness-file" not in calc["command"]  # both commands read RPC_LIVENESS_FILE
    assert calc["environment"]["RPC_LIVENESS_FILE"].startswith("/tmp/")  # writable as non-root


def test_server_healthcheck_allows_several_missed_touches_before_unhealthy(
    services: dict[str, Any],
) -> None:
    check = services["calc"]["healthcheck"]
    max_age = float(check["test"][check["test"].index("--max-age") + 1])
    assert max_age >= 3 * ALIVE_INTERVAL
    assert seconds(check["start_period"]) > 10  # workers start, connect and report alive


def test_docker_waits_longer_than_the_grace_before_killing_the_server(
    services: dict[str, Any],
) -> None:
    calc = services["calc"]
    assert float(calc["environment"]["RPC_GRACE"]) < seconds(calc["stop_grace_period"])


def test_dockerfile_installs_the_package_and_serves_the_example_as_non_root() -> None:
    lines = [line.strip() for line in (REPO / "Dockerfile").read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    assert instructions[0].startswith("FROM python:3.11")
    assert "RUN pip install '.[cli]'" in instructions  # the rpc command needs its extra
    assert "COPY examples ./examples" in instructions
    assert any(line.startswith("USER ") and line != "USER root" for line in instructions)
    assert instructions[-1] == 'CMD ["rpc", "serve", "examples.calc:server"]'


def test_dockerfile_checks_the_liveness_file_its_server_touches() -> None:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    instructions = [line.strip() for line in text.splitlines()
                    if line.strip() and not line.strip().startswith("#")]
    assert "ENV RPC_LIVENESS_FILE=/tmp/rpc-alive" in instructions
    check = next(line for line in instructions if line.startswith("HEALTHCHECK "))
    assert check.endswith('CMD ["rpc", "health", "--max-age", "15"]')


def seconds(duration: str) -> float:
    """A compose duration such as ``10s``, ``1m30s`` or ``500ms`` in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", duration)
    assert "".join(n + u for n, u in parts) == duration, f"not a compose duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)
