"""The blocking proxy at a call's deadline, on memory:// (no broker): a reply that a reader has
already taken from the call table as the deadline passes is the call's outcome."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from rpc import Proxy
from rpc.core.calls import Pending


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    with Proxy("memory://", server_id=f"deadline-{uuid.uuid4().hex[:8]}", timeout=0.1) as proxy:
        yield proxy


def test_a_reply_taken_by_a_reader_just_before_the_deadline_is_returned(
        proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    # Another thread reads the reply: it takes the call from the table, and completes it only
    # after the caller's deadline has passed (a reader that was descheduled in between).
    def send(pending: Pending) -> None:
        with proxy._lock:
            proxy._table.add(pending)
        taken = proxy._take(pending.cid)
        assert taken is pending

        def complete() -> None:
            time.sleep(0.3)
            proxy._complete(pending, True, 42)

        threading.Thread(target=complete, daemon=True).start()

    monkeypatch.setattr(proxy, "_send", send)
    assert proxy.work() == 42
