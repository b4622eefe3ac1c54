"""`python -m sdkguard demo`: the plain SDK and the guarded SDK side by side, in fast mode.

Real calls against the fake server in this process; each test runs a few rows only.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

import sdkguard
from sdkguard import _demo
from sdkguard._cli import main
from sdkguard._decide import BUDGET
from sdkguard._patch import current_policy
from sdkguard._sdk import http

pytestmark = pytest.mark.timeout(60)

# The first line of a row: number, title, then each side's status, seconds and tries.
ROW = re.compile(
    r"^\s*(?P<number>\d+)\. (?P<title>.+?)\s{2,}"
    r"(?P<plain>ok|FAILED|STUCK|PARTIAL)\s+(?P<plain_s>[\d.]+) s\s+(?P<plain_tries>\d+) tr\w+\s+"
    r"(?P<guarded>ok|FAILED|STUCK|PARTIAL)\s+(?P<guarded_s>[\d.]+) s\s+(?P<guarded_tries>\d+) tr",
    re.MULTILINE,
)


@dataclasses.dataclass
class Row:
    title: str
    plain: str
    plain_tries: int
    plain_seconds: float
    guarded: str
    guarded_tries: int
    block: str
    """Every line of the row: details and log lines included."""


@pytest.fixture(autouse=True)
def _clean_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("SDKGUARD_MAX_ATTEMPTS", "1")  # the demo ignores the environment
    BUDGET.reset()
    sdkguard.uninstall()
    yield
    sdkguard.uninstall()


def run_demo(capsys: pytest.CaptureFixture[str], *only: str) -> tuple[int, str, dict[str, Row]]:
    code = main(["demo", "--fast", "--only", ",".join(only)])
    out = capsys.readouterr().out
    return code, out, parse_rows(out)


def parse_rows(out: str) -> dict[str, Row]:
    """The rows printed, by row name (`--only` names)."""
    names = {i: row.name for i, row in enumerate(_demo._ROWS, 1)}
    body = out.split("Notes\n")[0]
    matches = list(ROW.finditer(body))
    rows: dict[str, Row] = {}
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(body)
        row = Row(
            title=m["title"],
            plain=m["plain"],
            plain_tries=int(m["plain_tries"]),
            plain_seconds=float(m["plain_s"]),
            guarded=m["guarded"],
            guarded_tries=int(m["guarded_tries"]),
            block=body[m.start() : end],
        )
        rows[names[int(m["number"])]] = row
    return rows


LOG_LINE = re.compile(r"^ {6}(WARNING|ERROR) ")


def column(block: str, side: str) -> str:
    """One side's cell of a row, its wrapped lines joined with single spaces."""
    start = _demo._FAULT_WIDTH + len(_demo._GAP)
    if side == "guarded":
        start += _demo._CELL_WIDTH + len(_demo._GAP)
    end = start + _demo._CELL_WIDTH
    cells = [line[start:end] for line in block.splitlines() if not LOG_LINE.match(line)]
    return " ".join(" ".join(cells).split())


def test_a_silent_stream_freezes_the_sdk_and_sdkguard_recovers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    started = time.monotonic()
    code, out, rows = run_demo(capsys, "silent-stream", "pings-only")
    assert time.monotonic() - started < 15
    assert code == 0, out
    assert list(rows) == ["silent-stream", "pings-only"]

    silent = rows["silent-stream"]
    assert silent.title == "stream goes silent"
    assert (silent.plain, silent.plain_tries) == ("FAILED", 1)
    assert silent.plain_seconds >= 0.8  # the plain client's read timeout in fast mode
    assert column(silent.block, "plain").startswith("FAILED")
    assert f"0 tokens, then {http.__name__}.ReadTimeout" in column(silent.block, "plain")
    assert (silent.guarded, silent.guarded_tries) == ("ok", 2)
    assert re.search(
        r"^ +WARNING sdkguard: messages\.create: the stream went silent; retrying in [\d.]+ m?s "
        r"\(attempt 2 of 5\)$",
        silent.block,
        re.MULTILINE,
    )

    pings = rows["pings-only"]
    assert (pings.plain, pings.guarded, pings.guarded_tries) == ("STUCK", "ok", 2)
    assert "frozen at 0 tokens, no error" in column(pings.block, "plain")
    assert "WARNING sdkguard: messages.create: no content arrived, only pings" in pings.block

    assert "\033[" not in out, "no terminal codes when stdout is not a terminal"
    assert "sdkguard.install(max_attempts=5" in out
    assert "2 of 2 guarded calls ended as expected" in out
    assert not sdkguard.is_installed(), "the demo uninstalls what it installed"


def test_faults_with_and_without_content(capsys: pytest.CaptureFixture[str]) -> None:
    names = [
        "reset-before-content",
        "overloaded-529",
        "sse-error",
        "truncated",
        "refused",
        "after-content",
        "final-message",
    ]
    code, out, rows = run_demo(capsys, *names)
    assert code == 0, out
    outcomes = {
        name: (r.plain, r.plain_tries, r.guarded, r.guarded_tries) for name, r in rows.items()
    }
    assert outcomes == {
        "reset-before-content": ("FAILED", 1, "ok", 2),
        # sdkguard disabled by a scope: the SDK's own retries work as without sdkguard
        "overloaded-529": ("ok", 2, "ok", 2),
        "sse-error": ("FAILED", 1, "ok", 2),
        "truncated": ("FAILED", 1, "ok", 2),
        "refused": ("ok", 2, "ok", 2),
        "after-content": ("FAILED", 1, "PARTIAL", 1),
        "final-message": ("FAILED", 1, "ok", 2),
    }
    assert "(the SDK's own retry)" in column(rows["overloaded-529"].block, "plain")
    assert "APIStatusError (overloaded_error)" in column(rows["sse-error"].block, "plain")
    assert "connection refused (ECONNREFUSED); retrying in" in rows["refused"].block
    after = rows["after-content"].block
    assert "StreamInterrupted, partial_message 'Hello from the" in column(after, "guarded")
    assert "ERROR sdkguard: messages.create: giving up after 1 attempt" in after
    final = rows["final-message"].block
    assert ".get_final_message()" in final
    assert "WARNING sdkguard: messages.stream: connection reset by peer" in final
    assert "7 of 7 guarded calls ended as expected" in out


def test_an_unexpected_guarded_outcome_fails_the_demo(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = tuple(
        dataclasses.replace(row, expect="partial") if row.name == "truncated" else row
        for row in _demo._ROWS
    )
    monkeypatch.setattr(_demo, "_ROWS", rows)
    code, out, parsed = run_demo(capsys, "truncated")
    assert code == 1
    assert parsed["truncated"].guarded == "ok"
    assert "UNEXPECTED: wanted PARTIAL" in out
    assert "0 of 1 guarded calls ended as expected" in out
    assert out.rstrip().endswith("; unexpected: truncated")


def test_the_previous_installation_is_restored(capsys: pytest.CaptureFixture[str]) -> None:
    sdkguard.install(sdkguard.Policy(max_attempts=7))
    code, _, _ = run_demo(capsys, "reset-before-content")
    assert code == 0
    assert sdkguard.is_installed()
    assert current_policy().max_attempts == 7


def test_unknown_row_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["demo", "--only", "no-such-row"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "unknown row no-such-row" in err and "silent-stream" in err


def test_module_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sdkguard", "demo", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m sdkguard demo")
    assert "--fast" in result.stdout and "silent-stream" in result.stdout
    assert "proxy-silent-stream" in result.stdout and "--client" in result.stdout


# -- the proxy's rows: a client that is not Python, alone and through sdkguard proxy -------------

CLIENT_ROWS = ["proxy-silent-stream", "proxy-reset-before-content"]


def parse_client_rows(out: str) -> dict[str, Row]:
    """The proxy section's rows, by row name."""
    assert "sdkguard proxy: a client that is not Python" in out, out
    section = out.split("sdkguard proxy: a client that is not Python")[1].split("Notes\n")[0]
    names = {i: row.name for i, row in enumerate(_demo._all_rows(), 1)}
    matches = list(ROW.finditer(section))
    rows: dict[str, Row] = {}
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(section)
        rows[names[int(m["number"])]] = Row(
            title=m["title"],
            plain=m["plain"],
            plain_tries=int(m["plain_tries"]),
            plain_seconds=float(m["plain_s"]),
            guarded=m["guarded"],
            guarded_tries=int(m["guarded_tries"]),
            block=section[m.start() : end],
        )
    return rows


def run_client_rows(
    capsys: pytest.CaptureFixture[str], client: str, *only: str
) -> tuple[int, str, dict[str, Row]]:
    code = main(["demo", "--fast", "--client", client, "--only", ",".join(only or CLIENT_ROWS)])
    out = capsys.readouterr().out
    return code, out, parse_client_rows(out)


def nothing_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Any, *tools: str) -> None:
    """No npm client installed, and only `tools` on PATH."""
    from sdkguard import _demo_proxy

    monkeypatch.setattr(_demo_proxy, "_install_dirs", lambda: [])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in tools:
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(bin_dir))


def test_a_python_client_alone_and_through_the_proxy(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, rows = run_client_rows(capsys, "python")
    assert code == 0, out
    assert "client   a tiny Python client (urllib, not the anthropic SDK): as --client asked" in out
    assert "the Python client alone" in out and "through sdkguard proxy" in out
    assert list(rows) == CLIENT_ROWS

    silent = rows["proxy-silent-stream"]
    assert silent.title == "stream goes silent" and "stall_after(2)" in silent.block
    assert (silent.plain, silent.plain_tries, silent.guarded, silent.guarded_tries) == (
        "STUCK",
        1,
        "ok",
        2,
    )
    alone = column(silent.block, "plain")
    assert "still waiting after 2 s at 0 tokens, no error: the demo stopped it" in alone
    assert "urlopen without a timeout waits forever" in alone
    assert column(silent.block, "guarded").endswith("complete message")
    assert re.search(
        r"^ +WARNING sdkguard\.proxy: POST /v1/messages: the stream went silent; retrying in "
        r"[\d.]+ m?s \(attempt 2 of 5\)$",
        silent.block,
        re.MULTILINE,
    )

    reset = rows["proxy-reset-before-content"]
    assert (reset.plain, reset.plain_tries, reset.guarded, reset.guarded_tries) == (
        "FAILED",
        1,
        "ok",
        2,
    )
    assert "ConnectionResetError" in column(reset.block, "plain")
    assert "WARNING sdkguard.proxy: POST /v1/messages: connection reset by peer" in reset.block
    assert "With Claude Code installed (make real-clients, or claude on PATH)" in out
    assert "2 of 2 guarded calls ended as expected" in out
    assert "plain SDK" not in out, "no library table when only the proxy's rows run"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not on PATH")
def test_curl_alone_and_through_the_proxy(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, rows = run_client_rows(capsys, "curl")
    assert code == 0, out
    assert re.search(r"^  client   curl [\d.]+: as --client asked$", out, re.MULTILINE)
    outcomes = {
        name: (r.plain, r.plain_tries, r.guarded, r.guarded_tries) for name, r in rows.items()
    }
    assert outcomes == {
        "proxy-silent-stream": ("STUCK", 1, "ok", 2),
        "proxy-reset-before-content": ("FAILED", 1, "ok", 2),
    }
    assert "curl has no read timeout" in column(rows["proxy-silent-stream"].block, "plain")
    assert "curl: (" in column(rows["proxy-reset-before-content"].block, "plain")


def test_auto_without_any_client_uses_python(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    nothing_installed(monkeypatch, tmp_path)
    code, out, rows = run_client_rows(capsys, "auto", "proxy-reset-before-content")
    assert code == 0, out
    client = " ".join(out.split("  client   ")[1].split("  call")[0].split())
    assert client == (
        "a tiny Python client (urllib, not the anthropic SDK): Claude Code is not installed here "
        "(make real-clients installs it, with the TypeScript SDK, into .cache/real-clients: "
        "420 MB from npm, and the demo then runs Claude Code), and curl is not on PATH"
    )
    reset = rows["proxy-reset-before-content"]
    assert (reset.plain, reset.guarded, reset.guarded_tries) == ("FAILED", "ok", 2)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not on PATH")
def test_auto_with_curl_only_uses_curl_and_says_how_to_get_claude_code(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    nothing_installed(monkeypatch, tmp_path, "curl")
    code, out, rows = run_client_rows(capsys, "auto", "proxy-reset-before-content")
    assert code == 0, out
    assert re.search(r"^  client   curl [\d.]+: Claude Code is not installed here", out, re.M)
    assert "make real-clients installs it" in out
    assert rows["proxy-reset-before-content"].guarded == "ok"


def test_a_client_that_is_not_there_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    nothing_installed(monkeypatch, tmp_path)
    code = main(["demo", "--fast", "--client", "claude", "--only", "proxy-silent-stream"])
    assert code == 2
    captured = capsys.readouterr()
    assert captured.out == "", "nothing runs"
    assert captured.err.startswith("sdkguard demo: --client claude: Claude Code is not installed")
    assert "make real-clients" in captured.err


@pytest.mark.real_clients
def test_claude_code_when_installed(capsys: pytest.CaptureFixture[str]) -> None:
    from sdkguard import _demo_proxy

    if isinstance(_demo_proxy.find_client("claude"), str):
        pytest.skip("Claude Code is not installed (make real-clients)")
    code, out, rows = run_client_rows(capsys, "auto", "proxy-reset-before-content")
    assert code == 0, out
    assert re.search(r"^  client   Claude Code [\d.]*: installed ", out, re.MULTILINE), out
    assert "Claude Code alone" in out
    reset = rows["proxy-reset-before-content"]
    assert (reset.guarded, reset.guarded_tries) == ("ok", 2)
    # Claude Code retries a reset itself: its own retry, or an error; never a hang.
    assert reset.plain in ("ok", "FAILED")
