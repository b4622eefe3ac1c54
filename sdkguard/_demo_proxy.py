"""`sdkguard demo`, second part: a client that is not Python, alone and through sdkguard proxy.

The client is the best one already on this machine, never installed by the demo: Claude Code
(installed by `make real-clients` into .cache/real-clients, or `claude` on PATH), else the
TypeScript SDK from the same place, else curl, else a few lines of Python with urllib (not the
anthropic SDK). Each runs as a subprocess in a session of its own, against the fake server
alone and through a proxy in this process, and is killed when the demo stops waiting.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

from sdkguard._demo import (
    _API_KEY,
    _CELL_WIDTH,
    _FAULT_WIDTH,
    _GAP,
    _MODEL,
    _PROMPT,
    _TABLE_WIDTH,
    _Bounds,
    _Outcome,
    _pad,
    _print_row,
    _Row,
    _Style,
)

if TYPE_CHECKING:
    from sdkguard.testing import FakeAnthropic

__all__ = ["ROWS", "Client", "Section", "find_client", "proxy_missing", "run_section"]

ClientKey = Literal["claude", "typescript", "curl", "python"]

ROWS: tuple[_Row, ...] = (
    _Row(
        "proxy-silent-stream",
        "stream goes silent",
        ("stall_after(2)",),
        lambda f, b: f.stall_after(2),
    ),
    _Row(
        "proxy-reset-before-content",
        "reset before any content",
        ("reset_after(2)",),
        lambda f, b: f.reset_after(2),
    ),
)
# The client alone would wait minutes on these (its own limits): the demo stops it sooner.
_CUT_SHORT = frozenset({"proxy-silent-stream"})

_TS_SCRIPT = r"""
const { createRequire } = require('node:module');
const load = createRequire(process.env.SDKGUARD_DEMO_NODE_MODULES + '/noop.js');
const sdk = load('@anthropic-ai/sdk');
const Anthropic = sdk.Anthropic || sdk.default;
(async () => {
  // The SDK's defaults: ANTHROPIC_BASE_URL and ANTHROPIC_API_KEY, 10 minutes, 2 retries.
  const client = new Anthropic();
  let text = '', tokens = 0, complete = false;
  try {
    const stream = await client.messages.create({
      model: process.env.SDKGUARD_DEMO_MODEL, max_tokens: 64, stream: true,
      messages: [{ role: 'user', content: process.env.SDKGUARD_DEMO_PROMPT }],
    });
    for await (const event of stream) {
      if (event.type === 'content_block_delta' && event.delta.type === 'text_delta') {
        text += event.delta.text; tokens += 1;
      } else if (event.type === 'message_stop') complete = true;
    }
    console.log(JSON.stringify({ text, tokens, complete }));
  } catch (err) {
    const name = err && err.constructor ? err.constructor.name : typeof err;
    console.log(JSON.stringify({ text, tokens, complete, error: `${name}: ${err.message}` }));
    process.exitCode = 1;
  }
})();
"""

_PYTHON_SCRIPT = r"""
import json, os, sys, urllib.request
body = json.dumps({
    "model": os.environ["SDKGUARD_DEMO_MODEL"], "max_tokens": 64, "stream": True,
    "messages": [{"role": "user", "content": os.environ["SDKGUARD_DEMO_PROMPT"]}],
}).encode()
request = urllib.request.Request(
    os.environ["ANTHROPIC_BASE_URL"].rstrip("/") + "/v1/messages", body,
    {"content-type": "application/json", "anthropic-version": "2023-06-01",
     "x-api-key": os.environ["ANTHROPIC_API_KEY"]},
)
try:
    with urllib.request.urlopen(request) as answer:  # no timeout, as urllib's default
        while line := answer.readline():
            sys.stdout.write(line.decode("utf-8", "replace"))
            sys.stdout.flush()
except Exception as err:
    print(f"{type(err).__name__}: {err}", file=sys.stderr)
    sys.exit(1)
"""

# Claude Code with no traffic but to the base URL, no terminal, no login (tests/realclients.py).
_CLAUDE_ENV = {
    "DISABLE_TELEMETRY": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "CLAUDE_CODE_DISABLE_TERMINAL_TITLE": "1",
    "CLAUDE_CODE_IDE_SKIP_AUTO_INSTALL": "1",
    "CI": "1",
    "TERM": "dumb",
    "NO_COLOR": "1",
}
_CLAUDE_MODEL = "claude-sonnet-4-5"


@dataclass(frozen=True)
class Client:
    """The client the demo runs, and why that one."""

    key: ClientKey
    name: str
    """`curl 7.88.1`, `Claude Code 2.1.332`..."""
    short: str
    """`curl`, `Claude Code`, `the TypeScript SDK`..."""
    why: str
    command: str
    """How it is run, for the section's header."""
    waits: str
    """What it does on a silent stream, in its own words."""
    argv: Callable[[str], list[str]]
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass
class _Got:
    """What the client got: its text, whether the message was whole, its error."""

    text: str = ""
    tokens: int | None = 0
    complete: bool = False
    error: str = ""


# -- finding the client ----------------------------------------------------------------------------


def _install_dirs() -> list[Path]:
    """Where `make real-clients` installs the npm clients: under the current directory and
    under the source tree this package runs from (an editable install)."""
    roots = [Path.cwd(), Path(__file__).resolve().parent.parent]
    dirs: list[Path] = []
    for root in roots:
        candidate = root / ".cache" / "real-clients" / "node_modules" / "@anthropic-ai"
        if candidate.is_dir() and candidate not in dirs:
            dirs.append(candidate)
    return dirs


def _claude_in(modules: Path) -> Path | None:
    """Claude Code's native executable in an npm install (tests/realclients.py's rule)."""
    wrapper = modules / "claude-code" / "bin" / "claude.exe"
    with contextlib.suppress(OSError), wrapper.open("rb") as handle:
        if handle.read(4) == b"\x7fELF":
            return wrapper
    machine = platform.machine().lower()
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64"}.get(machine, machine)
    for suffix in ("", "-musl"):
        candidate = modules / f"claude-code-linux-{arch}{suffix}" / "claude"
        if candidate.exists() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _version(manifest: Path) -> str:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return str(json.loads(manifest.read_text())["version"])
    return ""


def _curl_version(curl: str) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        first = subprocess.run(
            [curl, "--version"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.split()
        if len(first) >= 2:
            return first[1]
    return ""


def _claude(binary: Path | str, version: str, where: str) -> Client:
    def argv(url: str) -> list[str]:
        # Text output: the answer, or "API Error: ..." with exit status 1.
        return [str(binary), "-p", _PROMPT, "--model", _CLAUDE_MODEL]

    return Client(
        "claude",
        f"Claude Code {version}".strip(),
        "Claude Code",
        f"installed {where}",
        f'claude -p "{_PROMPT}"',
        "left alone, Claude Code waits on",
        argv,
        _CLAUDE_ENV,
    )


def _typescript(modules: Path, node: str, why: str) -> Client:
    version = _version(modules / "sdk" / "package.json")
    return Client(
        "typescript",
        f"the TypeScript SDK {version} (@anthropic-ai/sdk)".replace("  ", " "),
        "the TypeScript SDK",
        why,
        "client.messages.create({stream: true}) with the SDK's defaults",
        "the SDK's timeout is 10 minutes",
        lambda url: [node, "-e", _TS_SCRIPT],
        {"SDKGUARD_DEMO_NODE_MODULES": str(modules.parent)},
    )


def _curl(curl: str, why: str) -> Client:
    body = json.dumps(
        {
            "model": _MODEL,
            "max_tokens": 64,
            "stream": True,
            "messages": [{"role": "user", "content": _PROMPT}],
        }
    )

    def argv(url: str) -> list[str]:
        return [
            curl,
            "-sS",
            "-N",
            "-H",
            "content-type: application/json",
            "-H",
            "anthropic-version: 2023-06-01",
            "-H",
            f"x-api-key: {_API_KEY}",
            "--data-binary",
            body,
            url.rstrip("/") + "/v1/messages",
        ]

    version = _curl_version(curl)
    return Client(
        "curl",
        f"curl {version}".strip(),
        "curl",
        why,
        "curl -sS -N -H ... --data-binary '{...\"stream\": true}' $BASE/v1/messages",
        "curl has no read timeout: it waits forever",
        argv,
    )


def _python(why: str) -> Client:
    return Client(
        "python",
        "a tiny Python client (urllib, not the anthropic SDK)",
        "the Python client",
        why,
        "urllib.request.urlopen(POST $BASE/v1/messages), the events printed as they come",
        "urlopen without a timeout waits forever",
        lambda url: [sys.executable, "-I", "-S", "-c", _PYTHON_SCRIPT],
    )


_GET_CLAUDE = "make real-clients installs it, with the TypeScript SDK, into .cache/real-clients"


def find_client(choice: str = "auto") -> Client | str:
    """The client to run (`choice`: auto, or one of them), or why the chosen one cannot run."""
    node = shutil.which("node")
    installs = _install_dirs()
    if choice in ("auto", "claude"):
        for modules in installs:
            binary = _claude_in(modules)
            if binary is not None:
                version = _version(modules / "claude-code" / "package.json")
                where = modules.parent.parent
                return _claude(binary, version, f"in {where} (by make real-clients)")
        on_path = shutil.which("claude")
        if on_path is not None:
            return _claude(on_path, "", f"on PATH ({on_path})")
        if choice == "claude":
            return f"Claude Code is not installed here ({_GET_CLAUDE}; or put claude on PATH)"
    if choice in ("auto", "typescript"):
        for modules in installs:
            if node is not None and (modules / "sdk" / "package.json").exists():
                why = f"installed in {modules.parent.parent}"
                if choice == "auto":
                    why += ", and Claude Code is not (make real-clients installs it)"
                return _typescript(modules, node, why)
        if choice == "typescript":
            return f"the TypeScript SDK is not installed here with node ({_GET_CLAUDE})"
    missing = (
        f"Claude Code is not installed here ({_GET_CLAUDE}: 420 MB from npm, and the demo "
        "then runs Claude Code)"
    )
    curl = shutil.which("curl")
    if choice in ("auto", "curl"):
        if curl is not None:
            return _curl(curl, "as --client asked" if choice == "curl" else missing)
        if choice == "curl":
            return "curl is not on PATH"
    if choice == "python":
        return _python("as --client asked")
    return _python(f"{missing}, and curl is not on PATH")


# -- running it ------------------------------------------------------------------------------------


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _run(argv: Sequence[str], env: Mapping[str, str], limit: float) -> tuple[int | None, str, str]:
    """Run `argv` in a session of its own; at `limit`, kill its process group (status None)."""
    process = subprocess.Popen(
        list(argv),
        env=dict(env),
        cwd=env["HOME"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    killed = False
    try:
        out, err = process.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        killed = True
        _kill_group(process.pid)
        out, err = process.communicate()
    finally:
        if process.poll() is None:
            _kill_group(process.pid)
            process.wait()
    _kill_group(process.pid)  # whatever it left running
    decoded = (out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))
    return (None if killed else process.returncode), *decoded


def _sse(text: str, got: _Got) -> None:
    """The text deltas, message_stop and error events of a raw SSE body."""
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = "", ""
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
        if name == "content_block_delta":
            with contextlib.suppress(ValueError, AttributeError):
                got.text += json.loads(data)["delta"].get("text", "")
                got.tokens = (got.tokens or 0) + 1
        elif name == "message_stop":
            got.complete = True
        elif name == "error":
            with contextlib.suppress(ValueError, KeyError, TypeError):
                got.error = f"error event ({json.loads(data)['error']['type']})"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _understood(client: Client, returncode: int | None, out: str, err: str) -> _Got:
    got = _Got()
    if client.key == "claude":
        got.tokens = None  # not observable from outside
        text = out.strip()
        if returncode == 0:
            got.text, got.complete = text, True
        elif returncode is not None:
            got.error = _last_line(text) or _last_line(err) or f"exit status {returncode}"
        return got
    if client.key == "typescript":
        with contextlib.suppress(ValueError, TypeError):
            report = json.loads(_last_line(out))
            got.text, got.tokens = str(report.get("text", "")), int(report.get("tokens", 0))
            got.complete, got.error = bool(report.get("complete")), str(report.get("error", ""))
        if returncode not in (0, None) and not got.error:
            got.error = _last_line(err) or f"exit status {returncode}"
        return got
    _sse(out, got)
    if returncode not in (0, None) and not got.error:
        got.error = _last_line(err) or f"exit status {returncode}"
    return got


def _shorten(error: str) -> str:
    error = re.sub(r"\s+", " ", error)
    return error if len(error) <= 90 else error[:87] + "..."


class _ProxyLog(logging.Handler):
    """The proxy's warnings and errors, as the demo shows the library's."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


@contextlib.contextmanager
def _proxy_log() -> Iterator[_ProxyLog]:
    handler = _ProxyLog()
    log = logging.getLogger("sdkguard.proxy")
    log.addHandler(handler)
    try:
        yield handler
    finally:
        log.removeHandler(handler)


def _side(
    row: _Row, bounds: _Bounds, client: Client, proxied: bool, log: _ProxyLog | None
) -> _Outcome:
    from sdkguard import Policy
    from sdkguard.proxy import ProxyConfig, RunningProxy
    from sdkguard.testing import FakeAnthropic, faults

    limit = bounds.client_watchdog if proxied or row.name not in _CUT_SHORT else bounds.client_cut
    if client.key == "claude" and limit == bounds.client_cut:
        limit += 2.0  # Claude Code takes a second or two to start, more on a loaded machine
    server: FakeAnthropic
    with FakeAnthropic() as server, tempfile.TemporaryDirectory(prefix="sdkguard-demo-") as home:
        server.script(row.first(faults, bounds), faults.ok())
        proxy = None
        if proxied:
            config = ProxyConfig(upstream=server.url, port=0, policy=Policy(**bounds.policy))
            proxy = RunningProxy(config)
        try:
            url = proxy.url if proxy is not None else server.url
            env = {
                "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
                "LANG": "C.UTF-8",
                "HOME": home,
                "TMPDIR": home,
                "NO_PROXY": "127.0.0.1,localhost",
                "no_proxy": "127.0.0.1,localhost",
                "ANTHROPIC_BASE_URL": url,
                "ANTHROPIC_API_KEY": _API_KEY,
                "SDKGUARD_DEMO_MODEL": _MODEL,
                "SDKGUARD_DEMO_PROMPT": _PROMPT,
                **client.env,
            }
            started = time.monotonic()
            returncode, out, err = _run(client.argv(url), env, limit)
            seconds = time.monotonic() - started
            requests = len(server.requests)
        finally:
            if proxy is not None:
                proxy.stop()
    logs = list(log.lines) if log is not None else []
    got = _understood(client, returncode, out, err)
    tries = max(requests, 1)
    if returncode is None:
        waited = f"still waiting after {limit:g} s"
        if got.tokens is not None:
            waited += f" at {got.tokens} tokens"
        detail = f"{waited}, no error: the demo stopped it"
        if requests == 0:
            detail = f"no request sent within {limit:g} s (a slow start): the demo stopped it"
        if not proxied:
            detail += f"; {client.waits}"
        return _Outcome("stuck", limit, tries, got.tokens, got.text, logs=logs, detail=detail)
    from sdkguard.testing.faults import DEFAULT_TEXT

    if got.error:
        detail = _shorten(got.error)
        if got.tokens:
            detail = f"{got.tokens} tokens, then {detail}"
        return _Outcome("failed", seconds, tries, got.tokens, got.text, logs=logs, detail=detail)
    if not got.complete or got.text.strip() != DEFAULT_TEXT:
        detail = "the answer ended without message_stop, silently"
        if got.complete:
            detail = f"wrong text: {got.text.strip()[:40]!r}"
        return _Outcome("failed", seconds, tries, got.tokens, got.text, logs=logs, detail=detail)
    detail = "complete message"
    if tries > 1 and not proxied:
        detail += f" ({client.short}'s own retry)"
    return _Outcome("ok", seconds, tries, got.tokens, got.text, logs=logs, detail=detail)


# -- the section -----------------------------------------------------------------------------------


@dataclass
class Section:
    """What the section ran: for the demo's summary line."""

    rows: int = 0
    unexpected: list[str] = field(default_factory=list)
    alone_seconds: float = 0.0
    proxied_seconds: float = 0.0


def _proxy_command(policy: Mapping[str, Any]) -> str:
    options = " ".join(f"--{name.replace('_', '-')} {value:g}" for name, value in policy.items())
    return f"sdkguard proxy --upstream $FAKE {options} -- <client>"


def _section_header(out: TextIO, style: _Style, client: Client, bounds: _Bounds) -> None:
    indent = " " * 11

    def item(label: str, text: str) -> None:
        lines = textwrap.wrap(text, _TABLE_WIDTH - len(indent))
        out.write(f"  {label:<9}{lines[0]}\n")
        out.writelines(f"{indent}{line}\n" for line in lines[1:])

    out.write("\n" + style.paint("sdkguard proxy", "1"))
    out.write(": a client that is not Python, alone and through the proxy (in this\n")
    out.write("process, the library's policy above), against a fake server as before.\n\n")
    item("client", f"{client.name}: {client.why}")
    item("call", f"{client.command} (BASE: the fake server, or the proxy)")
    item("proxy", _proxy_command(bounds.policy))
    out.write("\n")
    titles = (
        _pad("fault (first attempt only)", _FAULT_WIDTH)
        + _GAP
        + _pad(f"{client.short} alone", _CELL_WIDTH)
        + _GAP
        + "through sdkguard proxy"
    )
    out.write(style.paint(titles, "1") + "\n")
    out.write("-" * _FAULT_WIDTH + _GAP + "-" * _CELL_WIDTH + _GAP + "-" * _CELL_WIDTH + "\n")
    out.flush()


def proxy_missing() -> bool:
    """Whether the proxy extra (aiohttp) is missing."""
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return True
    return False


def run_section(
    out: TextIO,
    style: _Style,
    bounds: _Bounds,
    rows: Sequence[_Row],
    first_number: int,
    client: Client | None,
) -> Section:
    """Print the section and run its rows (None: the proxy extra is missing, say so)."""
    section = Section()
    if client is None:
        out.write(
            "\nsdkguard proxy: not shown, it needs the proxy extra (aiohttp): "
            "pip install 'sdkguard[proxy]'\n"
        )
        return section
    _section_header(out, style, client, bounds)
    for number, row in enumerate(ROWS, first_number):
        if row not in rows:
            continue
        if style.tty:
            out.write(f"  ... {row.title}\r")
            out.flush()
        with _proxy_log() as log, ThreadPoolExecutor(2, "sdkguard-demo-client") as pool:
            # Both at once: the row takes as long as the slower side.
            alone_run = pool.submit(_side, row, bounds, client, False, None)
            proxied_run = pool.submit(_side, row, bounds, client, True, log)
            alone, proxied = alone_run.result(), proxied_run.result()
        section.rows += 1
        section.alone_seconds += alone.seconds
        section.proxied_seconds += proxied.seconds
        as_expected = proxied.status == row.expect and proxied.tries == row.expect_tries
        if not as_expected:
            section.unexpected.append(row.name)
        if style.tty:
            out.write("\r\033[K")
        _print_row(out, style, number, row, bounds, alone, proxied, as_expected)
    notes = [
        "tries: requests the fake server received for the one call, the client's own "
        "retries included. Through the proxy, the client sent one request and saw one clean "
        "answer; the proxy made the attempts.",
        "Any client works the same way: sdkguard proxy -- claude, or ANTHROPIC_BASE_URL="
        "http://127.0.0.1:8787 with sdkguard proxy serving (docs/proxy.md).",
    ]
    if client.key != "claude":
        notes.append(
            "With Claude Code installed (make real-clients, or claude on PATH) the demo runs "
            "it here instead."
        )
    out.write("Notes\n")
    for note in notes:
        out.write(
            textwrap.fill(note, _TABLE_WIDTH, initial_indent="  * ", subsequent_indent="    ")
            + "\n"
        )
    out.flush()
    return section
