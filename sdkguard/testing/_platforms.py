"""Amazon Bedrock and Google Vertex AI in the fake server: their paths, and Bedrock's framing.

The SDK's `AnthropicBedrock` and `AnthropicVertex` clients send the same Messages body as the
first-party API, with the model (and, for Bedrock, the stream flag) moved into the path:

- Bedrock: `POST /model/{model}/invoke`, `POST /model/{model}/invoke-with-response-stream`;
  a stream comes back in the AWS binary event-stream format (`application/vnd.amazon.
  eventstream`), one message per API event, its JSON base64-encoded in a `chunk` event; a
  failure mid-stream is an `exception` message (`throttlingException`, ...).
- Vertex: `POST [/v1]/projects/{p}/locations/{r}/publishers/anthropic/models/{model}:rawPredict`
  and `:streamRawPredict` (SSE, as the first-party API); `.../models/count-tokens:rawPredict`.
"""

from __future__ import annotations

import base64
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from sdkguard._wire import BEDROCK_EXCEPTIONS
from sdkguard.testing import _sse

ANTHROPIC, BEDROCK, VERTEX = "anthropic", "bedrock", "vertex"
EVENT_STREAM = "application/vnd.amazon.eventstream"

_MESSAGES_PATHS = {"/v1/messages": False, "/v1/messages/count_tokens": True}
_BEDROCK = re.compile(r"/model/(?P<model>[^/]+)/(?P<action>invoke|invoke-with-response-stream)")
_VERTEX = re.compile(
    r"(?:/v1)?/projects/[^/]+/locations/[^/]+/publishers/anthropic/models/"
    r"(?P<model>[^/]+):(?P<action>rawPredict|streamRawPredict)"
)
# The exception Bedrock sends mid-stream for each API error type: the first of its names.
_BEDROCK_EXCEPTIONS: dict[str, str] = {}
for _exception, _error_type in BEDROCK_EXCEPTIONS.items():
    _BEDROCK_EXCEPTIONS.setdefault(_error_type, _exception)


@dataclass(frozen=True)
class Route:
    """A Messages request, on whichever platform."""

    platform: str
    count_tokens: bool
    model: str | None = None
    """The model named in the path (Bedrock, Vertex); the first-party API has it in the body."""
    stream: bool | None = None
    """The stream flag of the path (Bedrock); None: the body's `"stream"` says."""


def route(method: str, path: str) -> Route | None:
    """The Messages route of a request, or None when it is not one."""
    if method != "POST":
        return None
    if path in _MESSAGES_PATHS:
        return Route(ANTHROPIC, _MESSAGES_PATHS[path])
    match = _BEDROCK.fullmatch(path)
    if match:
        stream = match["action"] == "invoke-with-response-stream"
        return Route(BEDROCK, False, match["model"], stream)
    match = _VERTEX.fullmatch(path)
    if match:
        count_tokens = match["model"] == "count-tokens"
        return Route(VERTEX, count_tokens, None if count_tokens else match["model"])
    return None


def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    # name length, name, type 7 (string), value length, value
    return (
        struct.pack("!B", len(raw_name))
        + raw_name
        + struct.pack("!BH", 7, len(raw_value))
        + raw_value
    )


def event_stream_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One message of the AWS event-stream format: prelude, CRCs, string headers, payload."""
    raw_headers = b"".join(_header(name, value) for name, value in headers.items())
    prelude = struct.pack("!II", 16 + len(raw_headers) + len(payload), len(raw_headers))
    message = prelude + struct.pack("!I", zlib.crc32(prelude)) + raw_headers + payload
    return message + struct.pack("!I", zlib.crc32(message))


def bedrock_event(event: _sse.Event) -> _sse.Event:
    """An API event as Bedrock streams it: its JSON in the `bytes` of a `chunk` event."""
    name, data, _ = event
    payload = _sse.dumps({"bytes": base64.b64encode(_sse.dumps(data)).decode()})
    headers = {
        ":event-type": "chunk",
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return (name, data, _sse.http_chunk(event_stream_message(headers, payload)))


def bedrock_error(error_type: str, message: str) -> tuple[str, dict[str, Any], bytes]:
    """A failure mid-stream as Bedrock sends it: an `exception` message.

    Recorded as the `error` event the SDK turns it into, with Bedrock's exception name.
    """
    exception = _BEDROCK_EXCEPTIONS.get(error_type, "internalServerException")
    headers = {
        ":exception-type": exception,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    frame = event_stream_message(headers, _sse.dumps({"message": message}))
    data = {"type": "error", "error": {"type": exception, "message": message}}
    return ("error", data, _sse.http_chunk(frame))
