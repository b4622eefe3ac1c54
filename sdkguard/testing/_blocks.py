"""The content blocks of a fake reply (`faults.text`, `thinking`, `tool_use` make them).

Apart from `faults` so that the wire format (`_sse`), which renders them, and the answers,
which hold them, both import them without importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Block", "Text", "Thinking", "ToolUse"]


@dataclass(frozen=True)
class Block:
    """Base of the content blocks of an `Ok` reply."""


@dataclass(frozen=True)
class Text(Block):
    """A text block, streamed as `deltas` `text_delta` events."""

    text: str
    deltas: int = 1


@dataclass(frozen=True)
class Thinking(Block):
    """A thinking block: `deltas` `thinking_delta` events, then one `signature_delta`."""

    thinking: str
    signature: str = "sig"
    deltas: int = 1


@dataclass(frozen=True)
class ToolUse(Block):
    """A tool_use block; its input, serialized as JSON, is split into `input_json_delta` events."""

    name: str
    input: Mapping[str, Any]
    id: str
    deltas: int = 2
