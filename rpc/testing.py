"""Helpers for testing code that serves or calls rpc: a real server in the test's process.

:func:`serving` runs a :class:`~rpc.Server` (on its own threads) and yields a connected
:class:`~rpc.Proxy`; it needs no pytest. The pytest plugin :mod:`rpc.pytest_plugin` wraps it in
the ``rpc_server`` and ``rpc_broker_url`` fixtures. See docs/testing.md.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from .client.proxy import Proxy
from .server.server import Server

#: The environment variable naming the broker tests run against.
BROKER_URL_ENV = "RPC_TEST_BROKER_URL"
#: The broker tests run against without it: kombu's in-process transport, nothing to install.
DEFAULT_BROKER_URL = "memory://"
#: Seconds a test's call waits for its reply by default: a stuck call fails instead of hanging.
DEFAULT_TIMEOUT = 10.0


def broker_url() -> str:
    """The broker for tests: ``$RPC_TEST_BROKER_URL``, else ``memory://``."""
    return os.environ.get(BROKER_URL_ENV) or DEFAULT_BROKER_URL


@contextmanager
def serving(
    *functions: Callable[..., Any],
    instances: Mapping[str, object] | None = None,
    setup: Callable[[Server], object] | None = None,
    url: str | None = None,
    server_id: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    serializer: str | None = None,
    **server_options: Any,
) -> Iterator[Proxy]:
    """Serve ``functions`` and ``instances`` while the block runs; yield a proxy to them.

    Example::

        with serving(add, instances={"math": Math()}) as proxy:
            assert proxy.add(2, 3) == 5
            assert proxy.math.mul(2, 4) == 8

    Args:
        functions: served under their ``__name__``.
        instances: each served as ``name.method``.
        setup: called with the server before it starts, to register anything else (an
            application's own registration function, say).
        url: the broker; default :func:`broker_url`.
        server_id: default a fresh ``test-<hex>`` id, so tests never share a queue.
        timeout: the proxy's default call timeout (None waits for ever).
        serializer: the proxy's serializer, which the server then accepts too.
        server_options: more :class:`~rpc.Server` options; ``send_tracebacks`` defaults to
            True, so a failing handler's traceback shows in the test's report.
    """
    url = broker_url() if url is None else url
    server_id = server_id or f"test-{uuid.uuid4().hex[:12]}"
    server_options.setdefault("send_tracebacks", True)
    server = Server(url, server_id=server_id, serializer=serializer, **server_options)
    for function in functions:
        server.register_function(function)
    for name, instance in (instances or {}).items():
        server.register_instance(instance, name)
    if setup is not None:
        setup(server)
    server.start()
    try:
        proxy_options: dict[str, Any] = {} if serializer is None else {"serializer": serializer}
        with Proxy(url, server_id=server_id, timeout=timeout, **proxy_options) as proxy:
            yield proxy
    finally:
        server.stop(grace=5)


__all__ = ["BROKER_URL_ENV", "DEFAULT_BROKER_URL", "broker_url", "serving"]
