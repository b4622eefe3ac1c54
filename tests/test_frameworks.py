"""Frameworks under faults: langchain-anthropic, pydantic-ai and instructor with sdkguard.

Each framework talks to the fake server through its own client, exactly as an application
uses it, with sdkguard installed (the fast policy of conftest). A fault before any content
(a reset, an `overloaded_error`, a silent stream) must be invisible: the framework returns
what one clean answer gives. A failure after content surfaces as the framework's usual error,
whose cause chain holds sdkguard's `StreamInterrupted` (attempts, partial message).

Each framework is installed only where it accepts the SDK (tools/matrix.py): instructor pins
anthropic 0.93.0, langchain-anthropic needs >= 0.120, pydantic-ai >= 1.15 (and Python 3.11);
elsewhere its tests are skipped. Plain calls keep the SDK's read timeout (a non-streaming
answer can legitimately take minutes), so "silent" is tested on streams only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import anyio
import pytest

import sdkguard
from sdkguard.testing import FakeAnthropic, faults
from tests.helpers import API_KEY

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("guard")]

TEXT = faults.DEFAULT_TEXT
# Faults before any content, each followed by a clean answer. `sse_error_after` answers a
# plain call with the matching status (529 for overloaded_error).
STREAM_FAULTS: dict[str, Callable[[faults.Answer], faults.Answer]] = {
    "reset": lambda reply: faults.reset_after(2, reply=reply),
    "overloaded": lambda reply: faults.sse_error_after(2, reply=reply),
    "silent": lambda reply: faults.stall_after(2, reply=reply),
}
PLAIN_FAULTS = {name: STREAM_FAULTS[name] for name in ("reset", "overloaded")}
# After message_start, content_block_start, ping and three text deltas: content was delivered.
AFTER_CONTENT = 6


def _interrupted(error: BaseException) -> sdkguard.StreamInterrupted:
    """sdkguard's error in the cause chain of a framework's error."""
    seen: BaseException | None = error
    while seen is not None and not isinstance(seen, sdkguard.StreamInterrupted):
        seen = seen.__cause__ or seen.__context__
    assert seen is not None, f"no StreamInterrupted behind {error!r}"
    assert any("attempt 1 of 5" in note for note in getattr(seen, "__notes__", []))
    return seen


def _recovered(server: FakeAnthropic, fault: str) -> None:
    assert [s.fault for s in server.sent] == [STREAM_FAULTS[fault](faults.ok()).name, "ok"]


# -- langchain-anthropic --------------------------------------------------------------------


@pytest.fixture
def chat_model(server: FakeAnthropic) -> Any:
    langchain_anthropic = pytest.importorskip("langchain_anthropic")
    return langchain_anthropic.ChatAnthropic(
        model="claude-test", base_url=server.url, api_key=API_KEY, max_tokens=64
    )


@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize("fault", sorted(PLAIN_FAULTS))
def test_langchain_invoke_recovers(
    server: FakeAnthropic, chat_model: Any, fault: str, flavour: str
) -> None:
    server.script(PLAIN_FAULTS[fault](faults.ok()))
    sync = flavour == "sync"
    message = chat_model.invoke("hi") if sync else anyio.run(chat_model.ainvoke, "hi")
    assert message.content == TEXT
    _recovered(server, fault)


@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize("fault", sorted(STREAM_FAULTS))
def test_langchain_stream_recovers(
    server: FakeAnthropic, chat_model: Any, fault: str, flavour: str
) -> None:
    server.script(STREAM_FAULTS[fault](faults.ok()))
    chunks = _langchain_stream(chat_model, flavour)
    assert "".join(c.content for c in chunks if isinstance(c.content, str)) == TEXT
    _recovered(server, fault)


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_langchain_stream_failing_after_content(
    server: FakeAnthropic, chat_model: Any, flavour: str
) -> None:
    server.script(faults.reset_after(AFTER_CONTENT))
    with pytest.raises(anthropic.APIConnectionError) as raised:
        _langchain_stream(chat_model, flavour)
    assert "stream interrupted after content" in str(raised.value)
    assert _interrupted(raised.value).partial_message.content[0].text == TEXT
    assert len(server.requests) == 1


def _langchain_stream(chat_model: Any, flavour: str) -> list[Any]:
    if flavour == "sync":
        return list(chat_model.stream("hi"))

    async def collect() -> list[Any]:
        return [chunk async for chunk in chat_model.astream("hi")]

    return anyio.run(collect)


# -- pydantic-ai ----------------------------------------------------------------------------


def _pydantic_ai_agent(server: FakeAnthropic) -> Any:
    pydantic_ai = pytest.importorskip("pydantic_ai")
    from pydantic_ai.models.anthropic import AnthropicModel
    from pydantic_ai.providers.anthropic import AnthropicProvider

    client = anthropic.AsyncAnthropic(base_url=server.url, api_key=API_KEY)
    provider = AnthropicProvider(anthropic_client=client)
    return pydantic_ai.Agent(AnthropicModel("claude-test", provider=provider))


@pytest.mark.parametrize("fault", sorted(PLAIN_FAULTS))
def test_pydantic_ai_run_recovers(server: FakeAnthropic, fault: str) -> None:
    agent = _pydantic_ai_agent(server)
    server.script(PLAIN_FAULTS[fault](faults.ok()))

    async def run() -> Any:
        return (await agent.run("hi")).output

    assert anyio.run(run) == TEXT
    _recovered(server, fault)


async def _run_stream(agent: Any) -> str:
    async with agent.run_stream("hi") as result:
        return "".join([text async for text in result.stream_text(delta=True)])


@pytest.mark.parametrize("fault", sorted(STREAM_FAULTS))
def test_pydantic_ai_run_stream_recovers(server: FakeAnthropic, fault: str) -> None:
    agent = _pydantic_ai_agent(server)
    server.script(STREAM_FAULTS[fault](faults.ok()))
    assert anyio.run(_run_stream, agent) == TEXT
    assert server.requests[-1].stream
    _recovered(server, fault)


def test_pydantic_ai_run_stream_failing_after_content(server: FakeAnthropic) -> None:
    agent = _pydantic_ai_agent(server)
    from pydantic_ai.exceptions import ModelAPIError

    server.script(faults.reset_after(AFTER_CONTENT))
    with pytest.raises(ModelAPIError) as raised:
        anyio.run(_run_stream, agent)
    assert "stream interrupted after content" in str(raised.value)
    assert _interrupted(raised.value).partial_message.content[0].text == TEXT
    assert len(server.requests) == 1


# -- instructor -----------------------------------------------------------------------------

PERSON = {"name": "Ada", "age": 36}


@pytest.fixture
def structured(server: FakeAnthropic) -> tuple[Any, dict[str, Any], faults.Answer]:
    """An instructor client, the arguments of a structured call, and the server's answer."""
    instructor = pytest.importorskip("instructor")
    from pydantic import BaseModel

    class Person(BaseModel):
        name: str
        age: int

    client = instructor.from_anthropic(anthropic.Anthropic(base_url=server.url, api_key=API_KEY))
    arguments = {
        "model": "claude-test",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Ada, 36"}],
        "response_model": Person,
    }
    # Tools mode: the answer is a tool_use block whose input is the object, in a few deltas.
    answer = faults.ok(faults.tool_use("Person", PERSON, deltas=4))
    server.default(answer)
    return client, arguments, answer


@pytest.mark.parametrize("fault", sorted(PLAIN_FAULTS))
def test_instructor_create_recovers(
    server: FakeAnthropic, structured: tuple[Any, dict[str, Any], faults.Answer], fault: str
) -> None:
    client, arguments, answer = structured
    server.script(PLAIN_FAULTS[fault](answer))
    assert client.messages.create(**arguments).model_dump() == PERSON
    _recovered(server, fault)


@pytest.mark.parametrize("fault", sorted(STREAM_FAULTS))
def test_instructor_create_partial_recovers(
    server: FakeAnthropic, structured: tuple[Any, dict[str, Any], faults.Answer], fault: str
) -> None:
    client, arguments, answer = structured
    server.script(STREAM_FAULTS[fault](answer))
    partials = list(client.messages.create_partial(**arguments))
    assert partials[-1].model_dump() == PERSON
    _recovered(server, fault)


def test_instructor_create_partial_failing_after_content(
    server: FakeAnthropic, structured: tuple[Any, dict[str, Any], faults.Answer]
) -> None:
    from instructor.core.exceptions import InstructorRetryException

    client, arguments, answer = structured
    server.script(faults.reset_after(AFTER_CONTENT, reply=answer))
    with pytest.raises(InstructorRetryException) as raised:
        list(client.messages.create_partial(**arguments))
    partial = _interrupted(raised.value).partial_message
    assert partial.content[0].input == {"name": "Ada"}  # parsed as far as it arrived
    assert len(server.requests) == 1
