"""The same message, cut into pieces anywhere on the wire, gives the consumer the same events.

Hypothesis cuts the answer's bytes at random offsets and at the places a decoder can get
wrong (inside a UTF-8 character, between the CR and LF of a line ending, inside a chunk-size
line), with each SSE line ending the API's way or the two others the format allows; and,
in half the examples, first fails an attempt somewhere before the commit point, down to
the byte. Whatever the cuts and the fault, every way of reading the call sees exactly what
it sees when the same message arrives in one piece.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sdkguard
from sdkguard.testing import FakeAnthropic, faults
from sdkguard.testing.faults import Answer, Ok
from tests.helpers import MODES, Seen, assert_one_clean_message, consume, raw_answer

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("guard")]

# Text that puts one-, two-, three- and four-byte UTF-8 characters on the wire.
characters = st.sampled_from("ab z.é߷日本語🦊𝄞\\\"'")
texts = st.text(characters, min_size=1, max_size=40)
blocks = st.lists(
    st.one_of(
        st.builds(faults.text, texts, deltas=st.integers(1, 5)),
        st.builds(faults.thinking, texts, signature=texts, deltas=st.integers(1, 3)),
        st.builds(
            faults.tool_use,
            st.just("lookup"),
            st.dictionaries(st.sampled_from(["q", "ville", "日"]), texts, max_size=2),
            id=st.just("toolu_wire"),
            deltas=st.integers(1, 4),
        ),
    ),
    min_size=1,
    max_size=3,
)
# Faults that end an attempt before its first content event: `n` counts message_start,
# content_block_start and the ping.
before_content = st.one_of(
    st.builds(faults.reset_after, st.integers(0, 3)),
    st.builds(faults.truncate_after, st.integers(0, 3)),
    st.builds(faults.close_after, st.integers(0, 3)),
    st.builds(faults.sse_error_after, st.integers(0, 3)),
    st.builds(faults.malformed_after, st.integers(0, 3)),
    st.builds(faults.invalid_utf8_after, st.integers(0, 3)),
    st.just(faults.status(529)),
    st.just(faults.proxy_error()),
)


@pytest.fixture(scope="module")
def wire() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


def tricky_offsets(data: bytes) -> list[int]:
    """Cuts inside a UTF-8 character, inside a CRLF, and right after each line ending."""
    inside_character = [i for i, b in enumerate(data) if b & 0xC0 == 0x80]
    inside_crlf = [i for i in range(1, len(data)) if data[i - 1 : i + 1] == b"\r\n"]
    after_line = [i + 1 for i, b in enumerate(data) if b in b"\r\n"]
    return inside_character + inside_crlf + after_line


fractions = st.floats(0, 1, exclude_max=True)
# Where to cut, as fractions: the rendered answer's length varies with its ids, and what
# hypothesis draws must not depend on it.
cut_plans = st.tuples(st.lists(fractions, max_size=25), st.lists(fractions, max_size=10))


def cuts(plan: tuple[list[float], list[float]], rendered: bytes) -> list[int]:
    tricky = tricky_offsets(rendered)
    return [tricky[int(f * len(tricky))] for f in plan[0]] + [
        1 + int(f * len(rendered)) for f in plan[1]
    ]


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.data(),
    content=blocks,
    line_ending=st.sampled_from(["\n", "\r\n", "\r"]),
    mode=st.sampled_from(MODES),
    flavour=st.sampled_from(["sync", "async"]),
)
def test_any_cut_gives_the_same_events(
    wire: FakeAnthropic,
    data: st.DataObject,
    content: list[faults.Block],
    line_ending: str,
    mode: str,
    flavour: str,
) -> None:
    reply: Ok = faults.ok(*content, message_id="msg_wire")
    stream = mode != "create"
    wire.script(reply)
    baseline = consume(flavour, wire, mode)  # the message in one piece

    wire.script(faults.fragmented(reply, line_ending=line_ending))
    rendered = raw_answer(wire, stream)
    script: list[Answer] = []
    fault = data.draw(st.none() | fractions | before_content, label="fault first")
    if isinstance(fault, float):
        # Down to the byte, anywhere before the first content event (a plain call has none).
        commit = rendered.find(b"event: content_block_delta") if stream else len(rendered)
        fault = faults.reset_at_byte(int(fault * commit))  # strictly before it
    if fault is not None:
        plan = data.draw(cut_plans, label="cuts of the fault")
        script.append(faults.fragmented(fault, cuts(plan, rendered), line_ending=line_ending))
    plan = data.draw(cut_plans, label="cuts")
    script.append(faults.fragmented(reply, cuts(plan, rendered), line_ending=line_ending))
    wire.script(*script)
    first = len(wire.requests)
    with sdkguard.policy(max_attempts=3):
        seen = consume(flavour, wire, mode)

    assert len(wire.requests) - first == len(script)
    assert_one_clean_message(seen, wire.sent[-1])
    assert same(seen, baseline)


def same(seen: Seen, baseline: Seen) -> bool:
    """The consumer saw what it saw of the message in one piece."""
    message = None if seen.message is None else seen.message.to_dict()
    expected = None if baseline.message is None else baseline.message.to_dict()
    return (seen.events, seen.stream_events, message) == (
        baseline.events,
        baseline.stream_events,
        expected,
    )
