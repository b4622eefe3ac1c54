"""The errors sdkguard adds to the SDK's own (subclasses of its error classes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anthropic

if TYPE_CHECKING:  # named for type checkers only: importing sdkguard stays cheap
    from anthropic.types import Message
    from anthropic.types.beta import BetaMessage

    from sdkguard._decide import AttemptRecord

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
        partial_message: Message | BetaMessage | None,
        attempts: tuple[AttemptRecord, ...],
        reason: str,
    ) -> None:
        super().__init__(message=message, request=request)
        self.partial_message = partial_message
        """The message as far as it was delivered: a `Message` (a `BetaMessage` for
        `client.beta.messages`); None when the stream broke before its `message_start`."""
        self.attempts = attempts
        """One `AttemptRecord` per attempt of the call."""
        self.reason = reason
