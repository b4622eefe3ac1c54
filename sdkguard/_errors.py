"""The errors sdkguard adds to the SDK's own (subclasses of its error classes)."""

from __future__ import annotations

from typing import Any

import anthropic

__all__ = ["StreamInterrupted", "StreamStalled"]


class StreamStalled(anthropic.APITimeoutError):
    """A stream (or the wait for its response) stayed silent or without progress too long."""

    def __init__(self, message: str, *, request: Any, reason: str, limit: float | None) -> None:
        super().__init__(request=request)
        self.message = message
        self.args = (message,)
        self.reason = reason
        """`stall_response`, `stall_idle` or `stall_progress`."""
        self.limit = limit
        """The limit that was exceeded, in seconds."""


class StreamInterrupted(anthropic.APIConnectionError):
    """A stream failed after part of the message had reached the caller, so it cannot restart.

    `partial_message` holds the message as far as it was delivered; `attempts` the history.
    """

    def __init__(
        self,
        message: str,
        *,
        request: Any,
        partial_message: Any,
        attempts: tuple[Any, ...],
        reason: str,
    ) -> None:
        super().__init__(message=message, request=request)
        self.partial_message = partial_message
        """The message as far as it was delivered (an SDK `Message` / `BetaMessage`)."""
        self.attempts = attempts
        """One `AttemptRecord` per attempt of the call."""
        self.reason = reason
