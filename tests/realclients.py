"""Real clients of the Anthropic API, installed from npm and run against a base URL.

The clients a gateway in front of the API serves: the official TypeScript SDK, Claude Code and
curl. Each runs as a subprocess pointed at `base_url` (the fake server's URL, or a proxy's, a
path prefix included: `http://127.0.0.1:PORT/team-a`), with a hard timeout that kills its whole
process group, and comes back as a `ClientResult`: exit status, output, elapsed seconds and
what the application got (`Outcome`: the text, the error).

The npm packages are pinned in tests/clients/package.json and package-lock.json and installed
with `npm ci` into .cache/real-clients (npm's own cache in .cache/npm), again only when the lock
changes. `ensure_installed()` is safe to call from several pytest-xdist workers at once (a file
lock); it returns None when node or npm is missing (`unavailable_reason()` says which), and
raises `InstallError` when npm is there but the install fails.

Nothing here prints an API key or a header value: the key every client gets is the dummy
`DUMMY_API_KEY`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parent.parent
CLIENTS_SOURCE = Path(__file__).resolve().parent / "clients"
CACHE = ROOT / ".cache"
INSTALL_DIR = CACHE / "real-clients"
NPM_CACHE = CACHE / "npm"
_LOCK_FILE = CACHE / "real-clients.lock"
_STAMP = INSTALL_DIR / ".installed"
_MANIFESTS = ("package.json", "package-lock.json")

DUMMY_API_KEY = "sk-ant-dummy-real-clients"
CLAUDE_MODEL = "claude-sonnet-4-5"
INSTALL_TIMEOUT = 900.0

TsMode = Literal["stream", "create-stream", "create"]
TS_MODES: tuple[TsMode, ...] = ("stream", "create-stream", "create")


class InstallError(RuntimeError):
    """npm is there, but installing the pinned clients failed."""


@dataclass(frozen=True)
class Outcome:
    """What the application got: the text received (partial when cut) and the error, if any.

    `error_type` is the error's class for the TypeScript SDK (`APIConnectionError`,
    `AnthropicError`, `TypeError`...), the kind of failure Claude Code reports (its result's
    subtype, or `"exit"` for an exit without a result), curl's exit code as `"curl:N"`, or
    `"timeout"` when the harness killed the client. `details` holds the client's own report
    (the TypeScript script's JSON, Claude Code's result message, curl's status).
    """

    text: str = ""
    error_type: str | None = None
    error_message: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error_type is None


@dataclass(frozen=True)
class ClientResult:
    client: str
    returncode: int | None  # None when the harness killed the client on its timeout
    stdout: str
    stderr: str
    elapsed: float
    outcome: Outcome
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.outcome.ok

    @property
    def text(self) -> str:
        return self.outcome.text

    def summary(self) -> str:
        """One line for logs and assertion messages (no output, no headers)."""
        state = "ok" if self.ok else f"{self.outcome.error_type}: {self.outcome.error_message}"
        return f"{self.client}: exit {self.returncode}, {self.elapsed:.2f} s, {state}"


# Installing


def unavailable_reason() -> str | None:
    """Why the real clients cannot run here (node or npm missing), else None."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not found on PATH: the real-client tests need Node.js"
    return None


def _wanted_stamp() -> str:
    digest = hashlib.sha256()
    for name in _MANIFESTS:
        digest.update((CLIENTS_SOURCE / name).read_bytes())
    digest.update(f"{platform.system()} {platform.machine()}".encode())
    return digest.hexdigest()


def _is_installed(stamp: str) -> bool:
    try:
        sdk = INSTALL_DIR / "node_modules" / "@anthropic-ai" / "sdk" / "package.json"
        return _STAMP.read_text() == stamp and sdk.exists() and _claude_binary(INSTALL_DIR).exists()
    except (OSError, InstallError):
        return False


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_installed() -> Path | None:
    """The directory the pinned clients are installed in (installing them if the lock changed),
    or None when node or npm is missing (see `unavailable_reason()`).

    Raises `InstallError` when npm fails. Serialised across processes by a file lock, so
    pytest-xdist workers that call it at once install once.
    """
    if unavailable_reason() is not None:
        return None
    stamp = _wanted_stamp()
    if _is_installed(stamp):
        return INSTALL_DIR
    with _file_lock(_LOCK_FILE):
        if _is_installed(stamp):  # another worker installed it while this one waited
            return INSTALL_DIR
        _install(stamp)
    return INSTALL_DIR


def _install(stamp: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        _STAMP.unlink()
    INSTALL_DIR.mkdir(parents=True, exist_ok=True)
    for name in _MANIFESTS:
        shutil.copyfile(CLIENTS_SOURCE / name, INSTALL_DIR / name)
    npm = shutil.which("npm")
    assert npm is not None
    argv = [
        npm,
        "ci",
        "--prefix",
        str(INSTALL_DIR),
        "--cache",
        str(NPM_CACHE),
        "--prefer-offline",
        "--no-audit",
        "--no-fund",
        "--engine-strict=false",  # Claude Code asks for Node 22 but runs a native binary
        "--loglevel=error",
    ]
    env = {**os.environ, "npm_config_update_notifier": "false"}
    returncode, stdout, stderr, _, timed_out = _run(argv, env, INSTALL_TIMEOUT, cwd=INSTALL_DIR)
    if timed_out or returncode != 0:
        how = f"timed out after {INSTALL_TIMEOUT:.0f} s" if timed_out else f"exit {returncode}"
        raise InstallError(
            f"npm ci into {INSTALL_DIR} failed ({how}):\n{(stdout + stderr)[-4000:]}"
        )
    try:
        _claude_binary(INSTALL_DIR)
    except InstallError as error:
        raise InstallError(f"npm ci succeeded but {error}") from None
    _STAMP.write_text(stamp)


def _claude_binary(install_dir: Path) -> Path:
    """Claude Code's native executable. Its postinstall copies the platform package's binary
    over bin/claude.exe; when npm skipped install scripts, the platform package's own copy."""
    modules = install_dir / "node_modules" / "@anthropic-ai"
    wrapper = modules / "claude-code" / "bin" / "claude.exe"
    with contextlib.suppress(OSError), wrapper.open("rb") as handle:
        if handle.read(4) == b"\x7fELF":
            return wrapper
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    for suffix in ("", "-musl"):
        candidate = modules / f"claude-code-linux-{arch}{suffix}" / "claude"
        if candidate.exists() and os.access(candidate, os.X_OK):
            return candidate
    raise InstallError(f"no Claude Code binary for linux-{arch} in {modules}")


def installed_versions(install_dir: Path) -> dict[str, str]:
    """The versions installed, by package name (for reports)."""
    versions = {}
    for name in ("sdk", "claude-code"):
        manifest = install_dir / "node_modules" / "@anthropic-ai" / name / "package.json"
        versions[f"@anthropic-ai/{name}"] = json.loads(manifest.read_text())["version"]
    return versions


# Running


def _run(
    argv: Sequence[str],
    env: Mapping[str, str],
    timeout: float,
    cwd: Path | None = None,
) -> tuple[int | None, str, str, float, bool]:
    """Run `argv` in a session of its own; on `timeout`, kill its whole process group.

    Returns (exit status or None when killed, stdout, stderr, elapsed seconds, timed out).
    """
    start = time.monotonic()
    process = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    timed_out = False
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(process.pid)
        stdout, stderr = process.communicate()
    finally:
        if process.poll() is None:  # interrupted (KeyboardInterrupt, a pytest timeout)
            _kill_group(process.pid)
            process.wait()
    elapsed = time.monotonic() - start
    _kill_group(process.pid)  # whatever the client left running in its group
    returncode = None if timed_out else process.returncode
    return (
        returncode,
        stdout.decode("utf-8", "replace"),
        stderr.decode("utf-8", "replace"),
        elapsed,
        timed_out,
    )


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _base_env(home: Path) -> dict[str, str]:
    """A clean environment: nothing of the caller's ANTHROPIC_*, CLAUDE_*, proxies or HOME."""
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": str(home),
        "TMPDIR": str(home),
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


def _with(env: dict[str, str], changes: Mapping[str, str | None] | None) -> dict[str, str]:
    """`env` with `changes` applied: a value of None removes the variable."""
    for name, value in (changes or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def _check_target(base_url: str | None, wrapper: Sequence[str]) -> None:
    """A client without a base URL would call the real API: only a wrapper may set it."""
    if base_url is None and not wrapper:
        raise ValueError("base_url is None without a wrapper to set ANTHROPIC_BASE_URL")


def _installed(install_dir: Path | None) -> Path:
    if install_dir is not None:
        return install_dir
    found = ensure_installed()
    if found is None:
        raise RuntimeError(unavailable_reason() or "the real clients are not installed")
    return found


def _timed_out(
    client: str, stdout: str, stderr: str, elapsed: float, timeout: float
) -> ClientResult:
    message = f"killed by the harness after {timeout:g} s"
    return ClientResult(
        client, None, stdout, stderr, elapsed, Outcome("", "timeout", message), True
    )


def run_ts_client(
    base_url: str | None,
    mode: TsMode,
    timeout: float,
    *,
    max_retries: int = 2,
    request_timeout: float = 10.0,
    prompt: str = "say hi",
    model: str = CLAUDE_MODEL,
    env: Mapping[str, str | None] | None = None,
    wrapper: Sequence[str] = (),
    install_dir: Path | None = None,
) -> ClientResult:
    """One Messages call with the TypeScript SDK (tests/clients/ts_client.cjs).

    `mode`: `stream` (`client.messages.stream()`, its text events and `finalMessage()`),
    `create-stream` (`create({stream: true})`, iterating the events) or `create`.
    `max_retries` and `request_timeout` (seconds) are the SDK's `maxRetries` and `timeout`;
    `timeout` bounds the whole process. `wrapper` is a command the client runs under
    (`sdkguard proxy --upstream URL --port 0 --`): with `base_url` None, the SDK takes its
    base URL from the ANTHROPIC_BASE_URL the wrapper sets.
    """
    _check_target(base_url, wrapper)
    install_dir = _installed(install_dir)
    node = shutil.which("node")
    assert node is not None
    argv = [
        *wrapper,
        node,
        str(CLIENTS_SOURCE / "ts_client.cjs"),
        *(["--base-url", base_url] if base_url is not None else []),
        "--mode",
        mode,
        "--max-retries",
        str(max_retries),
        "--timeout-ms",
        str(round(request_timeout * 1000)),
        "--model",
        model,
        "--prompt",
        prompt,
    ]
    client = f"ts-sdk:{mode}"
    with tempfile.TemporaryDirectory(prefix="sdkguard-ts-") as home:
        full_env = _with(
            {
                **_base_env(Path(home)),
                "ANTHROPIC_API_KEY": DUMMY_API_KEY,
                "SDKGUARD_CLIENTS_NODE_MODULES": str(install_dir / "node_modules"),
            },
            env,
        )
        returncode, stdout, stderr, elapsed, timed_out = _run(argv, full_env, timeout)
    if timed_out:
        return _timed_out(client, stdout, stderr, elapsed, timeout)
    return ClientResult(client, returncode, stdout, stderr, elapsed, _ts_outcome(stdout, stderr))


def _last_json_line(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict):
                    return value
    return None


def _ts_outcome(stdout: str, stderr: str) -> Outcome:
    report = _last_json_line(stdout)
    if report is None:
        return Outcome("", "no-report", stderr.strip()[-500:] or "the client printed no report")
    error = report.get("error")
    if not report.get("ok") and isinstance(error, dict):
        return Outcome(report.get("text", ""), str(error["name"]), str(error["message"]), report)
    return Outcome(report.get("text", ""), None, None, report)


# Claude Code: whatever it needs to run without a terminal, a login or any host but base_url.
CLAUDE_ENV: dict[str, str] = {
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


def run_claude(
    base_url: str | None,
    prompt: str,
    timeout: float,
    *,
    env: Mapping[str, str | None] | None = None,
    output_format: Literal["stream-json", "text"] = "stream-json",
    model: str = CLAUDE_MODEL,
    extra_args: Sequence[str] = (),
    wrapper: Sequence[str] = (),
    install_dir: Path | None = None,
) -> ClientResult:
    """`claude -p PROMPT` against `base_url`, in a fresh HOME (a temporary directory that is
    also its working directory), with the dummy API key and no traffic but to `base_url`.

    `env` adds to (or overrides) its environment, a value of None removes a variable:
    `CLAUDE_CODE_MAX_RETRIES`, `API_TIMEOUT_MS`, `{"ANTHROPIC_AUTH_TOKEN": ..., "ANTHROPIC_API_KEY":
    None}`... `timeout` bounds the whole process. The outcome's `error_type` is `"api_error"`
    for an "API Error: ..." result (the HTTP status, if any, in `details["api_error_status"]`).
    `wrapper` is a command Claude Code runs under (`sdkguard proxy --upstream URL --port 0
    --`): with `base_url` None, ANTHROPIC_BASE_URL is the one the wrapper sets.
    """
    _check_target(base_url, wrapper)
    binary = _claude_binary(_installed(install_dir))
    argv = [*wrapper, str(binary), "-p", prompt, "--model", model, "--output-format", output_format]
    if output_format == "stream-json":
        argv.append("--verbose")
    argv += ["--no-session-persistence", *extra_args]
    with tempfile.TemporaryDirectory(prefix="sdkguard-claude-") as home:
        full_env = _with(
            {**_base_env(Path(home)), "ANTHROPIC_API_KEY": DUMMY_API_KEY, **CLAUDE_ENV}, env
        )
        if base_url is not None:
            full_env["ANTHROPIC_BASE_URL"] = base_url
        returncode, stdout, stderr, elapsed, timed_out = _run(
            argv, full_env, timeout, cwd=Path(home)
        )
    client = f"claude:{output_format}"
    if timed_out:
        return _timed_out(client, stdout, stderr, elapsed, timeout)
    if output_format == "text":
        outcome = _claude_text_outcome(returncode, stdout, stderr)
    else:
        outcome = _claude_stream_outcome(returncode, stdout, stderr)
    return ClientResult(client, returncode, stdout, stderr, elapsed, outcome)


def claude_messages(stdout: str) -> list[dict[str, Any]]:
    """The JSON messages of Claude Code's stream-json output, in order."""
    messages = []
    for line in stdout.splitlines():
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                messages.append(value)
    return messages


def _claude_stream_outcome(returncode: int | None, stdout: str, stderr: str) -> Outcome:
    messages = claude_messages(stdout)
    result = next((m for m in reversed(messages) if m.get("type") == "result"), None)
    if result is None:
        return Outcome("", "exit", f"exit {returncode} without a result: {stderr.strip()[-500:]}")
    if result.get("is_error") or returncode != 0:
        text = str(result.get("result") or "; ".join(map(str, result.get("errors") or [])))
        # An API failure is "API Error: ..." under the subtype "success"; other failures
        # (turn limits, budget) have a subtype of their own.
        subtype = str(result.get("subtype", "error"))
        kind = "api_error" if text.startswith("API Error") or subtype == "success" else subtype
        return Outcome("", kind, text, result)
    return Outcome(str(result.get("result", "")), None, None, result)


def _claude_text_outcome(returncode: int | None, stdout: str, stderr: str) -> Outcome:
    text = stdout.strip()
    if returncode != 0:
        return Outcome("", "exit", (text + "\n" + stderr.strip()).strip()[-500:])
    return Outcome(text, None, None, {})


def run_curl(
    base_url: str,
    timeout: float,
    *,
    stream: bool,
    prompt: str = "say hi",
    model: str = CLAUDE_MODEL,
    extra_args: Sequence[str] = (),
) -> ClientResult:
    """One `POST {base_url}/v1/messages` with `curl -sS -N`, streaming or not.

    The text is taken from the SSE `text_delta` events received (a stream) or the JSON
    message's text blocks; `details` holds the HTTP status and the event names.
    """
    curl = shutil.which("curl")
    if curl is None:
        raise RuntimeError("curl not found on PATH")
    body = {
        "model": model,
        "max_tokens": 256,
        "messages": [{"role": "user", "content": prompt}],
        "stream": stream,
    }
    argv = [
        curl,
        "-sS",
        "-N",
        "--max-time",
        f"{max(timeout - 1.0, 1.0):g}",
        "-H",
        "content-type: application/json",
        "-H",
        "anthropic-version: 2023-06-01",
        "-H",
        "x-api-key: " + DUMMY_API_KEY,
        "--data-binary",
        json.dumps(body),
        "-w",
        "%{stderr}curl-http-status: %{http_code}\n",
        *extra_args,
        base_url.rstrip("/") + "/v1/messages",
    ]
    client = f"curl:{'stream' if stream else 'create'}"
    with tempfile.TemporaryDirectory(prefix="sdkguard-curl-") as home:
        returncode, stdout, stderr, elapsed, timed_out = _run(argv, _base_env(Path(home)), timeout)
    if timed_out:
        return _timed_out(client, stdout, stderr, elapsed, timeout)
    return ClientResult(
        client,
        returncode,
        stdout,
        stderr,
        elapsed,
        _curl_outcome(returncode, stdout, stderr, stream),
    )


def sse_events(data: str) -> list[tuple[str, Any]]:
    """The (event name, parsed data) pairs of an SSE text; data that is not JSON stays text."""
    events: list[tuple[str, Any]] = []
    for block in data.replace("\r\n", "\n").split("\n\n"):
        name, lines = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                lines.append(line[5:].lstrip())
        if lines:
            payload = "\n".join(lines)
            try:
                events.append((name, json.loads(payload)))
            except ValueError:
                events.append((name, payload))
    return events


def _curl_outcome(returncode: int | None, stdout: str, stderr: str, stream: bool) -> Outcome:
    status = 0
    for line in stderr.splitlines():
        if line.startswith("curl-http-status:"):
            status = int(line.split(":", 1)[1])
    details: dict[str, Any] = {"status": status}
    text = ""
    error: tuple[str, str] | None = None
    if stream:
        events = sse_events(stdout)
        details["events"] = [name for name, _ in events]
        for name, data in events:
            if name == "content_block_delta" and isinstance(data, dict):
                text += data.get("delta", {}).get("text", "")
            elif name == "error" and isinstance(data, dict):
                error = (str(data["error"]["type"]), str(data["error"].get("message", "")))
    else:
        with contextlib.suppress(ValueError):
            message = json.loads(stdout.strip())
            if isinstance(message, dict) and message.get("type") == "message":
                text = "".join(b.get("text", "") for b in message.get("content", []))
            elif isinstance(message, dict) and message.get("type") == "error":
                error = (str(message["error"]["type"]), str(message["error"].get("message", "")))
    if returncode != 0:
        lines = [line for line in stderr.splitlines() if not line.startswith("curl-http-status:")]
        return Outcome(text, f"curl:{returncode}", " ".join(lines).strip(), details)
    if error is not None:
        return Outcome(text, error[0], error[1], details)
    if status >= 400:
        return Outcome(text, f"http:{status}", stdout.strip()[:500], details)
    return Outcome(text, None, None, details)
