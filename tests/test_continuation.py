"""The pure part of continuation: the request that continues a message, the splice of its
answer (indices, the repeated tail, usage), and what is held back while `resume` is on."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdkguard._continuation import (
    CONTINUE_PROMPT,
    Holder,
    NotContinued,
    Splicer,
    continuation_body,
    delivered_tokens,
    is_prefill_refusal,
    overlap,
    prior_usage,
)

pytestmark = [pytest.mark.sdk_independent, pytest.mark.timeout(60)]

BODY: dict[str, Any] = {
    "model": "claude-x",
    "max_tokens": 1000,
    "stream": True,
    "messages": [{"role": "user", "content": "hi"}],
}


def message(*content: dict[str, Any], output: int = 1) -> dict[str, Any]:
    return {"content": list(content), "usage": {"input_tokens": 7, "output_tokens": output}}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


THOUGHT = {"type": "thinking", "thinking": "hmm", "signature": "sig"}


def test_the_user_turn_request() -> None:
    body, stripped = continuation_body(BODY, message(THOUGHT, text("Hello wor")), prefill=False)
    assert body["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [THOUGHT, text("Hello wor")]},
        {"role": "user", "content": CONTINUE_PROMPT},
    ]
    assert body["max_tokens"] == 1000 - 3 and body["stream"] is True and stripped == ""
    assert BODY["messages"] == [{"role": "user", "content": "hi"}]  # not changed


def test_the_prefill_request_takes_trailing_whitespace_off() -> None:
    body, stripped = continuation_body(BODY, message(text("Hello  \n")), prefill=True)
    assert body["messages"][-1] == {"role": "assistant", "content": [text("Hello")]}
    assert stripped == "  \n"


def test_thinking_kept_only_with_its_signature_and_never_last() -> None:
    unsigned = {"type": "thinking", "thinking": "half", "signature": ""}
    body, _ = continuation_body(BODY, message(THOUGHT, text("a"), unsigned), prefill=False)
    assert body["messages"][1]["content"] == [THOUGHT, text("a")]
    body, _ = continuation_body(BODY, message(text("a"), THOUGHT), prefill=True)
    assert body["messages"][1]["content"] == [text("a")]
    # nothing left to carry back: the request as it was
    body, _ = continuation_body(BODY, message(THOUGHT, text("")), prefill=False)
    assert body["messages"] == BODY["messages"]


def test_the_caller_s_own_prefill_goes_on() -> None:
    own = {**BODY, "messages": [*BODY["messages"], {"role": "assistant", "content": "The "}]}
    body, _ = continuation_body(own, message(text("answer is")), prefill=True)
    assert body["messages"][-1] == {"role": "assistant", "content": [text("The answer is")]}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"tool_choice": {"type": "tool", "name": "x"}}, "forces a tool"),
        ({"tool_choice": {"type": "any"}}, "forces a tool"),
        ({"output_config": {"format": {"type": "json_schema"}}}, "structured output"),
        ({"max_tokens": 3}, "max_tokens"),
    ],
)
def test_requests_not_continued(change: dict[str, Any], words: str) -> None:
    with pytest.raises(NotContinued, match=words):
        continuation_body({**BODY, **change}, message(text("Hello there")), prefill=False)


def test_a_delivered_part_ending_in_a_tool_call_is_not_continued() -> None:
    for kind in ("tool_use", "server_tool_use"):
        block = {"type": kind, "id": "t", "name": "n", "input": {}}
        with pytest.raises(NotContinued, match="tool call"):
            continuation_body(BODY, message(text("a"), block), prefill=False)
    assert continuation_body(
        {**BODY, "tool_choice": {"type": "auto"}}, message(text("a")), prefill=False
    )


def test_tokens_reported_or_estimated() -> None:
    assert delivered_tokens(message(text("x" * 40), output=3)) == 10
    assert delivered_tokens(message(text("x"), output=3)) == 3
    usage = prior_usage(
        [{"input_tokens": 5, "cache_read_input_tokens": 2}, {"input_tokens": 6}],
        message(text("abcd")),
    )
    assert usage == {
        "input_tokens": 11,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 2,
        "output_tokens": 1,
    }


def test_prefill_refusal() -> None:
    body = {
        "error": {
            "type": "invalid_request_error",
            "message": "This model does not support assistant message prefill. "
            "The conversation must end with a user message.",
        }
    }
    assert is_prefill_refusal(400, body)
    assert not is_prefill_refusal(400, {"error": {"message": "other"}})
    assert not is_prefill_refusal(529, body)


# -- the overlap rule ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delivered", "continuation", "kept"),
    [
        ("Hello wor", "world and more", "ld and more"),  # cut inside a word, repeated
        ("Hello wor", "ld and more", "ld and more"),  # cut inside a word, exact
        ("the quick brown fo", "brown fox", "x"),  # two words repeated
        ("Hello from ", "from the", "the"),  # repeated word with its space
        ("He said no", " no, never", " no, never"),  # the same word again, legitimately
        ("The capital is Paris. ", "Paris has", "Paris has"),  # ... after a sentence
        ("He said no", "no", ""),  # only the repeat came
        ("caf", "café au lait", "é au lait"),  # cut before a two-byte character
        ("日本", "日本語です", "語です"),  # one word of three-byte characters
        ("x", "y", "y"),
    ],
)
def test_overlap_removed_and_nothing_else(delivered: str, continuation: str, kept: str) -> None:
    cut = overlap(delivered, "", continuation, final=True)
    assert cut is not None and continuation[cut:] == kept


def test_overlap_waits_while_a_longer_repeat_may_come() -> None:
    assert overlap("Hello wor", "", "wo", final=False) is None
    assert overlap("Hello wor", "", "wo", final=True) == 0
    assert overlap("Hello wor", "", "x", final=False) == 0
    # a prefill took the space off: the model's own space is not said twice
    assert overlap("Hello", " ", " there", final=True) == 1
    assert overlap("Hello", " ", "Hello there", final=True) == 6


def splice(
    events: list[dict[str, Any]], *, blocks: int, open_text: str | None, stripped: str = ""
) -> list[dict[str, Any]]:
    splicer = Splicer(
        blocks=blocks,
        open_text=open_text,
        stripped=stripped,
        prior={"input_tokens": 7, "output_tokens": 4},
    )
    out: list[dict[str, Any]] = []
    for event in events:
        out.extend(splicer.feed(event))
    return out


def answer(*blocks: tuple[str, list[str]], output: int = 2) -> list[dict[str, Any]]:
    """A continuation's events: each block (type, pieces)."""
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {"usage": {"input_tokens": 50, "output_tokens": 1}}}
    ]
    for i, (kind, pieces) in enumerate(blocks):
        start: dict[str, Any] = (
            {"type": kind, "text": ""}
            if kind == "text"
            else {"type": kind, "id": "t", "name": "n", "input": {}}
        )
        events.append({"type": "content_block_start", "index": i, "content_block": start})
        events.append({"type": "ping"})
        for piece in pieces:
            delta = (
                {"type": "text_delta", "text": piece}
                if kind == "text"
                else {"type": "input_json_delta", "partial_json": piece}
            )
            events.append({"type": "content_block_delta", "index": i, "delta": delta})
        events.append({"type": "content_block_stop", "index": i})
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": output},
        }
    )
    events.append({"type": "message_stop"})
    return events


def test_the_splice_extends_the_interrupted_block_and_shifts_the_next() -> None:
    out = splice(
        answer(("text", ["wor", "ld!"]), ("tool_use", ['{"a"', ": 1}"])),
        blocks=2,
        open_text="Hello wor",
    )
    kinds = [(e["type"], e.get("index")) for e in out]
    assert kinds == [
        ("ping", None),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("content_block_start", 2),
        ("ping", None),
        ("content_block_delta", 2),
        ("content_block_delta", 2),
        ("content_block_stop", 2),
        ("message_delta", None),
        ("message_stop", None),
    ]
    assert out[1]["delta"]["text"] == "ld!"
    assert out[-2]["usage"] == {
        "input_tokens": 57,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 6,
    }


def test_the_splice_closes_the_interrupted_block_before_another_kind() -> None:
    out = splice(answer(("tool_use", ["{}"])), blocks=1, open_text="Checking")
    assert [(e["type"], e.get("index")) for e in out][:2] == [
        ("content_block_stop", 0),
        ("content_block_start", 1),
    ]
    # a block that was stopped already: the continuation's blocks follow it
    out = splice(answer(("text", ["More."])), blocks=1, open_text=None)
    assert [(e["type"], e.get("index")) for e in out][:1] == [("content_block_start", 1)]
    assert out[2]["delta"]["text"] == "More."
    # nothing of a block: one stop for the interrupted one, and the message's end
    out = splice(answer(), blocks=1, open_text="Hi")
    assert [e["type"] for e in out] == ["content_block_stop", "message_delta", "message_stop"]


WORDS = st.lists(
    st.text(alphabet="abcdeé日😀", min_size=1, max_size=6), min_size=2, max_size=12
).map(" ".join)


@given(WORDS, st.data())
def test_any_cut_any_repeat_gives_the_whole_text(whole: str, data: st.DataObject) -> None:
    cut = data.draw(st.integers(1, len(whole) - 1))
    delivered = whole[:cut]
    starts = [i for i in range(cut) if delivered[i] != " " and (i == 0 or delivered[i - 1] == " ")]
    start = data.draw(st.sampled_from([cut, *starts[-3:]]))
    rest = whole[start:]
    pieces = data.draw(st.lists(st.integers(0, len(rest)), max_size=4))
    bounds = sorted({0, len(rest), *pieces})
    parts = [rest[a:b] for a, b in itertools.pairwise(bounds)] or [""]
    out = splice(answer(("text", parts)), blocks=1, open_text=delivered)
    got = "".join(e["delta"]["text"] for e in out if e["type"] == "content_block_delta")
    # The whole text, unless the text itself is ambiguous: a tail of the delivered part longer
    # than the one repeated (or, for an exact continuation, any tail) also starts the rest,
    # as in "a b" + "b" for "a bb". The rule takes the longest repeat.
    repeated = cut - start
    ambiguous = any(rest.startswith(delivered[s:]) and cut - s > repeated for s in starts)
    assert delivered + got == whole or ambiguous


def test_a_real_model_s_ambiguous_case_is_documented() -> None:
    # "a b" cut inside "bb", continued exactly with "b": taken for a repeat of "b"
    assert overlap("a b", "", "b", final=True) == 1


def test_holder_holds_blocks_that_are_not_text() -> None:
    holder = Holder()
    steps = [
        holder.step("message_start"),
        holder.step("content_block_start", "thinking"),
        holder.step("content_block_delta"),
        holder.step("content_block_stop"),
        holder.step("content_block_start", "text"),
        holder.step("ping"),
        holder.step("content_block_delta"),
        holder.step("content_block_stop"),
        holder.step("content_block_start", "tool_use"),
        holder.step("content_block_stop"),
        holder.step("message_delta"),
        holder.step("message_stop"),
    ]
    p, h, r = Holder.PASS, Holder.HOLD, Holder.RELEASE
    assert steps == [p, h, h, h, h, h, r, p, h, h, r, p]
