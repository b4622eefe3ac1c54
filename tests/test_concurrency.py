"""200 concurrent async streams under random faults: every one ends correctly, nothing leaks."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import anthropic
import anyio
import pytest

import sdkguard
from sdkguard.testing import FakeAnthropic, faults
from tests.helpers import API_KEY, MESSAGE_ARGS

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("guard")]

STREAMS = 200
BEFORE_CONTENT = [
    faults.reset_before_headers(),
    faults.reset_after(2),
    faults.stall_after(2),
    faults.status(529),
    faults.sse_error_after(2),
    faults.truncate_after(1),
    faults.close_after(2),
]


def test_200_concurrent_streams_with_30_percent_faults(server: FakeAnthropic) -> None:
    rng = random.Random(1234)
    script = [
        rng.choice(BEFORE_CONTENT) if rng.random() < 0.3 else faults.ok()
        for _ in range(STREAMS * 2)
    ]
    server.script(*script)
    threads_before = threading.active_count()

    async def one(client: anthropic.AsyncAnthropic, results: list[str]) -> None:
        stream = await client.messages.create(**MESSAGE_ARGS, stream=True)
        async with stream:
            types = [event.type async for event in stream]
        assert types.count("message_start") == 1 and types[-1] == "message_stop"
        results.append("".join(types))

    async def main() -> tuple[list[str], int]:
        results: list[str] = []
        async with anthropic.AsyncAnthropic(base_url=server.url, api_key=API_KEY) as client:
            with anyio.fail_after(45):
                async with anyio.create_task_group() as group:
                    for _ in range(STREAMS):
                        group.start_soon(one, client, results)
        tasks_left = len([t for t in asyncio.all_tasks() if t is not asyncio.current_task()])
        return results, tasks_left

    # Limits of seconds, not tenths: 200 connections at once on a loaded CI machine must not
    # be mistaken for stalls (the injected stalls are silences forever, caught either way).
    with sdkguard.policy(
        max_attempts=8, connect_timeout=5.0, response_timeout=2.0, idle_timeout=2.0
    ):
        results, tasks_left = anyio.run(main)
    assert len(results) == STREAMS
    assert len(set(results)) == 1, "every consumer saw the same clean event sequence"
    assert tasks_left == 0
    assert len(server.requests) >= STREAMS
    deadline = time.monotonic() + 5
    while (server.open_connections or threading.active_count() > threads_before) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.01)
    assert server.open_connections == 0
    assert threading.active_count() <= threads_before
