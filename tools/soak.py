"""Chaos soak: thousands of guarded calls under faults, each checked against what the server sent.

    python tools/soak.py                      # 2,000 calls, 50 at a time, 30% of requests faulted
    python tools/soak.py --calls 400          # the short version CI runs
    python tools/soak.py --memory-calls 10000 # memory over a long run (RSS and tracemalloc)
    python tools/soak.py --memory-calls 10000 --unguarded   # the same, the SDK alone
    python tools/soak.py --readme docs/proof.md   # write the figures into the proof page's tables

Calls are mixed: sync and async; `create(stream=True)`, `create()`, `messages.stream()` read
event by event and with `get_final_message()` only. The fake server (`sdkguard.testing`, on
127.0.0.1) answers each request from a script in which 30% of the answers are faults drawn
from every fault kind of the kit and the hostile answers, and the port closes for a moment
now and then. Checked for every call:

- it ended within its deadline (a hung call is cancelled and counted);
- when it succeeded, what the consumer saw equals, event for event, what the server sent in
  the attempt that succeeded, and every earlier attempt was a failed one;
- when it failed, it failed only as the contract allows (content had reached the consumer,
  the failure is not retried, attempts ran out, the deadline would pass, the retry budget is
  empty), with the documented error type for its last attempt.

Checked at the end: no thread, socket, asyncio task or span left behind, and no API key,
request header value or prompt text anywhere in the output (log lines, spans, errors with
their notes and causes, retry events, `sdkguard doctor`). Exit status 1 if anything failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import gc
import json
import linecache
import logging
import os
import random
import re
import secrets
import statistics
import subprocess
import sys
import threading
import time
import traceback
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider

import sdkguard
from sdkguard.testing import FakeAnthropic, SentResponse, faults
from sdkguard.testing._sse import plan
from sdkguard.testing.faults import Answer

MODES = ("create_stream", "create", "stream_events", "stream_final")
MODE_NAMES = {
    "create_stream": "create(stream=True)",
    "create": "create()",
    "stream_events": "stream() events",
    "stream_final": "stream() get_final_message()",
}
# The policy under test: the defaults, with every limit scaled down so that 2,000 calls take
# a minute, not hours. The retry budget is off unless --retry-budget: 30% of requests failing
# is an outage by its measure, and the soak measures recovery (see docs/policy.md, Retry budget).
POLICY: dict[str, Any] = {
    "max_attempts": 5,
    "backoff_initial": 0.02,
    "backoff_max": 0.1,
    "connect_timeout": 1.0,
    "response_timeout": 2.0,
    "idle_timeout": 2.0,
    "progress_timeout": 1.0,
    "deadline": 15.0,
    "retry_budget": False,
}
CLIENT_READ_TIMEOUT = 3.0  # plain calls keep the client's own read timeout
# A call may run past its deadline by one idle limit: a stream that is delivering content is
# not cut by the deadline. Beyond that and a second of scheduling, it hung.
LATE = POLICY["deadline"] + POLICY["idle_timeout"] + 1.0
HANG = LATE + 5.0

# What must never appear in any output: made up for each run.
API_KEY = "sk-ant-soak-" + secrets.token_hex(12)
HEADER_VALUE = "hdr-" + secrets.token_hex(12)
PROMPT = "soak prompt " + secrets.token_hex(12)
SECRETS = {"API key": API_KEY, "request header value": HEADER_VALUE, "prompt text": PROMPT}
_SECRET = re.compile("|".join(re.escape(v) for v in SECRETS.values()))

COMMIT_EVENTS = frozenset(
    {"content_block_delta", "content_block_stop", "message_delta", "message_stop"}
)
HELPER_EVENTS = frozenset({"text", "citation", "input_json", "thinking", "signature"})
# Faults that end a body cleanly: what the server sent is what the consumer reads, with no
# message_stop made for it (a failure after message_delta gets one: docs/streams.md).
CLEAN_ENDS = frozenset({"close_after"})
STALLS = frozenset({"stall_before_headers", "stall_after", "pings_only_after"})

# -- the faults ---------------------------------------------------------------------------------

REPLIES = (
    faults.ok(),
    faults.ok(faults.thinking("Let me think about it.", deltas=3), faults.text("Done.", deltas=2)),
    faults.ok(
        faults.text("Looking it up.", deltas=2),
        faults.tool_use("lookup", {"city": "Zürich", "days": [1, 2]}, id="toolu_soak", deltas=3),
    ),
    faults.ok(faults.text("naïve café → 日本語 🦊 " * 8, deltas=12)),
)
HUGE = faults.huge_line()  # built once: 10 MB


def _events(reply: faults.Ok) -> int:
    """How many events the reply's stream has, pings included."""
    return 1 + len(plan(reply).after_start)


def _n(rng: random.Random, reply: faults.Ok) -> int:
    """A point in the reply's events: before or after the commit point, or at the very end."""
    return rng.randint(0, _events(reply))


def _stream_fault(make: Callable[..., Answer]) -> Callable[[random.Random], Answer]:
    def draw(rng: random.Random) -> Answer:
        reply = rng.choice(REPLIES)
        return make(_n(rng, reply), reply=reply)

    return draw


def _no_message_stop(rng: random.Random) -> Answer:
    reply = rng.choice(REPLIES)
    return faults.close_after(_events(reply) - 1, reply=reply)  # ends right after message_delta


def _fragmented(rng: random.Random) -> Answer:
    cuts = [rng.randint(1, 1500) for _ in range(rng.randint(1, 30))]
    ending = rng.choice(["\n", "\r\n", "\r"])
    return faults.fragmented(rng.choice(REPLIES), cuts, line_ending=ending)


# Every fault kind of the kit and the hostile answers, with their weights (the 10 MB line
# weighs less: it costs tens of milliseconds of CPU each time).
KINDS: dict[str, tuple[float, Callable[[random.Random], Answer]]] = {
    "reset_before_headers": (1, lambda rng: faults.reset_before_headers()),
    "reset_after": (1, _stream_fault(faults.reset_after)),
    "reset_at_byte": (1, lambda rng: faults.reset_at_byte(rng.randint(0, 2000))),
    "stall_before_headers": (1, lambda rng: faults.stall_before_headers()),
    "stall_before_headers_then_reply": (1, lambda rng: faults.stall_before_headers(0.3)),
    "stall_after": (1, _stream_fault(faults.stall_after)),
    "stall_after_then_rest": (
        1,
        lambda rng: faults.stall_after(_n(rng, REPLIES[0]), 0.3),
    ),
    "pings_only_after": (1, lambda rng: faults.pings_only_after(rng.randint(0, 3), 0.1)),
    "pings_only_then_rest": (1, lambda rng: faults.pings_only_after(rng.randint(0, 3), 0.1, 0.4)),
    "trickle": (1, lambda rng: faults.trickle(20_000, reply=rng.choice(REPLIES))),
    "status_retried": (
        1,
        lambda rng: rng.choice(
            [
                faults.status(529),
                faults.status(500),
                faults.status(503, headers={"retry-after": "0.05"}),
                faults.status(429, headers={"retry-after-ms": "30"}),
                faults.status(408),
            ]
        ),
    ),
    "status_final": (
        1,
        lambda rng: rng.choice(
            [faults.status(400), faults.status(529, {"x-should-retry": "false"})]
        ),
    ),
    "sse_error_after": (
        1,
        lambda rng: faults.sse_error_after(
            _n(rng, REPLIES[0]), rng.choice(["overloaded_error", "api_error", "rate_limit_error"])
        ),
    ),
    "sse_error_final": (
        1,
        lambda rng: faults.sse_error_after(_n(rng, REPLIES[0]), "invalid_request_error"),
    ),
    "truncate_after": (1, _stream_fault(faults.truncate_after)),
    "close_after": (1, _stream_fault(faults.close_after)),
    # hostile answers
    "malformed_after (invalid JSON)": (1, _stream_fault(faults.malformed_after)),
    "no_message_stop": (1, _no_message_stop),
    "unknown_event_after": (
        1,
        lambda rng: faults.unknown_event_after(rng.randint(1, 8), reply=rng.choice(REPLIES)),
    ),
    "huge_line (10 MB)": (0.3, lambda rng: HUGE),
    "invalid_utf8_after": (1, _stream_fault(faults.invalid_utf8_after)),
    "proxy_error (HTML 502/504)": (1, lambda rng: faults.proxy_error(rng.choice([502, 504]))),
    "wrong_content_type": (1, lambda rng: faults.wrong_content_type()),
    "fragmented (any line ending)": (1, _fragmented),
}
CLOSED_PORT = "closed port (refused)"


def draw_script(
    rng: random.Random, size: int, fault_rate: float, names: list[str]
) -> tuple[list[Answer], list[str]]:
    """`size` answers, `fault_rate` of them faults of the kinds `names`; and each one's kind."""
    weights = [KINDS[name][0] for name in names]
    answers: list[Answer] = []
    kinds: list[str] = []
    for _ in range(size):
        if rng.random() < fault_rate:
            kind = rng.choices(names, weights)[0]
            answers.append(KINDS[kind][1](rng))
        else:
            kind = "ok"
            answers.append(rng.choice(REPLIES))
        kinds.append(kind)
    return answers, kinds


# -- one call -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    number: int
    flavour: str  # sync, async
    mode: str

    @property
    def id(self) -> str:
        return f"soak-{self.number}"

    def args(self) -> dict[str, Any]:
        return {
            "model": "claude-soak",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": PROMPT}],
            "metadata": {"user_id": self.id},
        }


@dataclass
class Seen:
    """What the consumer got: events or helper event types as they came, the message, the error."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    message: Any = None
    error: BaseException | None = None
    elapsed: float = 0.0
    hung: bool = False
    retries: list[str] = field(default_factory=list)


# The call the retry hook is about, per thread and task: a box the call empties when it ends.
# Contexts outlive calls (a worker thread keeps its context; a timer a task scheduled, even
# cancelled, keeps a copy until it is due) and must not keep a call and its message alive.
_current: contextvars.ContextVar[list[Seen] | None] = contextvars.ContextVar(
    "soak_call", default=None
)


@contextlib.contextmanager
def calling(seen: Seen) -> Iterator[None]:
    box = [seen]
    token = _current.set(box)
    started = time.monotonic()
    try:
        yield
    except Exception as err:
        seen.error = err
    finally:
        seen.elapsed = time.monotonic() - started
        box.clear()
        _current.reset(token)


def consume_sync(client: anthropic.Anthropic, plan: Plan) -> Seen:
    seen = Seen()
    with calling(seen):
        args = plan.args()
        if plan.mode == "create":
            seen.message = client.messages.create(**args)
        elif plan.mode == "create_stream":
            with client.messages.create(**args, stream=True) as stream:
                for event in stream:
                    seen.events.append((event.type, event.to_dict()))
        else:
            with client.messages.stream(**args) as helper:
                if plan.mode == "stream_events":
                    for helper_event in helper:
                        seen.types.append(helper_event.type)
                seen.message = helper.get_final_message()
    return seen


async def consume_async(client: anthropic.AsyncAnthropic, plan: Plan, seen: Seen) -> None:
    with calling(seen):
        args = plan.args()
        if plan.mode == "create":
            seen.message = await client.messages.create(**args)
        elif plan.mode == "create_stream":
            async with await client.messages.create(**args, stream=True) as stream:
                async for event in stream:
                    seen.events.append((event.type, event.to_dict()))
        else:
            async with client.messages.stream(**args) as helper:
                if plan.mode == "stream_events":
                    async for helper_event in helper:
                        seen.types.append(helper_event.type)
                seen.message = await helper.get_final_message()


# -- ground truth -------------------------------------------------------------------------------


def message_from_events(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The message a stream's events make, built independently of the SDK."""
    message: dict[str, Any] = {}
    json_parts: dict[int, str] = {}
    for name, data in events:
        if name == "message_start":
            message = {**data["message"], "content": [], "usage": dict(data["message"]["usage"])}
        elif name == "content_block_start":
            message["content"].append(dict(data["content_block"]))
            json_parts[data["index"]] = ""
        elif name == "content_block_delta":
            block, delta = message["content"][data["index"]], data["delta"]
            kind = delta["type"]
            if kind == "text_delta":
                block["text"] += delta["text"]
            elif kind == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif kind == "signature_delta":
                block["signature"] = delta["signature"]
            elif kind == "input_json_delta":
                json_parts[data["index"]] += delta["partial_json"]
        elif name == "content_block_stop":
            block = message["content"][data["index"]]
            if block["type"] == "tool_use":
                block["input"] = json.loads(json_parts[data["index"]] or "{}")
        elif name == "message_delta":
            message.update(data["delta"])
            message["usage"].update(data["usage"])
    return message


def projection(message: dict[str, Any]) -> tuple[Any, ...]:
    """What a user reads of a message: ids, stop reason, output tokens, every block."""
    blocks = tuple(
        tuple(
            block.get(key)
            for key in ("type", "text", "thinking", "signature", "id", "name", "input")
        )
        for block in message.get("content", ())
    )
    usage = message.get("usage") or {}
    return (
        message.get("id"),
        message.get("model"),
        message.get("role"),
        message.get("stop_reason"),
        usage.get("output_tokens"),
        blocks,
    )


def sent_message(sent: SentResponse, stream: bool) -> dict[str, Any]:
    return message_from_events(sent.events) if stream else json.loads(sent.body or b"{}")


def delivered_text(message: Any) -> str:
    return "".join(getattr(block, "text", "") for block in getattr(message, "content", None) or ())


# -- checking ------------------------------------------------------------------------------------


@dataclass
class Stats:
    calls: int = 0
    by_flavour: Counter[str] = field(default_factory=Counter)
    by_mode: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    attempts: int = 0
    attempts_metric: int = 0
    faulted_requests: Counter[str] = field(default_factory=Counter)
    closed_port_blips: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    kind_outcomes: dict[str, Counter[str]] = field(default_factory=dict)
    retries: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    violation_count: int = 0
    hangs: int = 0
    late: int = 0
    slowest: float = 0.0
    leaks: dict[str, Any] = field(default_factory=dict)
    secrets: Counter[str] = field(default_factory=Counter)
    scanned: Counter[str] = field(default_factory=Counter)
    memory: dict[str, Any] = field(default_factory=dict)

    def scan(self, where: str, text: str) -> None:
        """Look for the secrets in a piece of the run's output (from any thread)."""
        with _scan_lock:
            self.scanned[where] += 1
            for found in _SECRET.findall(text):
                self.secrets[f"{where}: {_secret_name(found)}"] += 1

    def violation(self, plan: Plan, what: str, seen: Seen, attempts: list[str]) -> None:
        self.violation_count += 1
        if len(self.violations) < 20:
            error = "" if seen.error is None else f"{type(seen.error).__qualname__}: {seen.error}"
            notes = getattr(seen.error, "__notes__", [])
            self.violations.append(
                f"{plan.id} ({plan.flavour}, {plan.mode}): {what}; attempts {attempts}; "
                f"retries {seen.retries}; error {error[:200]!r}; notes {notes}"
            )
            if seen.error is not None and len(self.violations) <= 3:  # where it came from
                self.violations.append(
                    "".join(traceback.format_exception(seen.error)[-40:]).replace("\n", "\n    ")
                )


class Checker:
    """Checks each call as it ends, against the server's record of what it sent."""

    def __init__(self, server: FakeAnthropic, client: anthropic.Anthropic, stats: Stats) -> None:
        self.server = server
        self.client = client
        self.stats = stats
        self.kinds: list[str] = []
        self._cursor = 0
        self._index: dict[str, list[int]] = {}

    def new_wave(self, kinds: list[str]) -> None:
        """The server's records were cleared and scripted anew."""
        self.kinds = kinds
        self._cursor = 0
        self._index.clear()

    def attempts_of(self, call_id: str) -> list[int]:
        requests = self.server.requests
        while self._cursor < len(requests):
            body = requests[self._cursor].body
            user = body.get("metadata", {}).get("user_id") if isinstance(body, dict) else None
            self._index.setdefault(str(user), []).append(self._cursor)
            self._cursor += 1
        return self._index.pop(call_id, [])

    def check(self, plan: Plan, seen: Seen) -> None:
        stats = self.stats
        stats.calls += 1
        stats.by_flavour[plan.flavour] += 1
        stats.by_mode[plan.mode] += 1
        stats.slowest = max(stats.slowest, seen.elapsed)
        stats.retries.update(seen.retries)
        stats.attempts += len(seen.retries) + 1
        indices = self.attempts_of(plan.id)
        sent = [self.server.sent[i] for i in indices]
        kinds = [self.kinds[i] if i < len(self.kinds) else "ok" for i in indices]
        met = {k for k in kinds if k != "ok"}
        if "connect_refused" in (*seen.retries, _last_reason(seen.error)):
            met.add(CLOSED_PORT)
        outcome = self._outcome(plan, seen, indices, sent, kinds)
        stats.outcomes[outcome] += 1
        for kind in met:
            stats.kind_outcomes.setdefault(kind, Counter())[
                "succeeded" if outcome in ("clean", "recovered") else outcome
            ] += 1
        if outcome == "clean" and met:
            stats.outcomes["clean"] -= 1
            stats.outcomes["recovered"] += 1
        if seen.error is not None:
            stats.scan("errors", "".join(traceback.format_exception(seen.error)))

    def _outcome(
        self, plan: Plan, seen: Seen, indices: list[int], sent: list[SentResponse], kinds: list[str]
    ) -> str:
        stats = self.stats

        def bad(what: str) -> str:
            stats.violation(plan, what, seen, kinds)
            return "violation"

        if seen.hung:
            stats.hangs += 1
            return bad("hung")
        if seen.elapsed > LATE:
            stats.late += 1
            bad(f"ran {seen.elapsed:.1f} s, past its deadline")
        # Each attempt the server saw carries its own number (attempts that never reached it,
        # refused or sent on a pooled connection the server had closed, leave gaps).
        attempts = len(seen.retries) + 1
        counts = [int(self.server.requests[i].headers["x-stainless-retry-count"]) for i in indices]
        if counts != sorted(set(counts)) or not all(0 <= c < attempts for c in counts):
            return bad(f"retry counts {counts} in {attempts} attempts")
        if seen.error is None and counts and counts[-1] != attempts - 1:
            return bad(f"succeeded on attempt {counts[-1] + 1} of {attempts}")
        if attempts > POLICY["max_attempts"]:
            return bad(f"{attempts} attempts")
        # Whether the request asked for a stream: a plain call may be sent as one.
        streamed = bool(indices) and self.server.requests[indices[-1]].stream
        if seen.error is None:
            return self._success(plan, seen, sent, streamed, bad)
        # Did the last attempt reach the server? Then the server saw its retry count.
        last = sent[-1] if counts and counts[-1] == attempts - 1 else None
        return self._failure(plan, seen, last, streamed, bad)

    def _success(
        self,
        plan: Plan,
        seen: Seen,
        sent: list[SentResponse],
        streamed: bool,
        bad: Callable[[str], str],
    ) -> str:
        if not sent:
            return bad("succeeded without a request")
        # The server records the end of an answer before its last write: never behind a client.
        last = sent[-1]
        if any(s.completed and s.status == 200 for s in sent[:-1]):
            return bad("an attempt before the last one was a whole answer")
        events = last.content_events()
        names = [name for name, _ in events]
        # A stream that broke once its message was whole (after message_delta) lost nothing.
        whole = streamed and names[-1:] in (["message_delta"], ["message_stop"])
        if last.status != 200 or not (last.completed or whole):
            return bad(f"succeeded on an answer that was not (status {last.status})")
        if whole and names[-1] == "message_delta" and last.fault not in CLEAN_ENDS:
            # broken there by a failure: sdkguard makes the message_stop it cut off
            events = [*events, ("message_stop", {"type": "message_stop"})]
            names.append("message_stop")
        if plan.mode == "create_stream" and seen.events != events:
            return bad("events differ from what the server sent")
        if (
            plan.mode == "stream_events"
            and [t for t in seen.types if t not in HELPER_EVENTS] != names
        ):
            return bad("helper events differ from what the server sent")
        if plan.mode != "create_stream" and not isinstance(seen.message, anthropic.BaseModel):
            return bad(f"returned {type(seen.message).__qualname__}, not a message")
        if seen.message is not None and projection(seen.message.to_dict()) != projection(
            sent_message(last, streamed)
        ):
            return bad("the message differs from what the server sent")
        return "clean" if len(sent) == 1 and not seen.retries else "recovered"

    def _failure(
        self,
        plan: Plan,
        seen: Seen,
        last: SentResponse | None,
        streamed: bool,
        bad: Callable[[str], str],
    ) -> str:
        err = seen.error
        assert err is not None
        if not isinstance(err, anthropic.APIError):
            return bad("not an anthropic.APIError")
        notes = list(getattr(err, "__notes__", []))
        why = notes[-1] if notes else ""
        delivered = seen.events if plan.mode == "create_stream" else [(t, {}) for t in seen.types]
        committed = any(name in COMMIT_EVENTS for name, _ in delivered)
        expected = self._expected_type(plan, last, streamed, _last_reason(err), committed)
        if type(err) is not expected:
            return bad(f"{type(err).__qualname__}, expected {expected.__qualname__}")
        if committed:
            if last is None:
                return bad("content without a request")
            sent_events = [e for e in last.content_events() if e[0] != "error"]
            if plan.mode == "create_stream" and seen.events != sent_events:
                return bad("events before the failure differ from what the server sent")
            helper_events = [t for t in seen.types if t not in HELPER_EVENTS]
            if plan.mode == "stream_events" and helper_events != [n for n, _ in sent_events]:
                return bad(
                    "helper events before the failure differ from what the server sent: "
                    f"{helper_events} != {[n for n, _ in sent_events]}"
                )
            if isinstance(err, sdkguard.StreamInterrupted) and (
                delivered_text(err.partial_message) != last.text
            ):
                return bad("partial_message differs from what was delivered")
            return "failed: after content"
        if not notes or "not retryable" in why:
            final = last is not None and (
                last.status == 400
                or last.headers.get("x-should-retry") == "false"
                or any(
                    d.get("error", {}).get("type") == "invalid_request_error"
                    for _, d in last.events
                )
            )
            return "failed: not retryable" if final else bad(f"not retried, notes {notes}")
        attempts = [n for n in notes if n.startswith("attempt ")]
        if "attempts failed" in why:
            if len(attempts) != POLICY["max_attempts"]:
                return bad(f"'{why}' after {len(attempts)} attempts")
            return "failed: attempts exhausted"
        if "deadline" in why:
            return "failed: deadline"
        if "retry budget" in why:
            return "failed: retry budget"
        return bad(f"gave up: {why}")

    def _expected_type(
        self, plan: Plan, last: SentResponse | None, streamed: bool, reason: str, committed: bool
    ) -> type:
        """The documented error type when the last attempt got `last` (None: it got nowhere).

        `streamed`: the request asked for a stream (a plain call may be sent as one).
        """
        if last is None:  # refused, timed out connecting, or sent on a connection already closed
            return (
                anthropic.APITimeoutError if "timeout" in reason else anthropic.APIConnectionError
            )
        status = last.status
        if last.fault == "sse_error_after" and status == 200:
            if plan.mode != "create":
                return anthropic.APIStatusError  # an `error` event under HTTP 200
            # a plain call sent as a stream: the status the plain answer would have carried
            error_type = next(d["error"]["type"] for n, d in last.events if n == "error")
            status = faults.status_for_error_type(error_type)
        if status >= 400:  # the SDK's own class for that status
            return type(self.client._make_status_error("", body=None, response=_response(status)))
        if committed:
            return sdkguard.StreamInterrupted
        if reason == "deadline":  # the deadline cut the last attempt, whatever its fault
            return sdkguard.StreamStalled if streamed else anthropic.APITimeoutError
        if last.fault in STALLS:
            return sdkguard.StreamStalled if streamed else anthropic.APITimeoutError
        return anthropic.APIConnectionError


def _response(status: int) -> Any:
    from sdkguard._sdk import http

    return http.Response(status, request=http.Request("POST", "http://127.0.0.1/v1/messages"))


def _last_reason(err: BaseException | None) -> str:
    """The reason code of the last attempt, from the error's notes ("" without notes)."""
    attempts = [n for n in getattr(err, "__notes__", []) if n.startswith("attempt ")]
    return attempts[-1].split(": ", 1)[1].split(" after ")[0] if attempts else ""


def _secret_name(value: str) -> str:
    return next(name for name, secret in SECRETS.items() if secret == value)


# -- watching the output --------------------------------------------------------------------------


class LogScanner(logging.Handler):
    """Every log line of the run, scanned (sdkguard's from DEBUG, everyone's from WARNING)."""

    def __init__(self, stats: Stats) -> None:
        super().__init__(logging.DEBUG)
        self.stats = stats
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("sdkguard") or record.levelno >= logging.WARNING:
            self.stats.scan("log lines", self.format(record))


class SpanWatch(SpanProcessor):
    """Counts the spans open, and scans every span that ends."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.lock = threading.Lock()
        self.open = 0

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        with self.lock:
            self.open += 1

    def on_end(self, span: ReadableSpan) -> None:
        with self.lock:
            self.open -= 1
        parts = [span.name, repr(dict(span.attributes or {})), str(span.status.description)]
        parts += [f"{e.name} {dict(e.attributes or {})}" for e in span.events]
        self.stats.scan("spans", " ".join(parts))


def retry_hook(event: sdkguard.RetryEvent) -> None:
    box = _current.get()
    if box:
        box[0].retries.append(event.reason)
    if _stats is not None:
        _stats.scan("retry events", repr(event))


_stats: Stats | None = None
_scan_lock = threading.Lock()


# -- the run --------------------------------------------------------------------------------------


def open_sockets() -> tuple[int, int]:
    """(file descriptors, sockets among them) of this process (Linux)."""
    fds = os.listdir("/proc/self/fd")
    sockets = 0
    for fd in fds:
        with contextlib.suppress(OSError):  # the descriptor of listdir itself, closed by now
            sockets += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return len(fds), sockets


def open_responses(client: anthropic.Anthropic | anthropic.AsyncAnthropic) -> int:
    """Requests whose response is still open in the client's connection pool (httpcore)."""
    pool = getattr(getattr(client._client, "_transport", None), "_pool", None)
    return len(getattr(pool, "_requests", ()))


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def closed_port_blips(server: FakeAnthropic, stats: Stats, stop: asyncio.Event) -> None:
    """Now and then the port closes for a moment: new connections are refused."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 2.0)
        except TimeoutError:
            server.refuse_connections()
            stats.closed_port_blips += 1
            await asyncio.sleep(0.03)
            server.accept_connections()


async def run_waves(
    server: FakeAnthropic, checker: Checker, stats: Stats, args: argparse.Namespace
) -> None:
    rng = random.Random(args.seed)
    sync_client = checker.client
    executor = ThreadPoolExecutor(args.concurrency, thread_name_prefix="soak-sync")
    loop = asyncio.get_running_loop()
    # An async generator dropped without being closed is closed by the garbage collector, in
    # a task of its own: count them, by name.
    finalize = sys.get_asyncgen_hooks().finalizer
    assert finalize is not None

    def left_to_the_collector(agen: Any) -> None:
        stats.leaks.setdefault("async generators", Counter())[agen.__qualname__] += 1
        finalize(agen)

    sys.set_asyncgen_hooks(finalizer=left_to_the_collector)
    stop_blips = asyncio.Event()
    blips = asyncio.create_task(closed_port_blips(server, stats, stop_blips))
    limit = asyncio.Semaphore(args.concurrency)
    total = args.memory_calls or args.calls
    wave_size = min(total, 500)
    samples: list[tuple[int, int, int]] = []
    async with anthropic.AsyncAnthropic(
        base_url=server.url,
        api_key=API_KEY,
        default_headers={"x-soak-secret": HEADER_VALUE},
        timeout=anthropic.Timeout(CLIENT_READ_TIMEOUT, connect=1.0),
    ) as async_client:

        async def one(plan: Plan) -> None:
            async with limit:
                if plan.flavour == "async":
                    seen = Seen()
                    task = asyncio.create_task(consume_async(async_client, plan, seen))
                    try:
                        await asyncio.wait_for(task, HANG)
                    except TimeoutError:
                        seen.hung = True
                else:
                    future = loop.run_in_executor(executor, consume_sync, sync_client, plan)
                    try:
                        seen = await asyncio.wait_for(asyncio.shield(future), HANG)
                    except TimeoutError:
                        seen = Seen(hung=True)
                checker.check(plan, seen)

        done = 0
        while done < total:
            size = min(wave_size, total - done)
            del server.requests[:], server.sent[:]
            answers, kinds = draw_script(rng, size * 3, args.fault_rate, args.kinds)
            server.script(*answers)
            checker.new_wave(kinds)
            plans = [
                Plan(done + i, rng.choice(["sync", "async"]), rng.choice(MODES))
                for i in range(size)
            ]
            await asyncio.gather(*(one(plan) for plan in plans))
            del plans
            stats.requests += len(server.requests)
            stats.faulted_requests.update(k for k in kinds[: len(server.requests)] if k != "ok")
            done += size
            if stats.hangs:
                break
            if args.memory_calls:
                del server.requests[:], server.sent[:]  # the server's records are not ours
                linecache.clearcache()  # source lines read to format the errors for the scan
                # Async generators the collector finds are closed by tasks of their own (the
                # SDK's stream leaves its decoder's suspended, holding its last event): let
                # those run before measuring.
                gc.collect()
                await asyncio.sleep(0.1)
                gc.collect()
                if done == wave_size:  # after the first wave: everything warmed up
                    tracemalloc.start(args.trace_frames)
                    first = tracemalloc.take_snapshot()
                samples.append((done, rss(), tracemalloc.get_traced_memory()[0]))
                _, resident, traced = samples[-1]
                if traced > samples[0][2] + 8 * 2**20:  # well above: say what holds it
                    for line in growth_sites(first, 3):
                        print("    held:", line)
                print(
                    f"  {done:,} calls: RSS {resident / 2**20:.1f} MiB,"
                    f" traced {traced / 1024:.0f} KiB",
                    flush=True,
                )
        # Every response must have been closed: none may hold a connection of the pools.
        stats.leaks["open responses"] = open_responses(sync_client) + open_responses(async_client)
    stop_blips.set()
    await blips
    gc.collect()
    await asyncio.sleep(0.1)  # the finalizers of async generators the collector found run
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    stats.leaks["asyncio tasks"] = len(tasks)
    if tasks:
        print("asyncio tasks left:", tasks)
    executor.shutdown(wait=not stats.hangs, cancel_futures=True)
    if samples:
        stats.memory = memory_figures(samples)
        stats.memory["growth_sites"] = growth_sites(first, 8)


def growth_sites(since: tracemalloc.Snapshot, top: int) -> list[str]:
    """Where memory grew since the snapshot `since`, largest first."""
    growth = tracemalloc.take_snapshot().compare_to(since, "traceback")
    return [
        f"{stat.size_diff / 1024:+.0f} KiB in {stat.count_diff:+} blocks at "
        + " <- ".join(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in stat.traceback)
        for stat in growth[:top]
    ]


WARM_UP_WAVES = 2  # caches, pools and imports fill during the first 1,000 calls
COMPARED_WAVES = 5


def memory_figures(samples: list[tuple[int, int, int]]) -> dict[str, Any]:
    """Early and late memory, each the median of five waves after warm-up, and the peaks.

    Medians, because one wave can end with a few 10 MB answers still in flight or held by
    generators the collector has not closed yet: transient, not growth.
    """
    warm = samples[WARM_UP_WAVES - 1 :] or samples
    early = warm[:COMPARED_WAVES]
    late = warm[-COMPARED_WAVES:]

    def median(values: list[int]) -> float:
        return float(statistics.median(values))

    early_rss, late_rss = median([s[1] for s in early]), median([s[1] for s in late])
    early_traced, late_traced = median([s[2] for s in early]), median([s[2] for s in late])
    return {
        "calls": samples[-1][0],
        "early_calls": (early[0][0], early[-1][0]),
        "late_calls": (late[0][0], late[-1][0]),
        "rss_early_mib": early_rss / 2**20,
        "rss_growth_mib": (late_rss - early_rss) / 2**20,
        "rss_peak_mib": max(s[1] for s in samples) / 2**20,
        "traced_early_kib": early_traced / 1024,
        "traced_growth_kib": (late_traced - early_traced) / 1024,
        "traced_peak_kib": max(s[2] for s in warm) / 1024,
        "samples": [(c, round(r / 2**20, 1), round(t / 1024, 1)) for c, r, t in samples],
    }


def metric_sum(reader: InMemoryMetricReader, name: str) -> int:
    """The total of a counter over all its attribute sets."""
    data = reader.get_metrics_data()
    total = 0
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    total += sum(int(getattr(p, "value", 0)) for p in metric.data.data_points)
    return total


def doctor_output() -> str:
    env = {
        **os.environ,
        "ANTHROPIC_API_KEY": API_KEY,
        "ANTHROPIC_CUSTOM_HEADERS": f"x-soak-secret: {HEADER_VALUE}",
        "SDKGUARD_MAX_ATTEMPTS": "5",
        "SDKGUARD_IDLE_TIMEOUT": "30",
    }
    out = []
    for extra in ([], ["--json"]):
        done = subprocess.run(
            [sys.executable, "-m", "sdkguard", "doctor", *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        out.append(done.stdout + done.stderr)
    return "\n".join(out)


def soak(args: argparse.Namespace) -> Stats:
    global _stats
    stats = Stats()
    threads_before = {t.ident for t in threading.enumerate()}
    fds_before = open_sockets()
    tracer_provider = TracerProvider()
    meter_reader = InMemoryMetricReader()
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[meter_reader]))
    policy = {**POLICY, "retry_budget": args.retry_budget, "on_retry": retry_hook}
    if not args.unguarded:
        sdkguard.install(**policy)
    server = FakeAnthropic().start()
    client = anthropic.Anthropic(
        base_url=server.url,
        api_key=API_KEY,
        default_headers={"x-soak-secret": HEADER_VALUE},
        timeout=anthropic.Timeout(CLIENT_READ_TIMEOUT, connect=1.0),
    )
    checker = Checker(server, client, stats)
    _stats = stats
    spans = SpanWatch(stats)
    tracer_provider.add_span_processor(spans)
    logs = LogScanner(stats)
    root = logging.getLogger()
    root.addHandler(logs)
    logging.getLogger("sdkguard").setLevel(logging.DEBUG)
    try:
        asyncio.run(run_waves(server, checker, stats, args))
    finally:
        client.close()
        server.stop()
        root.removeHandler(logs)
        tracemalloc.stop()
    sdkguard.uninstall()
    gc.collect()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = [t for t in threading.enumerate() if t.ident not in threads_before]
        fds = open_sockets()
        if not left and fds == fds_before and spans.open == 0:
            break
        time.sleep(0.05)
        gc.collect()
    stats.leaks["threads"] = len(left)
    stats.leaks["thread names"] = sorted(t.name for t in left)
    stats.leaks["sockets"] = fds[1] - fds_before[1]
    stats.leaks["file descriptors"] = fds[0] - fds_before[0]
    stats.leaks["open spans"] = spans.open
    stats.attempts_metric = metric_sum(meter_reader, "sdkguard.attempts")
    stats.scan("doctor output", doctor_output())
    tracer_provider.shutdown()
    _stats = None
    return stats


# -- the report -----------------------------------------------------------------------------------


def failed_as_allowed(stats: Stats) -> dict[str, int]:
    return {k.split(": ", 1)[1]: v for k, v in stats.outcomes.items() if k.startswith("failed: ")}


LEAKS = ("threads", "sockets", "asyncio tasks", "open spans", "open responses")


def leak_total(stats: Stats) -> int:
    return sum(stats.leaks.get(k, 0) for k in LEAKS)


def ok(stats: Stats, args: argparse.Namespace) -> bool:
    memory_ok = not stats.memory or (
        stats.memory["traced_growth_kib"] < args.max_traced_growth_kib
        and stats.memory["rss_growth_mib"] < args.max_rss_growth_mib
    )
    if args.unguarded:  # the SDK alone breaks the contract by design: memory is the question
        return memory_ok and stats.hangs == 0
    return (
        stats.attempts_metric == stats.attempts
        and stats.violation_count == 0
        and stats.hangs == 0
        and leak_total(stats) == 0
        and stats.leaks.get("file descriptors", 0) == 0
        and not stats.secrets
        and memory_ok
    )


def calls_table(stats: Stats, args: argparse.Namespace) -> str:
    n = f"{stats.calls:,}"
    faulted = sum(stats.faulted_requests.values())
    allowed = failed_as_allowed(stats)
    flavours = ", ".join(f"{k} {v:,}" for k, v in sorted(stats.by_flavour.items()))
    modes = ", ".join(f"{MODE_NAMES[m]} {stats.by_mode[m]:,}" for m in MODES)
    secrets_line = ", ".join(f"{k} x{v}" for k, v in sorted(stats.secrets.items())) or "none"
    scanned = ", ".join(f"{v:,} {k}" for k, v in sorted(stats.scanned.items()))
    share = faulted / max(stats.requests, 1)
    retries = ", ".join(f"{k} {v:,}" for k, v in stats.retries.most_common())
    leaks, deadline = stats.leaks, POLICY["deadline"]
    rows = [
        ("calls", f"{n}, {args.concurrency} at a time ({flavours}; {modes})"),
        ("requests", f"{stats.requests:,}"),
        (
            "faulted requests",
            f"{faulted:,} ({share:.0%}), {len(stats.faulted_requests)} kinds;"
            f" the port closed {stats.closed_port_blips} times",
        ),
        ("retries, by reason", f"{sum(stats.retries.values()):,} ({retries})"),
        (
            "attempts",
            f"{stats.attempts:,}; counted by the `sdkguard.attempts` metric: "
            f"{stats.attempts_metric:,}",
        ),
        ("succeeded, no fault met", f"{stats.outcomes['clean']:,}"),
        ("recovered (succeeded despite faults)", f"{stats.outcomes['recovered']:,}"),
        (
            "failed as the contract allows",
            f"{sum(allowed.values()):,} ("
            + ", ".join(f"{k}: {v:,}" for k, v in sorted(allowed.items()))
            + ")",
        ),
        ("failed otherwise (violations)", f"{stats.violation_count:,}"),
        ("hangs", f"{stats.hangs} (slowest call {stats.slowest:.1f} s, deadline {deadline:g} s)"),
        ("left behind", ", ".join(f"{name} {leaks.get(name)}" for name in LEAKS)),
        ("API key, header values, prompt in the output", f"{secrets_line} (scanned {scanned})"),
    ]
    lines = ["| | |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)]
    lines += [
        "",
        "| fault kind | requests | calls that met it: succeeded | failed as allowed |",
        "|---|---|---|---|",
    ]
    for kind in [*KINDS, CLOSED_PORT]:
        outcomes = stats.kind_outcomes.get(kind, Counter())
        failed = sum(v for k, v in outcomes.items() if k.startswith("failed"))
        requests = stats.faulted_requests.get(kind, 0) if kind != CLOSED_PORT else "-"
        lines.append(f"| `{kind}` | {requests} | {outcomes['succeeded']:,} | {failed:,} |")
    return "\n".join(lines)


def memory_table(stats: Stats) -> str:
    m = stats.memory
    early = "{:,} to {:,} calls".format(*m["early_calls"])
    late = "{:,} to {:,}".format(*m["late_calls"])
    return "\n".join(
        [
            f"| median of the waves ending at | {early} | {late} | growth | peak |",
            "|---|---|---|---|---|",
            f"| Python allocations (tracemalloc) | {m['traced_early_kib']:,.0f} KiB"
            f" | {m['traced_early_kib'] + m['traced_growth_kib']:,.0f} KiB"
            f" | {m['traced_growth_kib']:+,.0f} KiB | {m['traced_peak_kib']:,.0f} KiB |",
            f"| RSS | {m['rss_early_mib']:.0f} MiB"
            f" | {m['rss_early_mib'] + m['rss_growth_mib']:.0f} MiB"
            f" | {m['rss_growth_mib']:+.0f} MiB | {m['rss_peak_mib']:.0f} MiB |",
        ]
    )


def write_readme(path: Path, block: str, table: str) -> None:
    text = path.read_text()
    begin, end = f"<!-- soak:{block}:begin -->", f"<!-- soak:{block}:end -->"
    if begin not in text or end not in text:
        raise SystemExit(f"{path} has no {begin} ... {end} block to fill")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{table}\n{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=2000, help="calls (2,000)")
    parser.add_argument("--concurrency", type=int, default=50, help="calls at a time (50)")
    parser.add_argument("--fault-rate", type=float, default=0.3, help="faulted answers (0.3)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (1)")
    parser.add_argument("--retry-budget", action="store_true", help="with the retry budget on")
    parser.add_argument(
        "--kinds",
        nargs="+",
        choices=list(KINDS),
        default=list(KINDS),
        metavar="KIND",
        help="only these fault kinds (all of them by default)",
    )
    parser.add_argument(
        "--memory-calls",
        type=int,
        default=0,
        help="instead, this many calls in waves of 500, with RSS and tracemalloc after each",
    )
    parser.add_argument(
        "--trace-frames",
        type=int,
        default=1,
        help="frames tracemalloc keeps (1); more to find where memory grows, slower",
    )
    parser.add_argument(
        "--max-traced-growth-kib",
        type=float,
        default=512.0,
        help="memory mode fails above this growth of Python allocations (512)",
    )
    parser.add_argument(
        "--max-rss-growth-mib",
        type=float,
        default=32.0,
        help="memory mode fails above this growth of RSS (32)",
    )
    parser.add_argument(
        "--unguarded",
        action="store_true",
        help="sdkguard not installed: the same run with the SDK alone, to tell whose memory"
        " grows (without pings_only_after, on which the SDK alone waits for ever; calls that"
        " fail outside sdkguard's contract are expected, counted and not judged)",
    )
    parser.add_argument(
        "--readme", type=Path, help="write the figures into this page (docs/proof.md)"
    )
    parser.add_argument("--json", type=Path, help="write the figures as JSON")
    args = parser.parse_args(argv)
    if args.unguarded:
        args.kinds = [k for k in args.kinds if k != "pings_only_after"]
    started = time.monotonic()
    what = f"{args.memory_calls:,} calls (memory)" if args.memory_calls else f"{args.calls:,} calls"
    if args.memory_calls and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        print(
            "note: MALLOC_MMAP_THRESHOLD_ is not set: glibc keeps the 10 MB answers' buffers"
            " on its heap after the first, and RSS grows in steps (make soak-memory sets it)"
        )
    if args.unguarded:
        what += ", sdkguard NOT installed"
    print(f"soak: {what}, {args.concurrency} at a time, {args.fault_rate:.0%} faulted", flush=True)
    stats = soak(args)
    table = memory_table(stats) if args.memory_calls else calls_table(stats, args)
    report = f"{table}\n\n{time.monotonic() - started:.0f} s"
    print(report)
    stats.scan("report", report)  # the report itself is output too
    if args.unguarded:
        print(f"calls outside sdkguard's contract (the SDK alone): {stats.violation_count:,}")
    for line in [] if args.unguarded else stats.violations:
        print("VIOLATION", line)
    if stats.leaks.get("thread names"):
        print("threads left:", stats.leaks["thread names"])
    for site in stats.memory.get("growth_sites", ()):
        print("memory growth:", site)
    if args.json:
        args.json.write_text(json.dumps(stats.__dict__, default=_jsonable, indent=1))
    passed = ok(stats, args)
    if args.readme and passed:
        block = "memory" if args.memory_calls else "calls"
        write_readme(args.readme, f"{block}-unguarded" if args.unguarded else block, table)
    print("soak: OK" if passed else "soak: FAILED")
    return 0 if passed else 1


def _jsonable(value: object) -> Any:
    return dict(value) if isinstance(value, Counter) else str(value)


if __name__ == "__main__":
    sys.exit(main())
