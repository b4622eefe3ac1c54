"""What sdkguard tells `on_retry` hooks (no dependency on the SDK, so it loads at start-up)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RetryEvent"]


@dataclass(frozen=True)
class RetryEvent:
    """What `on_retry` hooks and the retry log line receive, once before each wait."""

    call: str
    """The SDK method: `messages.create`, `messages.stream`, `beta.messages.create`, ..."""
    attempt: int
    """The attempt about to start after the wait (2 for the first retry)."""
    max_attempts: int
    reason: str
    """Stable reason code of the failure: `connection_reset`, `stall_idle`, `status_529`, ..."""
    description: str
    """The failure in words: `connection reset by peer (ECONNRESET)`."""
    error: BaseException
    wait: float
    """Seconds sdkguard waits before the next attempt."""
    elapsed: float
    """Seconds since the call started."""
    continued: bool = False
    """The failure came after content reached the caller, and the next attempt continues the
    message (`resume`) rather than starting it again."""
    request_id: str | None = None
    """The `request-id` header of the failed attempt's response (None: no response headers,
    or none sent): what Anthropic support asks for."""
    bytes_received: int | None = None
    """Bytes of the failed attempt's response body received (0: it failed before the
    headers; None: not known)."""
    events_received: int | None = None
    """SSE events of the message the failed attempt received, pings not counted (None: no
    event stream was read: not a stream, an error status, or no response headers)."""
    last_event: str | None = None
    """The type of the last event it received (`content_block_delta`, ...), if any."""
    errno: str | None = None
    """The symbolic errno of the failure (`ECONNRESET`, ...), where there is one."""
