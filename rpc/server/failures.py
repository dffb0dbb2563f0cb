"""How a server logs what goes wrong with a call: each failure as what it is, storms rate-limited.

Every module of the server logs through the ``rpc.server`` logger, whichever module a line
comes from, so that an application's logging setup does not depend on the package's layout.
"""

from __future__ import annotations

import logging
from typing import Any

from ..core.context import CallInfo
from ..core.errors import BadRequest, InvalidArguments, MethodNotFound
from ..core.ratelimit import RepeatLimiter
from .options import ErrorHook
from .registry import Method

#: The logger of everything a server says.
LOGGER_NAME = "rpc.server"

logger = logging.getLogger(LOGGER_NAME)

#: Errors that refuse a request before its handler runs.
REFUSALS = (BadRequest, MethodNotFound, InvalidArguments)
#: How a request whose method is unknown, or was never decoded, is named in the log.
UNDECODABLE = "<undecodable request>"


class FailureLog:
    """Classifies and logs failed calls; repeats of one kind are rate-limited by ``limiter``."""

    def __init__(self, limiter: RepeatLimiter | None = None) -> None:
        self.limiter = limiter if limiter is not None else RepeatLimiter()

    def record(
        self, exc: BaseException, props: dict[str, Any], method: str | None,
        target: Method | None, info: CallInfo | None, elapsed: float,
    ) -> str:
        """Log a failed call as what it is; returns its stats key: ``bad_requests`` (refused
        before it ran), ``expected_errors`` (one its method declares) or ``errors``."""
        shown = method or UNDECODABLE
        if isinstance(exc, REFUSALS) and info is None:
            level, outcome, trace = logging.WARNING, "bad_requests", False
        elif target is not None and isinstance(exc, target.expected):
            level, outcome, trace = logging.INFO, "expected_errors", False
        else:
            level, outcome, trace = logging.ERROR, "errors", True
        if not logger.isEnabledFor(level):
            return outcome
        suppressed = self.limiter.allow((shown, type(exc)))
        if suppressed is None:
            return outcome
        context_ids = ""
        if info is not None and info.context.get("request_id") is not None:
            context_ids = f" request_id={info.context['request_id']}"
        more = f" ({suppressed} more like it suppressed)" if suppressed else ""
        verb = "refused" if outcome == "bad_requests" else "raised"
        correlation_id = props.get("correlation_id")
        logger.log(
            level, "%s %s %s: %s (correlation_id=%s%s, %.2f ms)%s", shown, verb,
            type(exc).__name__, first_line(exc), correlation_id, context_ids,
            elapsed * 1000, more, exc_info=exc if trace else None,
            extra={"rpc_method": shown, "correlation_id": correlation_id, "outcome": outcome},
        )
        return outcome


def report(hook: ErrorHook, exc: BaseException, info: CallInfo) -> None:
    """Show a handler's exception to the server's ``on_error`` hook; the hook's own failure is
    logged, never raised."""
    try:
        hook(exc, info)
    except Exception:
        logger.exception("the server's on_error hook raised")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, at most 500 characters."""
    text = str(exc)
    return text.splitlines()[0][:500] if text else ""


def default_logging() -> None:
    """A plain stderr handler for the ``rpc`` logger when the application configured none."""
    package = logging.getLogger("rpc")
    if logging.getLogger().handlers or any(
            not isinstance(h, logging.NullHandler) for h in package.handlers):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package.addHandler(handler)
    if package.level == logging.NOTSET:
        package.setLevel(logging.INFO)
