"""pytest fixtures for testing code that serves or calls rpc (entry point ``rpc.pytest_plugin``).

``rpc_server(*functions, instances=..., setup=..., url=..., **options)`` starts a server and
returns a connected :class:`~rpc.Proxy`; both are stopped after the test. ``rpc_broker_url`` is
the broker it uses: ``$RPC_TEST_BROKER_URL``, else ``memory://``. The names carry an ``rpc_``
prefix so they never shadow a project's own ``broker_url`` or ``server`` fixtures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from . import testing
from .client.proxy import Proxy


@pytest.fixture(scope="session")
def rpc_broker_url() -> str:
    """The broker ``rpc_server`` uses: ``$RPC_TEST_BROKER_URL``, else ``memory://``."""
    return testing.broker_url()


@pytest.fixture
def rpc_server(rpc_broker_url: str) -> Iterator[Callable[..., Proxy]]:
    """Start servers for this test; each call takes :func:`rpc.testing.serving`'s arguments
    and returns a connected proxy. Servers stop and proxies close when the test ends."""
    with ExitStack() as stack:

        def start(*functions: Callable[..., Any], url: str | None = None, **options: Any) -> Proxy:
            url = rpc_broker_url if url is None else url
            return stack.enter_context(testing.serving(*functions, url=url, **options))

        yield start
