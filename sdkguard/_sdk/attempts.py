"""One attempt of a call: its options and timeouts, its retry count as middleware sees it."""

from __future__ import annotations

import contextvars
import functools
from typing import Any

from sdkguard._sdk.models import copy_model
from sdkguard._sdk.release import http

_RETRY_COUNT_HEADER = "x-stainless-retry-count"


def attempt_options(options: Any, retries_taken: int, timeout: Any, key: str | None) -> Any:
    """The options of one attempt: the SDK's own retries off, its retry count, our timeout."""
    update: dict[str, Any] = {"max_retries": 0, "idempotency_key": key, "timeout": timeout}
    # The SDK counts a first attempt itself; later ones it would also call the first. A header
    # the caller set (or `Omit()`-ted) wins, as it does in the SDK's own loop.
    if retries_taken:
        headers = options.headers if isinstance(options.headers, dict) else {}
        if not any(name.lower() == _RETRY_COUNT_HEADER for name in headers):
            update["headers"] = {**headers, _RETRY_COUNT_HEADER: str(retries_taken)}
    return copy_model(options, update)


# Retries taken before the attempt being sent, for the SDK's middleware: each attempt runs the
# SDK's loop once, which would call every attempt `retries_taken=0`.
_retries_taken: contextvars.ContextVar[int] = contextvars.ContextVar(
    "sdkguard_retries_taken", default=0
)


def enter_attempt(attempt: int) -> contextvars.Token[int] | None:
    return _retries_taken.set(attempt - 1) if attempt > 1 else None


def leave_attempt(token: contextvars.Token[int] | None) -> None:
    if token is not None:
        _retries_taken.reset(token)


def api_request_init(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """`APIRequest.__init__` (middleware's view of an attempt) with the attempt's real count."""
    taken = _retries_taken.get()
    if taken:
        kwargs["retries_taken"] = max(kwargs.get("retries_taken", 0), taken)
    return wrapped(*args, **kwargs)


def record_retries(result: Any, retries_taken: int) -> None:
    """Tell a raw response how many retries it took, as the SDK's own loop does."""
    if hasattr(result, "retries_taken"):
        result.retries_taken = retries_taken


@functools.lru_cache(maxsize=64)
def make_timeout(
    connect: float | None, read: float | None, write: float | None, pool: float | None
) -> Any:
    """An http `Timeout` (immutable, so shared between calls with the same limits)."""
    return http.Timeout(connect=connect, read=read, write=write, pool=pool)


def set_body_read_timeout(response: Any, read: float | None) -> None:
    """Give the body of `response` its own per-read limit (the headers had another).

    The transport takes the read limit of a body from the request's `timeout` extension when
    the body starts to be read, so replacing it between headers and body is enough.
    """
    try:
        request = response.request
    except RuntimeError:  # a response made from bytes (by middleware) has no request
        return
    timeouts = request.extensions.get("timeout")
    if timeouts is not None:  # the request's own dict, made for it when it was built
        timeouts["read"] = read
