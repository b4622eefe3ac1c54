"""The SDK's errors as sdkguard reads them, and the failures sdkguard detects itself."""

from __future__ import annotations

from typing import Any

import anthropic

from sdkguard._decide import (
    CLIENT_TIMEOUT,
    CONNECTION_ERROR,
    RETRY_REQUESTED,
    Failure,
    Phase,
    chain_of,
    classify_transport,
    is_transport_error,
)
from sdkguard._sdk.release import RetryableError, http
from sdkguard._wire import BEDROCK_EXCEPTIONS


def classify_exception(err: BaseException, *, phase: Phase, stream: bool) -> Failure | None:
    """What the SDK raised as a failure to retry, or None when it is not the network's or the
    API's doing.

    `err` is an `APIConnectionError` whose cause is the transport error, or, while a body is
    read, the raw transport error itself: the transport's error says the most
    (`_decide.classify_transport`), the SDK's wrapper only what is left.
    """
    chain = chain_of(err)
    if any(isinstance(item, RetryableError) for item in chain):
        return RETRY_REQUESTED
    failure = classify_transport(err, phase=phase, stream=stream)
    if failure is not None:
        return failure
    for item in chain:
        if isinstance(item, anthropic.APITimeoutError):
            return CLIENT_TIMEOUT
        if isinstance(item, anthropic.APIConnectionError):
            # The SDK wraps whatever sending raised into APIConnectionError: a transport
            # failure, but also a closed client or an exception from the user's event hook,
            # which no retry mends.
            if item.__cause__ is not None and not any(map(is_transport_error, chain)):
                return None
            return CONNECTION_ERROR
    return None


def request_of(err: BaseException) -> Any:
    """The http request behind an error, for the SDK error classes that need one."""
    request = getattr(err, "request", None)
    if request is None:
        response = getattr(err, "response", None)
        request = getattr(response, "request", None)
    if request is None:
        request = http.Request("POST", "https://api.anthropic.com/v1/messages")
    return request


def received_from(response: Any) -> tuple[str | None, int | None]:
    """The `request-id` header of an http response, and the bytes of its body received so far
    (httpx and httpx2 count them as they read: nothing is added per event)."""
    headers = getattr(response, "headers", None)
    request_id = headers.get("request-id") if headers is not None else None
    count = getattr(response, "num_bytes_downloaded", None)
    return (
        request_id if isinstance(request_id, str) and request_id else None,
        count if isinstance(count, int) and not isinstance(count, bool) else None,
    )


def response_of(err: BaseException) -> Any:
    """The http response an error carries (an `APIStatusError`'s), or None."""
    response = getattr(err, "response", None)
    return response if getattr(response, "headers", None) is not None else None


def error_type(body: object) -> str | None:
    """`overloaded_error` from the body of an `event: error` (Bedrock's exception names too)."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("type"), str):
            return BEDROCK_EXCEPTIONS.get(error["type"], error["type"])
    return None


class StallDetected(Exception):
    """Pings kept arriving, content did not (the progress limit)."""


class IncompleteStream(Exception):
    """The body ended cleanly before the message did (no `message_delta`, no `message_stop`)."""


class NotJsonAnswer(Exception):
    """A 2xx answer to a plain call was not JSON (a captive portal's page, say).

    The SDK hands such a body back as a `str` where the caller expects a `Message`.
    """

    def __init__(self, text: str) -> None:
        super().__init__(f"HTTP 2xx with {len(text)} characters that are not JSON")


def checked(cast_to: Any, result: Any) -> Any:
    """`result`, unless the SDK handed back a body that is not JSON as text."""
    if type(result) is str and cast_to is not str:
        raise NotJsonAnswer(result)
    return result
