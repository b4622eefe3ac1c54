"""What the fake server received and sent: `RecordedRequest` and `SentResponse`."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from sdkguard.testing import _platforms

__all__ = ["RecordedRequest", "SentResponse", "record_cut_event"]


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request the server received."""

    method: str
    path: str
    """The path, without the query."""
    query: str
    headers: dict[str, str]
    """Header names in lower case; repeated headers joined with ", "."""
    body: Any
    """The JSON body, parsed, or None when there is none or it is not JSON."""
    received_at: float
    """`time.monotonic()` when the whole request had been read."""
    connection: int
    """Id of the TCP connection it came on, counting from 0: shows whether one was reused."""
    raw_body: bytes = field(default=b"", repr=False)
    platform: str = "anthropic"
    """`"anthropic"`; `"bedrock"` or `"vertex"` for the paths of those clients (docs/testing.md)."""

    @property
    def stream(self) -> bool:
        """Whether the request asked for a stream (`"stream": true`; Bedrock: by its path)."""
        if self.platform == _platforms.BEDROCK:
            return self.path.endswith("/invoke-with-response-stream")
        return isinstance(self.body, dict) and self.body.get("stream") is True


@dataclass
class SentResponse:
    """What the server wrote for one request, updated as each part reaches the socket.

    Each part is recorded once written, except the write that ends the answer, recorded
    just before it (and undone if it fails): a client that has the whole answer, or saw it
    break, never finds this behind what it got.
    """

    fault: str
    """The name of the answer (`"ok"`, `"reset_after"`, ...), or of the built-in reply
    (`"not_found"`, `"models"`, `"bad_request"`) for requests that do not take one."""
    status: int = 0
    """0 until the status line and headers were written."""
    headers: dict[str, str] = field(default_factory=dict)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """Every SSE event written, name and parsed data, pings included, in order. The data
    dicts are shared with the answer's prebuilt events: do not change them."""
    body: bytes | None = None
    """The bytes written of a non-SSE body (only the part written when it was cut)."""
    completed: bool = False
    """Whether the whole correct answer was written (for a stream, `message_stop` and the
    terminating chunk included)."""
    _done: threading.Event = field(
        default_factory=threading.Event, init=False, repr=False, compare=False
    )

    @property
    def done(self) -> bool:
        """Whether the server has finished with this answer, whatever the outcome."""
        return self._done.is_set()

    def wait(self, timeout: float = 5.0) -> None:
        """Block until the server has finished with this answer; `TimeoutError` after `timeout`."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"the server was still answering after {timeout} s")

    def content_events(self) -> list[tuple[str, dict[str, Any]]]:
        """The events written, without pings: what an SDK consumer sees."""
        return [e for e in self.events if e[0] != "ping"]

    @property
    def request_id(self) -> str | None:
        """The `request-id` header sent, if any."""
        return self.headers.get("request-id")

    @property
    def text(self) -> str:
        """The text of every `text_delta` written, joined."""
        return "".join(
            data["delta"]["text"]
            for name, data in self.events
            if name == "content_block_delta" and data["delta"].get("type") == "text_delta"
        )


def record_cut_event(sent: SentResponse, data: bytes, written: int) -> None:
    """Record the event of a write cut after `written` bytes if all of its data got out.

    A client hands an event on once its data arrived, before the chunk's closing CRLF (and the
    terminating chunk of a last write): so must the record, which is never behind a client.
    """
    head_end = data.find(b"\r\n")
    try:
        size = int(data[:head_end], 16)
    except ValueError:
        return  # not an HTTP chunk: the headers, say
    payload_end = head_end + 2 + size
    if size == 0 or written < payload_end:
        return
    lines = data[head_end + 2 : payload_end].decode().replace("\r\n", "\n").replace("\r", "\n")
    fields = dict(line.split(": ", 1) for line in lines.split("\n") if ": " in line)
    try:
        event = (fields["event"], json.loads(fields["data"]))
    except (KeyError, ValueError):
        return  # malformed_after's or invalid_utf8_after's event: never recorded
    sent.events.append(event)  # not recorded yet: a write is recorded once out, or undone
