"""rpc.metrics.proxy_outcome: the outcome label a proxy counts a finished call with."""

from __future__ import annotations

from rpc.core.errors import Cancelled
from rpc.metrics import PROXY_OUTCOMES, proxy_outcome


def test_a_cancelled_call_has_the_cancelled_outcome_not_error() -> None:
    assert proxy_outcome(Cancelled("the call to add() was cancelled")) == "cancelled"
    assert "cancelled" in PROXY_OUTCOMES
