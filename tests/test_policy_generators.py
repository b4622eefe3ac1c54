"""`@sdkguard.policy(...)` on generator functions: the scope is in effect during each step.

A streaming endpoint is usually a generator (FastAPI's `StreamingResponse(gen())`): the
decorated function only makes the generator, and its calls run later, step by step. The
scope must hold inside every step (`next`, `send`, `throw`, `close` and their async twins)
and nowhere else: not in the consumer's code between steps.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import anyio
import anyio.lowlevel
import pytest

import sdkguard
from sdkguard._patch import current_policy
from sdkguard.testing import FakeAnthropic, faults
from tests.helpers import API_KEY, MESSAGE_ARGS, OverloadedError

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("guard")]


def attempts_and_deadline() -> tuple[int, float | None]:
    policy = current_policy()
    return policy.max_attempts, policy.deadline


def test_a_decorated_generator_calls_under_its_policy(
    server: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    @sdkguard.policy(max_attempts=1)
    def answers() -> Iterator[str]:
        for _ in range(2):
            try:
                yield client.messages.create(**MESSAGE_ARGS).content[0].text
            except OverloadedError:
                yield "overloaded: not retried"

    steps = answers()
    server.script(faults.status(529), faults.ok())
    assert next(steps) == "overloaded: not retried"
    assert len(server.requests) == 1
    # Between steps, the consumer's own call has the installed policy: the 529 is retried.
    assert attempts_and_deadline() == (5, None)
    server.script(faults.status(529), faults.ok())
    assert client.messages.create(**MESSAGE_ARGS).content[0].text == faults.DEFAULT_TEXT
    assert len(server.requests) == 3
    server.script(faults.status(529), faults.ok())
    assert next(steps) == "overloaded: not retried"
    assert len(server.requests) == 4
    with pytest.raises(StopIteration):
        next(steps)


def test_a_decorated_async_generator_calls_under_its_policy(server: FakeAnthropic) -> None:
    async def main() -> None:
        async with anthropic.AsyncAnthropic(base_url=server.url, api_key=API_KEY) as client:

            @sdkguard.policy(max_attempts=1)
            async def answers() -> AsyncIterator[str]:
                for _ in range(2):
                    try:
                        message = await client.messages.create(**MESSAGE_ARGS)
                        yield message.content[0].text
                    except OverloadedError:
                        yield "overloaded: not retried"

            steps = answers()
            server.script(faults.status(529), faults.ok())
            assert await steps.__anext__() == "overloaded: not retried"
            assert len(server.requests) == 1
            assert attempts_and_deadline() == (5, None)
            server.script(faults.status(529), faults.ok())
            message = await client.messages.create(**MESSAGE_ARGS)
            assert message.content[0].text == faults.DEFAULT_TEXT
            assert len(server.requests) == 3
            server.script(faults.status(529), faults.ok())
            assert [text async for text in steps] == ["overloaded: not retried"]
            assert len(server.requests) == 4

    anyio.run(main)


def test_every_step_of_a_generator_is_scoped_and_nothing_between() -> None:
    closed: list[tuple[int, float | None]] = []

    @sdkguard.policy(max_attempts=2, deadline=7.0)
    def steps() -> Iterator[Any]:
        try:
            received = yield attempts_and_deadline()
            while True:
                try:
                    received = yield (received, attempts_and_deadline())
                except ValueError:
                    received = "thrown"
        finally:
            closed.append(attempts_and_deadline())

    outside = attempts_and_deadline()
    gen = steps()
    assert steps.__name__ == "steps"
    assert attempts_and_deadline() == outside
    assert next(gen) == (2, 7.0)
    assert attempts_and_deadline() == outside
    assert gen.send("sent") == ("sent", (2, 7.0))
    assert attempts_and_deadline() == outside
    assert gen.throw(ValueError("x")) == ("thrown", (2, 7.0))
    assert attempts_and_deadline() == outside
    with sdkguard.policy(max_attempts=9):  # the consumer's scope is the base of a step's
        assert gen.send(None) == (None, (2, 7.0))
        assert attempts_and_deadline() == (9, None)
    gen.close()
    assert closed == [(2, 7.0)]
    assert attempts_and_deadline() == outside


def test_a_generator_returns_and_raises_through_its_scope() -> None:
    @sdkguard.policy(max_attempts=3)
    def returns() -> Iterator[int]:
        yield 1
        return "done"

    @sdkguard.policy(max_attempts=3)
    def raises() -> Iterator[int]:
        yield 1
        raise KeyError(current_policy().max_attempts)

    def delegate() -> Iterator[int]:
        result = yield from returns()
        assert result == "done"
        yield 2

    assert list(delegate()) == [1, 2]
    gen = raises()
    next(gen)
    with pytest.raises(KeyError) as caught:
        next(gen)
    assert caught.value.args == (3,)
    assert current_policy().max_attempts == 5


def test_scopes_opened_inside_a_generator_stay_open_across_its_steps() -> None:
    @sdkguard.policy(max_attempts=2)
    def nested() -> Iterator[tuple[int, float | None]]:
        with sdkguard.policy(deadline=3.0):
            yield attempts_and_deadline()
            yield attempts_and_deadline()
        yield attempts_and_deadline()

    seen = []
    for item in nested():
        seen.append(item)
        assert attempts_and_deadline() == (5, None)
    assert seen == [(2, 3.0), (2, 3.0), (2, None)]


def test_a_generator_stepped_from_other_threads() -> None:
    # Starlette steps a sync generator in a thread pool: each step in another thread.
    @sdkguard.policy(max_attempts=4)
    def steps() -> Iterator[int]:
        while True:
            yield current_policy().max_attempts

    gen = steps()
    seen: list[int] = []
    for _ in range(3):
        thread = threading.Thread(target=lambda: seen.append(next(gen)))
        thread.start()
        thread.join(5)
    assert seen == [4, 4, 4]


def test_every_step_of_an_async_generator_is_scoped_and_nothing_between() -> None:
    closed: list[tuple[int, float | None]] = []

    @sdkguard.policy(max_attempts=2, deadline=7.0)
    async def steps() -> AsyncIterator[Any]:
        try:
            received = yield attempts_and_deadline()
            while True:
                await anyio.lowlevel.checkpoint()
                try:
                    received = yield (received, attempts_and_deadline())
                except ValueError:
                    received = "thrown"
        finally:
            await anyio.lowlevel.checkpoint()
            closed.append(attempts_and_deadline())

    async def main() -> None:
        outside = attempts_and_deadline()
        gen = steps()
        assert steps.__name__ == "steps"
        assert await gen.__anext__() == (2, 7.0)
        assert attempts_and_deadline() == outside
        assert await gen.asend("sent") == ("sent", (2, 7.0))
        assert attempts_and_deadline() == outside
        assert await gen.athrow(ValueError("x")) == ("thrown", (2, 7.0))
        assert attempts_and_deadline() == outside

        async def step_in_a_task_of_its_own() -> None:
            assert await gen.asend(None) == (None, (2, 7.0))

        async with anyio.create_task_group() as group:
            group.start_soon(step_in_a_task_of_its_own)
        await gen.aclose()
        assert closed == [(2, 7.0)]
        assert attempts_and_deadline() == outside

    anyio.run(main)


def test_coroutine_functions_keep_their_scope() -> None:
    @sdkguard.policy(max_attempts=4)
    async def call() -> int:
        await anyio.lowlevel.checkpoint()
        return current_policy().max_attempts

    assert anyio.run(call) == 4
    assert current_policy().max_attempts == 5
