"""Connections lost before the answer: the same fault is named the same by sync and async
clients, and a pooled connection left behind by a closed event loop is retried on a new one.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

import sdkguard
from sdkguard.testing import FakeAnthropic, faults
from tests.helpers import API_KEY, MESSAGE_ARGS

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("guard")]

FLAVOURS = ("sync", "async")


def create(flavour: str, base_url: str, **args: Any) -> Any:
    """One `messages.create` with a new client, sync or async."""
    args = {**MESSAGE_ARGS, **args}
    if flavour == "sync":
        with anthropic.Anthropic(base_url=base_url, api_key=API_KEY) as client:
            result = client.messages.create(**args)
            return list(result) if args.get("stream") else result

    async def run() -> Any:
        async with anthropic.AsyncAnthropic(base_url=base_url, api_key=API_KEY) as client:
            result = await client.messages.create(**args)
            return [e async for e in result] if args.get("stream") else result

    return asyncio.run(run())


def retries(flavour: str, base_url: str, **args: Any) -> list[tuple[str, str]]:
    """The reason and words of each retry of one call that fails twice (max_attempts=2)."""
    events: list[sdkguard.RetryEvent] = []
    with (
        sdkguard.policy(max_attempts=2, on_retry=events.append),
        pytest.raises(anthropic.APIConnectionError),
    ):
        create(flavour, base_url, **args)
    return [(e.reason, e.description) for e in events]


# -- the same loss before the answer, sync and async --------------------------------------------


class Peer:
    """A loopback peer that reads a request, or only its head, then resets (RST) or closes
    (FIN) the connection without answering.

    Reading only the head of a request larger than the socket buffers resets the connection
    while the client is still sending it: httpcore then swallows its write error and reads,
    which a sync client sees as an end of file, an async one as the reset.
    """

    def __init__(self, end: str, read: str) -> None:
        self.end, self.read = end, read
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited on accept
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(10)
                data = b""
                while b"\r\n\r\n" not in data and (more := conn.recv(65536)):
                    data += more
                if self.read == "whole request":
                    head, _, body = data.partition(b"\r\n\r\n")
                    length = next(
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    )
                    while len(body) < length and (more := conn.recv(65536)):
                        body += more
                if self.end == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def peer(request: pytest.FixtureRequest) -> Iterator[Peer]:
    peer = Peer(*request.param)
    try:
        yield peer
    finally:
        peer.stop()


# More than the client's send buffer (4 MiB at most here) and the peer's receive buffer.
LARGE = {"messages": [{"role": "user", "content": "x" * (8 << 20)}]}


def test_the_kits_reset_before_headers_is_named_alike(server: FakeAnthropic) -> None:
    seen = {}
    for flavour in FLAVOURS:
        server.script(faults.reset_before_headers(), faults.reset_before_headers())
        seen[flavour] = retries(flavour, server.url)
    assert seen["sync"] == seen["async"]
    ((reason, words),) = seen["sync"]
    assert reason == "connection_reset" and "mid-answer" not in words


@pytest.mark.parametrize(
    ("peer", "size"),
    [
        (("reset", "head only"), LARGE),  # reset while the request is sent
        (("reset", "whole request"), {}),
        (("close", "whole request"), {}),
    ],
    indirect=["peer"],
    ids=["reset-while-sending", "reset-after-request", "close-after-request"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["create", "create-stream"])
def test_a_connection_lost_before_the_answer_is_named_alike(
    peer: Peer, size: dict[str, Any], stream: bool
) -> None:
    sync = retries("sync", peer.url, stream=stream, **size)
    asynchronous = retries("async", peer.url, stream=stream, **size)
    assert sync == asynchronous
    ((reason, words),) = sync
    assert reason == "connection_reset"
    assert "mid-answer" not in words


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_connection_closed_once_the_answer_began_is_mid_answer(
    server: FakeAnthropic, flavour: str
) -> None:
    events: list[sdkguard.RetryEvent] = []
    server.script(faults.truncate_after(2), faults.ok())
    with sdkguard.policy(on_retry=events.append):
        create(flavour, server.url, stream=True)
    assert [(e.reason, e.description) for e in events] == [
        ("connection_closed", "the server closed the connection mid-answer")
    ]


# -- a client reused across event loops ---------------------------------------------------------


def two_event_loops(client: anthropic.AsyncAnthropic, **args: Any) -> list[Any]:
    """Two `asyncio.run()` calls with one client: the second finds a pooled connection of the
    first loop, closed with it. The client is closed by the second loop, whose connections
    it can still close (the first loop's transport is left to the garbage collector, as
    without sdkguard)."""

    async def call(close: bool = False) -> Any:
        result = await client.messages.create(**MESSAGE_ARGS, **args)
        if args.get("stream"):
            result = [e.type async for e in result]
        if close:
            await client.close()
        return result

    return [asyncio.run(call()), asyncio.run(call(close=True))]


@pytest.mark.parametrize("stream", [False, True], ids=["create", "create-stream"])
def test_a_client_reused_across_event_loops_is_retried_on_a_new_connection(
    server: FakeAnthropic, stream: bool
) -> None:
    events: list[sdkguard.RetryEvent] = []
    client = anthropic.AsyncAnthropic(base_url=server.url, api_key=API_KEY)
    with sdkguard.policy(on_retry=events.append):
        first, second = two_event_loops(client, stream=stream)
    assert second == first if stream else second.content == first.content
    # The second call's first attempt failed on the dead connection; its second attempt,
    # on a new connection, succeeded: one retry in all.
    assert [(e.attempt, e.reason) for e in events] == [(2, "connection_closed")]
    assert events[0].description == "the pooled connection belonged to a closed event loop"
    assert server.connections_accepted == 2


def test_the_plain_sdk_reuses_a_client_across_event_loops(server: FakeAnthropic) -> None:
    # The premise: without sdkguard, the SDK's own retry mends it (on a fresh connection).
    sdkguard.uninstall()
    client = anthropic.AsyncAnthropic(base_url=server.url, api_key=API_KEY)
    first, second = two_event_loops(client)
    assert first.content == second.content
    assert server.connections_accepted == 2


def test_a_closed_client_is_still_not_retried(server: FakeAnthropic) -> None:
    # Only the closed event loop's error is a connection failure, not every RuntimeError.
    events: list[sdkguard.RetryEvent] = []

    async def call() -> None:
        client = anthropic.AsyncAnthropic(base_url=server.url, api_key=API_KEY)
        await client.close()
        with sdkguard.policy(on_retry=events.append):
            await client.messages.create(**MESSAGE_ARGS)

    with pytest.raises(anthropic.APIConnectionError) as caught:
        asyncio.run(call())
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert events == [] and server.requests == []
