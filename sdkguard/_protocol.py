"""The stream protocol: what a guarded stream holds, releases and records. No I/O.

One `StreamProtocol` per guarded stream, fed the events of each attempt by a driver: the
SDK's sync stream and its async stream (`_stream`, SDK event objects) and the proxy's relay
(raw SSE events, relayed as received). It answers the questions every driver asks the same
way:

- **Hold or release.** Before the commit point, events are held (`hold` returns None); the
  first content event is the commit point, and `hold` returns every held event to release
  together. Until then a failed attempt can be replaced by a new one (`restart`) without the
  consumer noticing.
- **The message already whole.** Once `message_delta` has come (stop reason, final usage),
  losing the rest of the body loses nothing (`whole`).
- **The partial message.** What was delivered is recorded as strings, not event objects, and
  rebuilt only when it is needed (`message_data`, `partial_message`): keeping every event
  costs a third of a stream's throughput in garbage collection.

It knows the API's events, not the SDK: the SDK's event objects are recorded by the guard's
own subclass (`_stream.SdkStreamProtocol`), so the proxy runs without importing `anthropic`.

The decision whether to retry at all belongs to the decision core (`_decide`), which the
drivers ask through the attempt loop.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = ["COMMIT_EVENTS", "DELTA_TEXT", "StreamProtocol", "sse_data", "sse_event_name"]

# The first of these to arrive is the commit point: content has reached the consumer.
COMMIT_EVENTS = frozenset(
    {"content_block_delta", "content_block_stop", "message_delta", "message_stop"}
)
# Which field of each delta carries its text; citations are kept whole.
DELTA_TEXT = {
    "text_delta": "text",
    "input_json_delta": "partial_json",
    "thinking_delta": "thinking",
}


class StreamProtocol:
    """One guarded stream: held events, the commit point, and what was delivered.

    `raw=True`: events are raw SSE events (bytes of one event, `event:` and `data:` lines),
    recorded from their JSON; with `keep_content=False` only whether the message is whole is
    kept (a relay that needs no partial message parses no JSON). `raw=False`: events are
    objects with a `type`, recorded by a subclass's `record` (`_stream.SdkStreamProtocol`).

    The message and its block starts are kept as their JSON, a few hundred bytes where the
    parsed objects take kilobytes for the whole life of the stream; `message_delta` comes last,
    and is kept as it is.
    """

    __slots__ = (
        "blocks",
        "committed",
        "complete",
        "extras",
        "held",
        "keep_content",
        "message",
        "message_delta",
        "open_block",
        "raw",
        "stopped",
    )

    def __init__(self, *, raw: bool = False, keep_content: bool = True) -> None:
        self.raw = raw
        self.keep_content = keep_content
        self.restart()

    def restart(self) -> None:
        """A new attempt begins: forget the last one's events."""
        self.committed = False
        self.complete = False
        """`message_delta` (or `message_stop`) arrived: the message is whole."""
        self.stopped = False
        """`message_stop` arrived."""
        self.held: list[Any] = []
        self.message: tuple[type, str | bytes] | None = None
        """`message_start`'s message: its class (dict for raw events) and its JSON."""
        self.blocks: dict[int, list[Any]] = {}
        """By index: the block as it started (frozen), then the text of each delta."""
        self.extras: dict[int, dict[str, Any]] | None = None
        """By index: what a block's other deltas brought (signature, citations, others)."""
        self.message_delta: Any = None
        self.open_block: int | None = None
        """The index of the last block started and not stopped (a continuation extends it)."""

    # -- events -----------------------------------------------------------------------------

    def hold(self, kind: str, event: Any) -> list[Any] | None:
        """Before the commit point: keep `event`, or return every event to release now.

        The list itself is released: the drivers pop the events from it as they deliver them.
        """
        self.held.append(event)
        if kind not in COMMIT_EVENTS:
            return None
        self.committed = True
        record = self.record_raw if self.raw else self.record
        for item in self.held:
            record(item)
        return self.held

    def take_held(self) -> list[Any]:
        """The events held back, handed over once (a driver giving up delivers them)."""
        held, self.held = self.held, []
        return held

    def record(self, event: Any) -> None:
        """Record a delivered event object (after the commit point): a subclass's to do."""
        raise NotImplementedError("StreamProtocol(raw=False) records through a subclass")

    def record_raw(self, event: bytes) -> None:
        """Record a delivered raw SSE event (after the commit point)."""
        kind = sse_event_name(event)
        if kind == "content_block_stop":
            self.open_block = None
            return
        if kind in ("message_stop", "ping") or kind is None:
            if kind == "message_stop":
                self.complete = self.stopped = True
            return
        if not self.keep_content:
            self.complete = self.complete or kind == "message_delta"
            return
        data = json.loads(sse_data(event) or b"null")
        if isinstance(data, dict):
            self.record_data(kind, data)

    def record_data(self, kind: str, data: dict[str, Any]) -> None:
        """Record a delivered event given as its JSON data (`record_raw`, parsed once by a
        driver that reads the data itself: the proxy's relay continuing a message)."""
        if kind == "content_block_stop":
            self.open_block = None
            return
        if kind == "message_stop":
            self.complete = self.stopped = True
            return
        if kind == "content_block_delta":
            delta: dict[str, Any] = data.get("delta") or {}
            field = DELTA_TEXT.get(str(delta.get("type")))
            index: int = data.get("index", 0)
            if field is not None:
                self.add_text(index, delta.get(field) or "")
            elif delta.get("type") == "signature_delta":
                self._extra(index)["signature"] = delta.get("signature")
            elif delta.get("type") == "citations_delta":
                self._extra(index).setdefault("citations", []).append(delta.get("citation"))
            else:
                self._extra(index).setdefault("other", []).append(delta)
        elif kind == "content_block_start":
            block = data.get("content_block") or {}
            self.blocks[data.get("index", 0)] = [(dict, json.dumps(block).encode())]
            self.open_block = data.get("index", 0)
        elif kind == "message_start":
            self.message = (dict, json.dumps(data.get("message") or {}).encode())
        elif kind == "message_delta":
            self.message_delta = data
            self.complete = True

    def add_text(self, index: int, text: str) -> None:
        block = self.blocks.get(index)
        if block is not None:  # else a block that never started: the SDK's to judge
            block.append(text)

    def _extra(self, index: int) -> dict[str, Any]:
        if self.extras is None:
            self.extras = {}
        return self.extras.setdefault(index, {})

    # -- failures ---------------------------------------------------------------------------

    def whole(self, api_error: bool) -> bool:
        """Whether a failure now loses nothing: the message was whole (`message_delta` had
        come), as when the body ends cleanly there. An API `error` event is still the API's
        word, raised as the SDK raises it (`api_error`)."""
        return self.complete and not api_error

    # -- the message ------------------------------------------------------------------------

    def message_data(self) -> dict[str, Any] | None:
        """The message as far as it was delivered, as the API's non-streaming answer has it.

        As the SDK's stream helpers accumulate it: `message_start` gives the message, each
        `content_block_start` a block that its deltas complete, and `message_delta` the stop
        reason and the final usage (cumulative counts: a count it carries replaces the first).
        """
        if self.message is None:
            return None
        body: dict[str, Any] = json.loads(self.message[1])
        extras = self.extras or {}
        body["content"] = [
            _block_data(json.loads(block[0][1]), "".join(block[1:]), extras.get(index))
            for index, block in sorted(self.blocks.items())
        ]
        if self.message_delta is not None:
            event = self.event_data(self.message_delta)
            event.pop("type", None)
            usage = event.pop("usage", None) or {}
            # The delta's fields, then the event's own (beta: context_management, ...): a value
            # replaces what message_start said, a null only fills a gap.
            for key, value in (*(event.pop("delta", None) or {}).items(), *event.items()):
                if value is not None or body.get(key) is None:
                    body[key] = value
            counts = {key: value for key, value in usage.items() if value is not None}
            body["usage"] = {**(body.get("usage") or {}), **counts}
        return body

    def event_data(self, event: Any) -> dict[str, Any]:
        """A recorded event's JSON data (a subclass's events are objects)."""
        return dict(event)

    def partial_message(self) -> Any:
        """The message as far as it was delivered (its JSON data; a subclass's, an object)."""
        return self.message_data()

    def events_received(self) -> tuple[int, str | None]:
        """How many events of the message were received, and the type of the last.

        Read at a failure from what is kept anyway, so that counting adds nothing to the
        per-event path: before the commit point the events held (pings are no events of the
        message: the SDKs drop them); after it, one `message_start`, per block its start, one
        entry per text, thinking or JSON delta, its other deltas and its stop (a block no
        longer open was stopped: the API sends one block at a time), and `message_delta`.
        """
        last: str | None = None
        if not self.committed:
            count = 0
            for event in self.held:
                kind = sse_event_name(event) if self.raw else event.type
                if kind and kind != "ping":
                    count, last = count + 1, kind
            return count, last
        extras = self.extras or {}
        open_block = self.open_block
        count = (self.message is not None) + (self.message_delta is not None)
        open_deltas = 0
        for index, block in self.blocks.items():
            extra = extras.get(index)
            deltas = len(block) - 1
            if extra:
                deltas += ("signature" in extra) + len(extra.get("citations", ()))
                deltas += len(extra.get("other", ()))
            if index == open_block:
                open_deltas = deltas
            count += 1 + deltas + (index != open_block)
        if self.message_delta is not None:
            last = "message_delta"
        elif open_block is not None and open_block in self.blocks:
            last = "content_block_delta" if open_deltas else "content_block_start"
        elif self.blocks:
            last = "content_block_stop"
        else:
            last = "message_start" if self.message is not None else None
        return count, last


def sse_event_name(event: bytes) -> str | None:
    """The `event:` field of one raw SSE event, or None."""
    start = event.find(b"event:")
    if start < 0 or (start and event[start - 1] not in b"\r\n"):
        return None
    end = event.find(b"\n", start)
    value = event[start + 6 : end if end >= 0 else len(event)]
    return value.strip().decode("utf-8", "replace")


def sse_data(event: bytes) -> bytes | None:
    """The `data:` field of one raw SSE event (several `data:` lines joined by newlines)."""
    lines = [
        line[5:].removeprefix(b" ")
        for line in event.replace(b"\r\n", b"\n").split(b"\n")
        if line.startswith(b"data:")
    ]
    return b"\n".join(lines) if lines else None


def _block_data(block: dict[str, Any], text: str, extra: dict[str, Any] | None) -> Any:
    """A content block as far as it was delivered: its start, completed by its deltas."""
    kind = block.get("type")
    if kind == "text":
        block["text"] = (block.get("text") or "") + text
    elif kind == "thinking":
        block["thinking"] = (block.get("thinking") or "") + text
    elif text.strip() and "input" in block:  # tool_use, server_tool_use, mcp_tool_use ...
        block["input"] = _tool_input(text)
    if extra:
        if "signature" in extra:
            block["signature"] = extra["signature"]
        if "citations" in extra:
            block["citations"] = [*(block.get("citations") or ()), *extra["citations"]]
        if "other" in extra:
            block.update(other_delta_fields(block.get, extra["other"]))
    return block


def _tool_input(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        # Not valid JSON (fine-grained tool streaming, or a stream cut short): as far as it
        # goes, as the SDK's own stream helper parses it.
        import jiter

        try:
            return jiter.from_json(text.encode(), partial_mode="trailing-strings")
        except ValueError:
            return {}


def other_delta_fields(current: Callable[[str], Any], deltas: list[dict[str, Any]]) -> Any:
    """What the deltas without a rule of their own change in their block, by field.

    `compaction_delta` replaces the fields it carries, as the SDK's stream helper does; a
    delta type newer than this code extends a string field and replaces anything else, as
    every string delta the API has sent so far does.
    """
    update: dict[str, Any] = {}
    for delta in deltas:
        fields = dict(delta)
        kind = fields.pop("type", None)
        for key, value in fields.items():
            before = update[key] if key in update else current(key)
            extend = kind != "compaction_delta" and isinstance(before, str)
            update[key] = before + value if extend and isinstance(value, str) else value
    return update
