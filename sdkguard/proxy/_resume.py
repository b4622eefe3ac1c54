"""Continuation in the relay (`resume`): one message across attempts, as raw SSE.

With `resume` on, every event after the commit point is read as JSON once (`process`): a
continuation's events go through the `Splicer` (one message: no second `message_start`,
indices going on, the repeated tail removed, usage summed), then through the `Holder` (a
block that is not text reaches the client only once the message went on past it), and what
goes out is recorded (`delivered`), so that the next continuation request carries exactly
what the client has. An event the splice leaves as it was is relayed byte for byte; the
others are written anew.

The rules are the library's (`_continuation`); the prefill refusals seen are the same
process-wide memory (`_continuation.PREFILL_REFUSED`).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from sdkguard import _continuation
from sdkguard._continuation import Holder, Splicer
from sdkguard._protocol import StreamProtocol, sse_data

__all__ = ["Resume", "sse_event"]

logger = logging.getLogger("sdkguard.proxy")


def sse_event(data: dict[str, Any]) -> bytes:
    """One SSE event of the Messages API, written anew from its JSON data."""
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    return b"event: " + str(data.get("type")).encode() + b"\ndata: " + body + b"\n\n"


class Resume:
    """What continuing one relayed message needs: what the client got, the original request,
    what each abandoned attempt billed, and the splice of the current continuation."""

    __slots__ = (
        "body",
        "delivered",
        "held",
        "holder",
        "inputs",
        "model",
        "name",
        "planned",
        "prefill",
        "raw_body",
        "sending",
        "splicer",
        "user_turn",
    )

    def __init__(self, raw_body: bytes, name: str) -> None:
        self.raw_body = raw_body
        self.name = name
        self.body: Any = None
        """The original request's JSON, parsed at the first failure after content."""
        self.model = ""
        self.reset()

    def reset(self) -> None:
        """A restart from scratch (before content, or a converted call not continued)."""
        self.delivered = StreamProtocol(raw=True, keep_content=True)
        """What the client got (a converted call: what it will get), as recorded."""
        # Recorded only once past the commit point, and read as such (`events_received`).
        self.delivered.committed = True
        self.holder = Holder()
        self.held: list[tuple[str, dict[str, Any], bytes]] = []
        self.splicer: Splicer | None = None
        self.inputs: list[dict[str, Any]] = []
        self.planned: tuple[bytes, bytes, bool, Splicer] | None = None
        self.prefill = False
        self.user_turn = b""
        self.sending: bytes | None = None
        """The body of the next attempt: a continuation request (None: the original)."""

    # -- events -----------------------------------------------------------------------------

    def process(self, event: bytes, kind: str | None) -> bytes:
        """The bytes to relay for one event from the upstream (after the commit point), its
        `event:` name `kind` (`sse_event_name`)."""
        if kind is None or kind == "ping":
            return event  # pings and comments: no JSON, nothing to record
        try:
            data = json.loads(sse_data(event) or b"null")
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return event  # not the API's: the client's SDK judges it, as without resume
        splicer = self.splicer
        if splicer is None:
            return self._deliver(kind, data, event)
        spliced = splicer.feed(data)
        if len(spliced) == 1 and spliced[0] == data:
            return self._deliver(kind, data, event)  # unchanged: byte for byte
        return b"".join(
            [self._deliver(str(item.get("type")), item, sse_event(item)) for item in spliced]
        )

    def _deliver(self, kind: str, data: dict[str, Any], event: bytes) -> bytes:
        block_type = None
        if kind == "content_block_start":
            block_type = (data.get("content_block") or {}).get("type")
        step = self.holder.step(kind, block_type)
        if step == Holder.HOLD:
            self.held.append((kind, data, event))
            return b""
        record = self.delivered.record_data
        if step == Holder.PASS:
            record(kind, data)
            return event
        self.held.append((kind, data, event))
        batch, self.held = self.held, []
        for held_kind, held_data, _ in batch:
            record(held_kind, held_data)
        return b"".join(held_event for _, _, held_event in batch)

    def attempt_ended(self) -> None:
        """An attempt broke: what it held never reached the client."""
        self.holder = Holder()
        self.held = []

    # -- the continuation request -----------------------------------------------------------

    def plan(self) -> str | None:
        """Plan the next continuation; None, or why the message cannot be continued."""
        if self.body is None:
            try:
                self.body = json.loads(self.raw_body)
            except (ValueError, UnicodeDecodeError):
                return "the request body is not JSON"
            if isinstance(self.body, dict):
                self.model = str(self.body.get("model"))
        protocol = self.delivered
        planned = _continuation.plan(
            self.body,
            self.model,
            protocol.message_data(),
            block_indices=protocol.blocks,
            open_block=protocol.open_block,
            previous=self.splicer,
            inputs=self.inputs,
        )
        if isinstance(planned, str):
            return planned
        encoded_user_turn = _encoded(planned.user_turn)
        self.planned = (_encoded(planned.body), encoded_user_turn, planned.prefill, planned.splicer)
        self.inputs = planned.inputs
        return None

    def begin(self) -> None:
        """The planned continuation is the next attempt's request."""
        assert self.planned is not None
        body, self.user_turn, self.prefill, self.splicer = self.planned
        self.sending = body
        self.attempt_ended()

    def refused(self, status: int, answer: bytes) -> bool:
        """Whether `answer` is the model refusing the prefill just sent: then the next send is
        the user turn (no attempt spent), and the model is remembered for the process."""
        if not self.prefill:
            return False
        try:
            body = json.loads(answer)
        except (ValueError, UnicodeDecodeError):
            return False
        if not _continuation.is_prefill_refusal(status, body):
            return False
        _continuation.PREFILL_REFUSED.add(self.model)
        logger.info(
            "%s: %s refuses an assistant prefill; continuing with a user turn (remembered "
            "for this process)",
            self.name,
            self.model,
        )
        self.prefill = False
        self.sending = self.user_turn
        if self.splicer is not None:
            self.splicer.stripped = ""
        return True


def _encoded(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode()
