"""``rpc serve --reload``: workers restart on source changes under --app-dir (development)."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import Serve, environment, new_server_id, ping, run_rpc, wait_for, wait_serving

from rpc import Proxy, RPCError
from rpc.cli.exitcodes import ExitCode

pytestmark = pytest.mark.integration

pytest.importorskip("watchfiles", reason="the reload extra is not installed")


def write_module(directory: Path, version: int) -> None:
    (directory / "svc.py").write_text(textwrap.dedent(f'''
        from rpc import Server

        server = Server()


        @server.expose
        def version():
            return {version}
    '''))


@pytest.fixture
def reloading(broker_url: str, tmp_path: Path) -> Iterator[tuple[Serve, Proxy, Path]]:
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    write_module(app_dir, 1)
    server_id = new_server_id()
    serve = Serve("svc:server", "--server-id", server_id, "--app-dir", str(app_dir), "--reload",
                  "--grace", "5", env=environment(broker_url), log=tmp_path / "serve.log")
    proxy = Proxy(broker_url, server_id=server_id, timeout=5)
    try:
        wait_serving(proxy, serve, timeout=30)
        yield serve, proxy, app_dir
    finally:
        proxy.close()
        serve.close()


def version_or_none(proxy: Proxy) -> int | None:
    try:
        return proxy.set_timeout(2).version()  # type: ignore[no-any-return]
    except RPCError:
        return None


def test_a_changed_function_is_served_within_seconds(
    reloading: tuple[Serve, Proxy, Path],
) -> None:
    serve, proxy, app_dir = reloading
    assert proxy.version() == 1
    write_module(app_dir, 2)
    wait_for(lambda: version_or_none(proxy) == 2, 20, "the new code to answer", interval=0.2)
    assert "svc.py changed; restarting the workers" in serve.output


def test_a_change_that_does_not_import_keeps_the_old_code_serving(
    reloading: tuple[Serve, Proxy, Path],
) -> None:
    serve, proxy, app_dir = reloading
    (app_dir / "svc.py").write_text("this is not python\n")
    wait_for(lambda: "before it was ready; the running workers stay" in serve.output, 30,
             "the failed reload to be logged")
    assert ping(proxy) is not None
    assert proxy.version() == 1


def test_code_that_does_not_load_at_start_is_served_once_fixed(
    broker_url: str, tmp_path: Path,
) -> None:
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "svc.py").write_text("this is not python\n")
    server_id = new_server_id()
    serve = Serve("svc:server", "--server-id", server_id, "--app-dir", str(app_dir), "--reload",
                  env=environment(broker_url), log=tmp_path / "serve.log")
    try:
        wait_for(lambda: "does not load; serving starts again once" in serve.output, 30,
                 "the failed start to be logged")
        assert serve.proc.poll() is None  # still watching, not exited with 3
        write_module(app_dir, 3)
        with Proxy(broker_url, server_id=server_id, timeout=5) as proxy:
            wait_for(lambda: version_or_none(proxy) == 3, 30, "the fixed code to answer",
                     interval=0.3)
    finally:
        serve.close()


def test_reload_is_refused_with_detach(broker_url: str, tmp_path: Path) -> None:
    done = run_rpc("serve", "svc:server", "--reload", "--detach", "--app-dir", str(tmp_path),
                   env=environment(broker_url))
    assert done.returncode == ExitCode.USAGE
    assert "not with --detach" in done.stderr
