"""The Anthropic API's error types, their HTTP statuses and Bedrock's names for them.

The one definition shared by the guard (`_sdk`) and the test kit (`sdkguard.testing`), which
must agree on them. Pure data: imports neither `anthropic` nor an HTTP client.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final, NamedTuple

__all__ = [
    "BEDROCK_EXCEPTIONS",
    "ERROR_STATUSES",
    "ERROR_TYPES",
    "ErrorType",
    "error_type_for_status",
]


class ErrorType(NamedTuple):
    """What the API sends with one error type."""

    status: int
    """The HTTP status of a non-streaming answer carrying it."""
    message: str
    """A message in the API's words (the test kit's default)."""


ERROR_TYPES: Final = MappingProxyType(
    {
        "invalid_request_error": ErrorType(400, "Invalid request."),
        "authentication_error": ErrorType(401, "invalid x-api-key"),
        "billing_error": ErrorType(402, "Your credit balance is too low."),
        "permission_error": ErrorType(
            403, "Your API key does not have permission to use the specified resource."
        ),
        "not_found_error": ErrorType(404, "The requested resource could not be found."),
        "conflict_error": ErrorType(409, "Conflict."),
        "request_too_large": ErrorType(413, "Request exceeds the maximum allowed number of bytes."),
        "rate_limit_error": ErrorType(429, "Number of requests has exceeded your rate limit."),
        "api_error": ErrorType(500, "Internal server error"),
        "timeout_error": ErrorType(504, "Request timed out."),
        "overloaded_error": ErrorType(529, "Overloaded"),
    }
)
"""Every error type the API sends, by name (`error.type` of an error body or `event: error`)."""

ERROR_STATUSES: Final = MappingProxyType({name: e.status for name, e in ERROR_TYPES.items()})
"""The HTTP status of each error type: `{"overloaded_error": 529, ...}`."""

_TYPE_OF_STATUS: Final = {e.status: name for name, e in ERROR_TYPES.items()}


def error_type_for_status(status: int) -> str:
    """The error type the API sends with an HTTP status; unlisted 4xx `invalid_request_error`,
    anything else `api_error`."""
    if status in _TYPE_OF_STATUS:
        return _TYPE_OF_STATUS[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


BEDROCK_EXCEPTIONS: Final = MappingProxyType(
    {
        # The first exception of each error type is the one the test kit sends for it.
        "serviceUnavailableException": "overloaded_error",
        "throttlingException": "rate_limit_error",
        "internalServerException": "api_error",
        "modelStreamErrorException": "api_error",
        "modelTimeoutException": "timeout_error",
        "validationException": "invalid_request_error",
    }
)
"""Bedrock streams report a failure as an AWS exception, named so: its API error type."""
