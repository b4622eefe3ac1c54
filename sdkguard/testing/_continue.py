"""The fake server playing the model for continuation requests (`faults.continuable`).

A request to continue carries the delivered part of a message as its last assistant turn:
as a prefill (the conversation ends with it) or followed by a user turn asking to continue.
`rest_of` matches that part against the scripted message block by block and answers with
what is left of it, as a model that continues exactly (or, with `repeat_words`, one that
repeats the last words first) would.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sdkguard.testing._blocks import Block, Text, Thinking, ToolUse
from sdkguard.testing.faults import Continuable, Ok, ok

__all__ = ["PREFILL_REFUSED", "ends_with_assistant", "rest_of"]

PREFILL_REFUSED = (
    "This model does not support assistant message prefill. "
    "The conversation must end with a user message."
)
"""The API's words (HTTP 400, `invalid_request_error`) for a prefill to a model that
refuses it (Claude 4.6 and later)."""

_WORD = re.compile(r"\S+\s*")


def ends_with_assistant(body: Any) -> bool:
    """Whether a request body's conversation ends with an assistant turn (a prefill)."""
    messages = body.get("messages") if isinstance(body, dict) else None
    return (
        isinstance(messages, list)
        and bool(messages)
        and isinstance(messages[-1], dict)
        and messages[-1].get("role") == "assistant"
    )


def _delivered(body: Any) -> list[dict[str, Any]] | None:
    """The assistant turn a continuation request carries, as content blocks, or None."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages:
        return None
    turn: Any = messages[-1]
    if isinstance(turn, dict) and turn.get("role") == "user" and len(messages) >= 2:
        if "continue" not in json.dumps(turn.get("content")).lower():
            return None  # a user turn asking something else: a conversation
        turn = messages[-2]
    if not isinstance(turn, dict) or turn.get("role") != "assistant":
        return None
    content = turn.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list) and all(isinstance(block, dict) for block in content):
        return content
    return None


def _same(block: Block, sent: dict[str, Any]) -> bool:
    if isinstance(block, Thinking):
        return sent.get("type") == "thinking" and sent.get("thinking") == block.thinking
    if isinstance(block, ToolUse):
        return (
            sent.get("type") == "tool_use"
            and sent.get("id") == block.id
            and json.dumps(sent.get("input"), sort_keys=True)
            == json.dumps(dict(block.input), sort_keys=True)
        )
    return isinstance(block, Text) and sent.get("type") == "text" and sent.get("text") == block.text


def _repeat_from(text: str, words: int) -> int:
    """Where the last `words` words of `text` begin (its length for none)."""
    if words <= 0:
        return len(text)
    starts = [match.start() for match in _WORD.finditer(text)]
    return starts[-words] if len(starts) >= words else 0


def rest_of(message: Continuable, body: Any) -> Ok:
    """The answer to `body`: the rest of `message` when `body` carries a delivered part of
    it, else `message` itself."""
    delivered = _delivered(body)
    blocks = message.blocks
    if not delivered or len(delivered) > len(blocks):
        return message
    last = len(delivered) - 1
    for block, sent in zip(blocks[:last], delivered[:last], strict=True):
        if not _same(block, sent):
            return message
    block, sent = blocks[last], delivered[last]
    rest: list[Block]
    if isinstance(block, Text) and sent.get("type") == "text":
        text = sent.get("text")
        if not isinstance(text, str) or not block.text.startswith(text):
            return message
        start = min(_repeat_from(text, message.repeat_words), len(text))
        remaining = block.text[start:]
        deltas = max(1, round(block.deltas * len(remaining) / max(1, len(block.text))))
        rest = [Text(remaining, deltas=deltas), *blocks[last + 1 :]]
        if text == block.text and not remaining:
            rest = list(blocks[last + 1 :])
    elif _same(block, sent):
        rest = list(blocks[last + 1 :])
    else:
        return message
    given = dict(message.usage or {})
    given.pop("output_tokens", None)
    stop_reason = message.stop_reason or (
        "tool_use" if isinstance(blocks[-1], ToolUse) else "end_turn"
    )
    return ok(
        *(rest or [Text("")]),
        model=message.model,
        stop_reason=stop_reason,
        usage=given,
        ping_after_start=message.ping_after_start,
        stream=message.stream,
    )
