"""The kit plays the model for continuation requests (`faults.continuable`), and refuses a
prefill for the models set to (`FakeAnthropic.refuse_prefill`): real sockets, the plain SDK."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from sdkguard.testing import FakeAnthropic, faults

pytestmark = [pytest.mark.sdk_independent, pytest.mark.timeout(10)]

TEXT = "Hello from the fake Anthropic server, où l'été dure."
MESSAGE = faults.ok(faults.text(TEXT, deltas=6))
THINKING = faults.ok(
    faults.thinking("Think first.", signature="sig-9", deltas=3), faults.text("Then say so.")
)
TOOL = faults.ok(
    faults.text("Checking.", deltas=2),
    faults.tool_use("get_weather", {"city": "Paris"}, id="toolu_c", deltas=3),
)
USER = {"role": "user", "content": "hi"}
CONTINUE = {"role": "user", "content": "Continue."}


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


@pytest.fixture
def client(fake: FakeAnthropic) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=fake.url, api_key="test", max_retries=0, timeout=anthropic.Timeout(2.0)
    ) as c:
        yield c


def stream(
    client: anthropic.Anthropic, messages: list[dict[str, Any]], model: str = "claude-kit"
) -> list[tuple[str, dict[str, Any]]]:
    with client.messages.create(
        model=model, max_tokens=64, messages=messages, stream=True
    ) as events:
        return [(event.type, event.to_dict()) for event in events]


def text_of(events: list[tuple[str, dict[str, Any]]]) -> str:
    return "".join(
        data["delta"].get("text", "") for kind, data in events if kind == "content_block_delta"
    )


def assistant(*blocks: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": list(blocks)}


def text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


@pytest.mark.parametrize("form", ["prefill", "user_turn"])
@pytest.mark.parametrize("cut", [0, 5, 9, 13, len(TEXT) - 1])
def test_the_rest_of_the_text_for_either_form(
    fake: FakeAnthropic, client: anthropic.Anthropic, form: str, cut: int
) -> None:
    fake.default(faults.continuable(MESSAGE))
    delivered = TEXT[:cut]
    turns = [USER, assistant(text_block(delivered))] if cut else [USER]
    if form == "user_turn" and cut:
        turns.append(CONTINUE)
    events = stream(client, turns)
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "message_start" and kinds.count("message_start") == 1
    assert kinds[-2:] == ["message_delta", "message_stop"]
    assert text_of(events) == TEXT[cut:]
    # its own message, its own usage: the deltas of the rest
    deltas = kinds.count("content_block_delta")
    assert events[-2][1]["usage"]["output_tokens"] == deltas


@pytest.mark.parametrize("words", [1, 2, 3])
@pytest.mark.parametrize("cut", [8, 10, 21, 45, 49])
def test_repeat_words_repeats_the_last_words_even_cut_inside_one(
    fake: FakeAnthropic, client: anthropic.Anthropic, words: int, cut: int
) -> None:
    # 8: inside "from", 10: after "from ", 45: inside "été", 49: inside "dure"
    fake.default(faults.continuable(MESSAGE, repeat_words=words))
    delivered = TEXT[:cut]
    text = text_of(stream(client, [USER, assistant(text_block(delivered)), CONTINUE]))
    starts = [
        i for i, c in enumerate(delivered) if c != " " and (i == 0 or delivered[i - 1] == " ")
    ]
    start = starts[-words] if len(starts) >= words else 0
    assert text == TEXT[start:]
    assert delivered[start:] and text.startswith(delivered[start:])


def test_a_prefill_as_a_string_and_utf8_cut_inside_a_character_s_bytes(
    fake: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    # A cut inside the bytes of "é" leaves the delivered part before it: what the SDK keeps.
    fake.default(faults.continuable(MESSAGE))
    cut = TEXT.index("été")
    events = stream(client, [USER, {"role": "assistant", "content": TEXT[:cut]}])
    assert text_of(events) == TEXT[cut:]


def test_thinking_then_text_and_text_then_tool_use(
    fake: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    fake.default(faults.continuable(THINKING))
    thought = {"type": "thinking", "thinking": "Think first.", "signature": "sig-9"}
    events = stream(client, [USER, assistant(thought, text_block("Then")), CONTINUE])
    assert text_of(events) == " say so."
    events = stream(client, [USER, assistant(thought), CONTINUE])
    assert [d["content_block"]["type"] for k, d in events if k == "content_block_start"] == ["text"]
    assert text_of(events) == "Then say so."

    fake.default(faults.continuable(TOOL))
    events = stream(client, [USER, assistant(text_block("Checking.")), CONTINUE])
    starts = [d["content_block"] for k, d in events if k == "content_block_start"]
    assert [b["type"] for b in starts] == ["tool_use"] and starts[0]["id"] == "toolu_c"
    json_text = "".join(
        d["delta"].get("partial_json", "") for k, d in events if k == "content_block_delta"
    )
    assert json_text == '{"city": "Paris"}'
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_a_conversation_that_is_no_continuation_gets_the_whole_message(
    fake: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    fake.default(faults.continuable(MESSAGE))
    for turns in (
        [USER],
        [USER, assistant(text_block(TEXT)), {"role": "user", "content": "more?"}],
        [USER, assistant(text_block("Something else")), CONTINUE],
    ):
        assert text_of(stream(client, turns)) == TEXT


def test_faults_after_content_combine_with_it(
    fake: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    message = faults.continuable(MESSAGE, repeat_words=1)
    fake.script(faults.reset_after(5, reply=message), faults.truncate_after(4, reply=message))
    fake.default(message)
    delivered = ""
    for _ in range(2):  # two breaks, each continued from what was delivered
        turns = [USER, assistant(text_block(delivered)), CONTINUE] if delivered else [USER]
        seen: list[tuple[str, dict[str, Any]]] = []
        # the plain SDK raises the transport's own error from a body read
        with (
            pytest.raises(Exception),  # noqa: B017
            client.messages.create(
                model="claude-kit", max_tokens=64, messages=turns, stream=True
            ) as events,
        ):
            for event in events:
                seen.append((event.type, event.to_dict()))
        part = text_of(seen)
        if delivered:  # the repeated word first
            last = delivered.rsplit(" ", 1)[-1]
            assert part.startswith(last)
            part = part[len(last) :]
        assert part
        delivered += part
    last = delivered.rsplit(" ", 1)[-1]
    rest = text_of(stream(client, [USER, assistant(text_block(delivered)), CONTINUE]))
    assert delivered + rest[len(last) :] == TEXT
    assert [s.fault for s in fake.sent] == ["reset_after", "truncate_after", "continuable"]


def test_models_refusing_prefill_answer_400_without_taking_the_script(
    fake: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    fake.refuse_prefill("claude-new")
    fake.script(faults.continuable(MESSAGE))
    with pytest.raises(anthropic.BadRequestError) as caught:
        stream(client, [USER, assistant(text_block("Hello"))], model="claude-new")
    assert caught.value.status_code == 400
    assert caught.value.body["error"] == {  # type: ignore[index]
        "type": "invalid_request_error",
        "message": "This model does not support assistant message prefill. "
        "The conversation must end with a user message.",
    }
    assert fake.sent[0].fault == "prefill_refused" and fake.pending_answers == 1
    # the user turn is accepted, and takes the scripted answer
    events = stream(client, [USER, assistant(text_block("Hello")), CONTINUE], model="claude-new")
    assert text_of(events) == TEXT[5:]
    # another model takes a prefill; "*" refuses it for every model
    fake.default(faults.continuable(MESSAGE))
    assert text_of(stream(client, [USER, assistant(text_block("Hello"))])) == TEXT[5:]
    fake.refuse_prefill("*")
    with pytest.raises(anthropic.BadRequestError):
        stream(client, [USER, assistant(text_block("Hello"))])
    assert client.messages.count_tokens(
        model="claude-new",
        messages=[USER, assistant(text_block("Hello"))],  # type: ignore[list-item]
    ).input_tokens


def test_continuable_validation() -> None:
    with pytest.raises(ValueError):
        faults.continuable(MESSAGE, repeat_words=-1)
    with pytest.raises(TypeError):
        faults.continuable(faults.continuable(MESSAGE))
    assert faults.continuable().blocks == faults.ok().blocks
