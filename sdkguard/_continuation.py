"""Continuation after content, the pure part: the request that continues a message, and the
splice of its answer into the stream already delivered. No I/O.

When a stream breaks after content reached the consumer (and `resume` is on), the drivers
(`_stream`'s guards, the proxy's relay) send the request `continuation_body` builds and feed
its events to a `Splicer`, which turns them into the rest of the message the consumer is
reading: no second `message_start`, block indices going on, the interrupted text block
extended, the text the model repeated removed, one `message_delta` with the usage summed.

`Holder` keeps the delivered part continuable: while `resume` is on, a block that is not
text reaches the consumer only once the message has gone on past it (a text block began) or
is whole (`message_delta`), so what was delivered never ends in a thinking block (an
assistant turn cannot), an unfinished tool call or a server tool's unfinished result.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CONTINUE_PROMPT",
    "PREFILL_REFUSED",
    "Holder",
    "NotContinued",
    "Plan",
    "Splicer",
    "continuation_body",
    "delivered_tokens",
    "is_prefill_refusal",
    "not_continued_reason",
    "overlap",
    "plan",
    "prior_usage",
]

CONTINUE_PROMPT = (
    "Your answer above was cut off. Continue it exactly where it stops, "
    "without repeating anything already written."
)
"""The user turn of a continuation request sent without prefill."""

_PREFILL_REFUSAL = "does not support assistant message prefill"
PREFILL_REFUSED: set[str] = set()
"""Models seen refusing an assistant prefill, for the life of the process (the library's
guards and the proxy's relay share it)."""
_USAGE_COUNTS = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "output_tokens",
)
_OVERLAP_WINDOW = 200
"""How far back (characters) a repeated tail may begin."""
_OVERLAP_WORDS = 12
"""How many of the last words a repeated tail may cover."""


class NotContinued(Exception):
    """This message cannot be continued; the reason in words."""


def is_prefill_refusal(status: int, body: Any) -> bool:
    """Whether an answer is the API refusing a prefill (HTTP 400, invalid_request_error)."""
    if status != 400:
        return False
    error = body.get("error") if isinstance(body, Mapping) else None
    message = error.get("message") if isinstance(error, Mapping) else body
    return isinstance(message, str) and _PREFILL_REFUSAL in message


def not_continued_reason(body: Any) -> str | None:
    """Why a request is never continued (None: it may be): forced tools, structured output."""
    if not isinstance(body, Mapping) or not isinstance(body.get("messages"), list):
        return "the request has no messages"
    choice = body.get("tool_choice")
    if isinstance(choice, Mapping) and choice.get("type") in ("tool", "any"):
        return "tool_choice forces a tool"
    config = body.get("output_config")
    if (isinstance(config, Mapping) and config.get("format")) or body.get("output_format"):
        return "the request asks for structured output"
    if not isinstance(body.get("max_tokens"), int):
        return "the request has no max_tokens"
    return None


def delivered_tokens(message: Mapping[str, Any]) -> int:
    """The output tokens of what was delivered: what the API reported, or an estimate of four
    characters a token when that is more (a broken stream reports its count only at its end)."""
    reported = (message.get("usage") or {}).get("output_tokens") or 0
    chars = 0
    for block in message.get("content") or ():
        for key in ("text", "thinking"):
            value = block.get(key)
            if isinstance(value, str):
                chars += len(value)
        if "input" in block:
            chars += len(json.dumps(block["input"]))
    return max(int(reported), math.ceil(chars / 4))


def _history_content(content: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The delivered blocks as an assistant turn may carry them."""
    kept: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type")
        if kind == "thinking" and not block.get("signature"):
            continue  # a thinking block is valid history only with its signature
        if kind == "text":
            if not block.get("text"):
                continue  # the API refuses empty text blocks
            # citations are the API's own to give: the text alone goes back
            kept.append({"type": "text", "text": block["text"]})
            continue
        kept.append(dict(block))
    while kept and kept[-1].get("type") in ("thinking", "redacted_thinking"):
        kept.pop()  # an assistant turn cannot end in a thinking block
    if kept and str(kept[-1].get("type", "")).endswith("tool_use"):
        raise NotContinued("the delivered part ends in a tool call")
    return kept


def _as_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return [dict(block) for block in content] if isinstance(content, list) else []


def continuation_body(
    body: Mapping[str, Any], delivered: Mapping[str, Any], *, prefill: bool
) -> tuple[dict[str, Any], str]:
    """The request that continues `delivered` (the message as far as it was delivered, as
    `StreamProtocol.message_data` has it), and the whitespace taken off its end.

    The original request, its `max_tokens` less the tokens already delivered, with the
    delivered part as an assistant turn: the last turn (`prefill`), or followed by a user turn
    asking to continue (`CONTINUE_PROMPT`). A prefill's trailing whitespace, which the API
    refuses, is taken off and returned. Raises `NotContinued`.
    """
    reason = not_continued_reason(body)
    if reason is not None:
        raise NotContinued(reason)
    content = _history_content(delivered.get("content") or ())
    left = int(body["max_tokens"]) - delivered_tokens(delivered)
    if left < 1:
        raise NotContinued("the delivered part used up max_tokens")
    out = copy.deepcopy(dict(body))
    out["max_tokens"] = left
    messages: list[Any] = out["messages"]
    if messages and isinstance(messages[-1], Mapping) and messages[-1].get("role") == "assistant":
        # the caller's own prefill: the answer went on from it
        own = _as_blocks(messages.pop()["content"])
        if own and content and own[-1].get("type") == "text" and content[0]["type"] == "text":
            content[0] = {"type": "text", "text": own.pop()["text"] + content[0]["text"]}
        content = own + content
    stripped = ""
    if prefill and content and content[-1]["type"] == "text":
        text = content[-1]["text"]
        kept = text.rstrip()
        stripped = text[len(kept) :]
        if kept:
            content[-1] = {"type": "text", "text": kept}
        else:
            content.pop()
    if not content:  # nothing to carry back: the request as it was
        return out, ""
    messages.append({"role": "assistant", "content": content})
    if not prefill:
        messages.append({"role": "user", "content": CONTINUE_PROMPT})
    return out, stripped


def prior_usage(
    attempt_inputs: Iterable[Mapping[str, Any]], delivered: Mapping[str, Any]
) -> dict[str, int]:
    """What the attempts before a continuation were billed: each one's input (as its
    `message_start` said), and the output tokens of everything delivered."""
    total = dict.fromkeys(_USAGE_COUNTS, 0)
    for usage in attempt_inputs:
        for key in _USAGE_COUNTS[:3]:
            total[key] += int(usage.get(key) or 0)
    total["output_tokens"] = delivered_tokens(delivered)
    return total


@dataclass(frozen=True, slots=True)
class Plan:
    """The next continuation of a delivered message, for the library and the proxy alike."""

    body: dict[str, Any]
    """The request to send: with the delivered part as a prefill, or followed by a user turn."""
    user_turn: dict[str, Any]
    """The request with the user turn (the same as `body` when no prefill is tried)."""
    prefill: bool
    splicer: Splicer
    """Splices the continuation's answer into what was delivered."""
    inputs: list[dict[str, Any]]
    """The input usage of every attempt abandoned so far, this one included."""


def plan(
    request: Any,
    model: str,
    delivered: dict[str, Any] | None,
    *,
    block_indices: Iterable[int],
    open_block: int | None,
    previous: Splicer | None,
    inputs: list[dict[str, Any]],
) -> Plan | str:
    """Plan the continuation of `delivered` (the message as far as the consumer got it) for
    `request`; or say why it cannot be continued.

    Prefill is tried unless `model` was seen refusing it. `block_indices` are the indices of
    the blocks delivered and `open_block` the one not stopped yet; `previous` is the splicer
    of the continuation before this one, if any.
    """
    if delivered is None:
        return "nothing of the message was recorded"
    prefill = model not in PREFILL_REFUSED
    try:
        body, stripped = continuation_body(request, delivered, prefill=prefill)
        user_turn = continuation_body(request, delivered, prefill=False)[0] if prefill else body
    except NotContinued as why:
        return str(why)
    start = previous.start_usage if previous is not None else delivered["usage"]
    inputs = [*inputs, start or {}]
    content = delivered.get("content") or []
    last: Mapping[str, Any] = content[-1] if content else {}
    last_index = max(block_indices, default=-1)
    last_text = str(last.get("text", "")) if last.get("type") == "text" else None
    splicer = Splicer(
        blocks=last_index + 1,
        open_text=last_text if open_block == last_index else None,
        stripped=stripped,
        prior=prior_usage(inputs, delivered),
        last_text=last_text or "",
    )
    return Plan(body, user_turn, prefill, splicer, inputs)


def _word_starts(text: str) -> list[int]:
    starts = [
        i
        for i in range(max(0, len(text) - _OVERLAP_WINDOW), len(text))
        if not text[i].isspace() and (i == 0 or text[i - 1].isspace())
    ]
    return starts[-_OVERLAP_WORDS:]


def overlap(delivered: str, stripped: str, text: str, *, final: bool) -> int | None:
    """How much of `text`, the start of a continuation, repeats what was delivered: None while
    more of it is needed to tell (`final`: no more is coming).

    The repeated part is a tail of the delivered text that begins where a word begins (the
    last word as far as it was delivered, or more words), followed by the whitespace a
    prefill had taken off (`stripped`). Nothing else is removed: a continuation that starts
    with whitespace, or with a word the delivered text ended with but not at that word's
    start, is the model going on, and is kept.
    """
    tails = [delivered[start:] for start in _word_starts(delivered)]
    candidates = {""}
    for tail in tails:
        candidates.add(tail)
        if stripped:
            candidates.add(tail + stripped)
    if stripped:
        candidates.add(stripped)
    if not final and any(len(c) > len(text) and c.startswith(text) for c in candidates):
        return None
    return max((len(c) for c in candidates if text.startswith(c)), default=0)


class Splicer:
    """Turns a continuation's events (as their JSON data) into the rest of the delivered
    message.

    `blocks`: how many blocks were delivered; `open_text`: the text of the last one when it is
    a text block whose `content_block_stop` was not delivered (the interrupted block), else
    None; `last_text`: the text of the last block delivered when it is a finished text block
    (a continuation that begins a new text block repeating its tail has the tail removed,
    and a new block with nothing else is dropped); `stripped`: whitespace the prefill took
    off; `prior`: the usage of the attempts before (`prior_usage`).
    """

    __slots__ = (
        "buffer",
        "closed",
        "index_map",
        "last_text",
        "merging",
        "next_index",
        "open_index",
        "open_text",
        "pending",
        "prior",
        "start_usage",
        "stripped",
    )

    def __init__(
        self,
        *,
        blocks: int,
        open_text: str | None,
        stripped: str,
        prior: Mapping[str, int],
        last_text: str = "",
    ) -> None:
        self.last_text = last_text
        self.next_index = blocks
        self.open_index = blocks - 1 if open_text is not None and blocks else None
        self.open_text = open_text or ""
        self.stripped = stripped
        self.prior = dict(prior)
        self.index_map: dict[int, int] = {}
        self.merging = False
        """The continuation's first block extends the interrupted one; its start is
        being compared with the delivered text (`buffer`)."""
        self.buffer: str | None = None
        self.closed = self.open_index is None
        self.pending: tuple[dict[str, Any], str] | None = None
        """The continuation's first block, a text block after a finished one: held until it
        has text (the whitespace a prefill took off aside), dropped if it has none."""
        self.start_usage: dict[str, Any] = {}
        """The continuation's usage as its `message_start` said (its input)."""

    def feed(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The events to deliver for one event of the continuation."""
        kind = data.get("type")
        if kind == "message_start":
            message = data.get("message") or {}
            self.start_usage = dict(message.get("usage") or {})
            return []
        if kind == "content_block_start":
            return self._block_start(data)
        if self.pending is not None:
            return self._pending(data)
        if kind == "content_block_delta":
            return self._delta(data)
        if kind == "content_block_stop":
            index = data.get("index", 0)
            if self.merging and index == 0:
                out = self._settle(final=True)
                self.merging = False
                self.closed = True
                return [*out, {**data, "index": self.open_index}]
            return [{**data, "index": self._mapped(index)}]
        if kind == "message_delta":
            out = self._settle(final=True) if self.merging else []
            if not self.closed:
                out.extend(self._close_open())
            return [*out, self._summed(data)]
        return [dict(data)]

    def _mapped(self, index: int) -> int:
        mapped = self.index_map.get(index)
        if mapped is None:
            mapped = self.index_map[index] = self.next_index
            self.next_index += 1
        return mapped

    def _close_open(self) -> list[dict[str, Any]]:
        self.closed = True
        return [{"type": "content_block_stop", "index": self.open_index}]

    def _block_start(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        index = data.get("index", 0)
        block = data.get("content_block") or {}
        if not self.closed and index == 0 and block.get("type") == "text" and not self.merging:
            self.merging = True
            self.index_map[0] = self.open_index  # type: ignore[assignment]
            self.buffer = block.get("text") or ""
            return self._settle(final=False)
        out = self._close_open() if not self.closed else []
        if index == 0 and block.get("type") == "text" and not block.get("text"):
            self.pending = (dict(data), "")
            return out
        return [*out, {**data, "index": self._mapped(index)}]

    def _pending(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        assert self.pending is not None
        start, text = self.pending
        kind, index = data.get("type"), data.get("index", 0)
        delta = data.get("delta") or {}
        if kind == "content_block_delta" and index == 0 and delta.get("type") == "text_delta":
            text += delta.get("text") or ""
            cut = overlap(self.last_text, self.stripped, text, final=False)
            if cut is None or not text[cut:]:
                self.pending = (start, text)
                return []
            return self._unpend(start, text[cut:])
        if kind == "content_block_stop" and index == 0:
            cut = overlap(self.last_text, self.stripped, text, final=True) or 0
            if not text[cut:]:
                self.pending = None
                return []  # a block with nothing new: dropped
            return [*self._unpend(start, text[cut:]), *self.feed(data)]
        cut = overlap(self.last_text, self.stripped, text, final=True) or 0
        return [*self._unpend(start, text[cut:]), *self.feed(data)]

    def _unpend(self, start: dict[str, Any], text: str) -> list[dict[str, Any]]:
        self.pending = None
        new = self._mapped(0)
        out = [{**start, "index": new}]
        if text:
            delta = {"type": "text_delta", "text": text}
            out.append({"type": "content_block_delta", "index": new, "delta": delta})
        return out

    def _delta(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        index = data.get("index", 0)
        delta = data.get("delta") or {}
        if self.merging and index == 0:
            if delta.get("type") == "text_delta" and self.buffer is not None:
                self.buffer += delta.get("text") or ""
                return self._settle(final=False)
            return [{**data, "index": self.open_index}]
        return [{**data, "index": self._mapped(index)}]

    def _settle(self, *, final: bool) -> list[dict[str, Any]]:
        """The merged block's buffered start, once its overlap is known."""
        text = self.buffer
        if text is None:
            return []
        cut = overlap(self.open_text, self.stripped, text, final=final)
        if cut is None:
            return []
        self.buffer = None
        rest = text[cut:]
        if not rest:
            return []
        delta = {"type": "text_delta", "text": rest}
        return [{"type": "content_block_delta", "index": self.open_index, "delta": delta}]

    def _summed(self, data: Mapping[str, Any]) -> dict[str, Any]:
        usage = dict(data.get("usage") or {})
        for key in _USAGE_COUNTS:
            own = usage.get(key)
            if own is None:
                own = self.start_usage.get(key)
            usage[key] = self.prior.get(key, 0) + int(own or 0)
        return {**data, "usage": usage}


class Holder:
    """Holds back blocks that are not text until the message goes on past them.

    Fed each event's type and the type of the block a `content_block_start` begins; answers
    whether to deliver the event now (`PASS`), hold it (`HOLD`), or deliver everything held
    and then it (`RELEASE`): at the first delta of a text block that follows them, or at
    `message_delta`.
    """

    __slots__ = ("holding", "text_began")

    HOLD = 0
    PASS = 1
    RELEASE = 2

    def __init__(self) -> None:
        self.holding = False
        self.text_began = False

    def step(self, kind: str, block_type: str | None = None) -> int:
        if not self.holding:
            if kind == "content_block_start" and block_type != "text":
                self.holding = True
                return Holder.HOLD
            return Holder.PASS
        if kind == "content_block_start":
            self.text_began = block_type == "text"
        elif (kind == "content_block_delta" and self.text_began) or kind == "message_delta":
            self.holding = self.text_began = False
            return Holder.RELEASE
        return Holder.HOLD
