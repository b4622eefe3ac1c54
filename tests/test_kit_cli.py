"""`python -m sdkguard.testing serve` with a bad argument: one line on stderr, exit status 2.

Each test runs the real command in a subprocess, as a user types it.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.sdk_independent, pytest.mark.timeout(60)]


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sdkguard.testing", "serve", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit status 2 (argparse's for a usage error), and one line naming `words`."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("python -m sdkguard.testing")
    for word in words:
        assert word in result.stderr
    assert result.stdout == ""  # no URL: it never listened


PORT_FORM = "from 0 to 65535"


@pytest.mark.parametrize("port", ["70000", "-1", "abc", "65536", ""])
def test_an_impossible_port(port: str) -> None:
    assert_one_line_error(serve(f"--port={port}"), "argument --port", repr(port), PORT_FORM)


def test_a_taken_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert_one_line_error(serve("--port", port), "argument --port", port, PORT_FORM)


@pytest.mark.parametrize(
    ("spec", "form"),
    [
        ("reset_after:x", "reset_after:n"),
        ("reset_after", "reset_after:n"),
        ("reset_after:-1", "reset_after:n"),
        ("stall_after:2,soon", "stall_after:n[,seconds]"),
        ("status:529,1", "status:code"),
        ("pings_only_after:1,0", "pings_only_after:n,interval[,seconds]"),
        ("buffered:x", "buffered:seconds"),
    ],
)
@pytest.mark.parametrize("option", ["--fault", "--default"])
def test_a_malformed_fault(option: str, spec: str, form: str) -> None:
    assert_one_line_error(serve(option, spec), f"argument {option}", repr(spec), form)


def test_an_unknown_fault() -> None:
    result = serve("--fault", "ok", "--fault", "reset_afterwards:3")
    assert_one_line_error(result, "argument --fault", "'reset_afterwards'", "NAME[:ARG,...]")
    assert "reset_after," in result.stderr  # the names it knows


def test_an_unknown_option_is_one_line_too() -> None:
    assert_one_line_error(serve("--prot", "8080"), "--prot")
