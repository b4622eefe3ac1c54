"""Consume a call the way users do, sync or async, and record what the consumer saw."""

from __future__ import annotations

import importlib.util
import inspect
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import anthropic
import anyio
import pytest

from sdkguard.testing import FakeAnthropic, SentResponse

MESSAGE_ARGS: dict[str, Any] = {
    "model": "claude-test",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "secret prompt text"}],
}
API_KEY = "sk-test-secret-key"

# What the SDK raises for a 529: exported at the top level from 0.94 on, and a subclass of
# InternalServerError only from 2.x on, so tests name it by its defining module.
OverloadedError: type[anthropic.APIStatusError] = anthropic._exceptions.OverloadedError

# The SDK's own OpenTelemetry tracing (anthropic >= 1.14), and client arguments that turn it
# off (none before: there is nothing to turn off, and no `open_telemetry` argument).
SDK_TRACING = importlib.util.find_spec("anthropic._tracing") is not None
WITHOUT_SDK_TRACING: dict[str, Any] = {"open_telemetry": False} if SDK_TRACING else {}
needs_sdk_tracing = pytest.mark.skipif(not SDK_TRACING, reason="this SDK has no tracing of its own")

# How a user reads a call: a raw stream, a plain call, the stream helper event by event, or
# the stream helper waiting for its final message only.
MODES = ("create_stream", "create", "stream_events", "stream_final")
# What a stream helper adds to the raw events, when iterated.
HELPER_EVENT_TYPES = frozenset({"text", "citation", "input_json", "thinking", "signature"})

# Older SDKs (0.x to 1.15 at least) hand on only the event types their `Stream` names; 2.x
# hands on any type, as the API adds new ones. Tests expect what the plain SDK hands on.
_NAMED_TYPES = frozenset(
    {
        "message_start",
        "message_delta",
        "message_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
    }
)
SDK_HANDS_ON_UNKNOWN_EVENTS = '"message_start"' not in inspect.getsource(
    anthropic.Stream.__stream__
)


def as_the_sdk_hands_on(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, Any]]:
    """`events` as the installed SDK's stream yields them (sent events, say)."""
    if SDK_HANDS_ON_UNKNOWN_EVENTS:
        return events
    return [event for event in events if event[0] in _NAMED_TYPES]


@dataclass
class Seen:
    """What the consumer saw: raw events (as data dicts) and/or the final message."""

    events: list[tuple[str, dict[str, Any]]] | None = None
    message: Any = None
    stream_events: list[str] = field(default_factory=list)


def consume_sync(client: anthropic.Anthropic, mode: str, **extra: Any) -> Seen:
    args = {**MESSAGE_ARGS, **extra}
    if mode == "create":
        return Seen(message=client.messages.create(**args))
    if mode == "create_stream":
        with client.messages.create(**args, stream=True) as stream:
            return Seen(events=[(e.type, e.to_dict()) for e in stream])
    with client.messages.stream(**args) as helper:
        if mode == "stream_final":
            return Seen(message=helper.get_final_message())
        types = [e.type for e in helper]
        return Seen(message=helper.get_final_message(), stream_events=types)


async def consume_async(client: anthropic.AsyncAnthropic, mode: str, **extra: Any) -> Seen:
    args = {**MESSAGE_ARGS, **extra}
    if mode == "create":
        return Seen(message=await client.messages.create(**args))
    if mode == "create_stream":
        async with await client.messages.create(**args, stream=True) as stream:
            return Seen(events=[(e.type, e.to_dict()) async for e in stream])
    async with client.messages.stream(**args) as helper:
        if mode == "stream_final":
            return Seen(message=await helper.get_final_message())
        types = [e.type async for e in helper]
        return Seen(message=await helper.get_final_message(), stream_events=types)


def consume(flavour: str, server: FakeAnthropic, mode: str, **client_args: Any) -> Seen:
    """One call in `mode`, with a new client: sync, or async under asyncio or trio."""
    client_args = {"base_url": server.url, "api_key": API_KEY, **client_args}
    if flavour == "sync":
        with anthropic.Anthropic(**client_args) as client:
            return consume_sync(client, mode)

    async def run() -> Seen:
        async with anthropic.AsyncAnthropic(**client_args) as client:
            return await consume_async(client, mode)

    return anyio.run(run, backend="trio" if flavour == "trio" else "asyncio")


def sent_message_text(sent: SentResponse) -> str:
    if sent.body is not None and sent.headers.get("content-type", "").startswith(
        "application/json"
    ):
        body = json.loads(sent.body)
        return "".join(b.get("text", "") for b in body["content"])
    return sent.text


def message_text(message: Any) -> str:
    return "".join(getattr(block, "text", "") for block in message.content)


def assert_one_clean_message(seen: Seen, sent: SentResponse) -> None:
    """The consumer saw exactly what the server sent in its successful attempt."""
    deadline = time.monotonic() + 2.0  # the server records completion just after its last write
    while not sent.completed and time.monotonic() < deadline:
        time.sleep(0.001)
    assert sent.completed, sent
    if seen.events is not None:
        assert seen.events == as_the_sdk_hands_on(sent.content_events())
        types = [t for t, _ in seen.events]
        assert types.count("message_start") == 1 and types[-1] == "message_stop"
        indices = [d["index"] for t, d in seen.events if t == "content_block_start"]
        assert indices == list(range(len(indices)))
    if seen.stream_events:
        raw = [t for t in seen.stream_events if t not in HELPER_EVENT_TYPES]
        assert raw == [t for t, _ in as_the_sdk_hands_on(sent.content_events())]
    if seen.message is not None:
        assert message_text(seen.message) == sent_message_text(sent)


def use_global_providers(
    monkeypatch: Any, tracer_provider: Any = None, meter_provider: Any = None
) -> None:
    """Make these the global OpenTelemetry providers for one test, as an application's
    `set_tracer_provider()` / `set_meter_provider()` would (the API allows that once per
    process, so the test sets the API's globals and the monkeypatch restores them)."""
    from opentelemetry import trace
    from opentelemetry.metrics import _internal as metrics_api

    if tracer_provider is not None:
        monkeypatch.setattr(trace, "_TRACER_PROVIDER", tracer_provider)
    if meter_provider is not None:
        monkeypatch.setattr(metrics_api, "_METER_PROVIDER", meter_provider)


def raw_answer(server: FakeAnthropic, stream: bool = True) -> bytes:
    """Every byte of the next answer, read off a socket until the server closes or resets it."""
    body = json.dumps({**MESSAGE_ARGS, "stream": stream}).encode()
    data = bytearray()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        sock.settimeout(5)
        try:
            while more := sock.recv(1 << 20):
                data += more
        except ConnectionResetError:
            pass
    return bytes(data)
