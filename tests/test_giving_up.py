"""What giving up says and carries: its words for one attempt and for several, and the types
of `StreamInterrupted`'s history and partial message as a type checker sees them."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import anthropic
import pytest

import sdkguard
from sdkguard import Policy
from sdkguard._decide import AttemptRecord, CallState, Failure
from sdkguard.testing import FakeAnthropic, faults
from tests.helpers import MESSAGE_ARGS

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
OVERLOADED = Failure("status_529", "HTTP 529", True)


@pytest.mark.parametrize(
    ("max_attempts", "why"),
    [(1, "max_attempts is 1"), (2, "all 2 attempts failed"), (5, "all 5 attempts failed")],
)
def test_the_last_attempt_says_why_in_words_that_fit_its_number(
    max_attempts: int, why: str
) -> None:
    state = CallState(Policy(max_attempts=max_attempts, retry_budget=False), started_at=0.0)
    for _ in range(max_attempts - 1):
        decision = state.decide(OVERLOADED, now=0.0, rand=0.0)
        assert decision.retry
        state = state.record(OVERLOADED, 0.1, decision.wait)
    decision = state.decide(OVERLOADED, now=0.0, rand=0.0)
    assert (decision.retry, decision.why_not) == (False, why)


@pytest.mark.usefixtures("guard")
def test_giving_up_after_one_attempt_reads_naturally(
    server: FakeAnthropic, client: anthropic.Anthropic, records: pytest.LogCaptureFixture
) -> None:
    server.script(faults.status(529))
    with sdkguard.policy(max_attempts=1), pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(**MESSAGE_ARGS)
    (error,) = [r.getMessage() for r in records.records if r.levelno == logging.ERROR]
    assert error == "messages.create: giving up after 1 attempt: HTTP 529 (max_attempts is 1)"
    assert caught.value.__notes__[-1] == "sdkguard gave up: max_attempts is 1"


@pytest.mark.usefixtures("guard")
def test_a_stream_interrupted_carries_typed_history_and_message(
    server: FakeAnthropic, client: anthropic.Anthropic
) -> None:
    server.script(faults.reset_after(5))
    with (
        pytest.raises(sdkguard.StreamInterrupted) as caught,
        client.messages.create(**MESSAGE_ARGS, stream=True) as stream,
    ):
        list(stream)
    assert isinstance(caught.value.partial_message, anthropic.types.Message)
    assert all(isinstance(record, AttemptRecord) for record in caught.value.attempts)


def test_a_type_checker_sees_the_types_of_a_stream_interrupted(tmp_path: Path) -> None:
    program = tmp_path / "uses_partial_message.py"
    program.write_text(
        textwrap.dedent(
            """\
            import sdkguard


            def handle(err: sdkguard.StreamInterrupted) -> None:
                reveal_type(err.partial_message)
                reveal_type(err.attempts)
                if err.partial_message is not None:
                    print(err.partial_message.content, err.partial_message.usage)
                for record in err.attempts:
                    print(record.number, record.reason, record.duration + 1.0)
            """
        )
    )
    result = subprocess.run(
        # A cache of its own (kept between runs: checking anthropic from scratch takes long),
        # not the one `make typecheck` writes.
        [
            *(sys.executable, "-m", "mypy", "--strict", "--no-error-summary"),
            *("--cache-dir", str(ROOT / ".cache" / "mypy-type-test")),
            str(program),
        ],
        cwd=ROOT,
        env={**os.environ, "MYPYPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    revealed = [
        line.split("Revealed type is ")[1].replace("builtins.", "")
        for line in result.stdout.splitlines()
        if "Revealed type is " in line
    ]
    assert revealed == [
        '"anthropic.types.message.Message | anthropic.types.beta.beta_message.BetaMessage | None"',
        '"tuple[sdkguard._decide.AttemptRecord, ...]"',
    ], result.stdout + result.stderr
    assert "error:" not in result.stdout.replace("note: Revealed", ""), result.stdout


def test_importing_sdkguard_imports_nothing_of_the_sdk() -> None:
    # The annotations name the SDK's message types for type checkers only.
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import sdkguard"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    modules = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "sdkguard" in modules
    assert not {name for name in modules if name.split(".")[0] == "anthropic"}
