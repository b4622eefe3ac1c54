"""`sdkguard demo`: the plain SDK and the guarded SDK side by side, fault by fault."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, TextIO

from sdkguard._version import __version__

if TYPE_CHECKING:
    import anthropic

    from sdkguard.testing import FakeAnthropic
    from sdkguard.testing.faults import Answer

__all__ = ["add_parser"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser(
        "demo",
        help="the plain SDK and the guarded SDK side by side, fault by fault",
        description=(
            "Start a fake Anthropic server in this process and make the same call with the "
            "plain anthropic SDK and with sdkguard installed, once per fault; each fault hits "
            "the first attempt only. Prints a table; exits 0 when every guarded call ended "
            "as expected (and, with --otlp, the endpoint took every span)."
        ),
        epilog="rows: " + ", ".join(row.name for row in _all_rows()),
    )
    demo.add_argument(
        "--fast",
        action="store_true",
        help="shorter timeouts and waits (a few seconds in all; used by the tests)",
    )
    demo.add_argument(
        "--only",
        action="append",
        type=_row_names,
        default=[],
        metavar="NAME[,NAME...]",
        help="run only these rows (repeatable)",
    )
    demo.add_argument(
        "--otlp",
        metavar="URL",
        help=(
            "export the guarded calls' traces (and metrics) over OTLP/HTTP to URL, such as "
            "http://127.0.0.1:4318: spans to URL/v1/traces, metrics to URL/v1/metrics "
            "(OTEL_METRICS_EXPORTER=none: no metrics); service.name sdkguard-demo. Needs "
            f"opentelemetry-sdk and {_OTLP_PACKAGE}: pip install 'sdkguard[otel]'"
        ),
    )
    demo.add_argument(
        "--client",
        choices=("auto", "claude", "typescript", "curl", "python"),
        default="auto",
        help=(
            "the client the proxy rows run (default auto: Claude Code when installed, by make "
            "real-clients or on PATH, else the TypeScript SDK from make real-clients, else "
            "curl, else a few lines of Python with urllib)"
        ),
    )
    demo.set_defaults(handler=_demo)


def _all_rows() -> tuple[_Row, ...]:
    from sdkguard._demo_proxy import ROWS

    return _ROWS + ROWS


def _row_names(value: str) -> list[str]:
    names = [part.strip() for part in value.split(",") if part.strip()]
    known = {row.name for row in _all_rows()}
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown row {', '.join(unknown) or repr(value)}; rows: "
            + ", ".join(row.name for row in _all_rows())
        )
    return names


_OTLP_PACKAGE = "opentelemetry-exporter-otlp-proto-http"
_SERVICE_NAME = "sdkguard-demo"


@dataclass(frozen=True)
class _Bounds:
    """The limits of one demo run: both sides must end quickly."""

    plain_read: float
    """The plain client's read timeout (the SDK's default is 600 s)."""
    plain_watchdog: float
    """The demo stops waiting for a plain call after this."""
    guarded_watchdog: float
    """... and for a guarded call after this (reached only if sdkguard misbehaves)."""
    ping_interval: float
    policy: Mapping[str, Any]
    """The guarded side's `sdkguard.install(...)` fields."""
    client_cut: float = 3.0
    """The demo stops waiting for a client alone on a silent stream after this."""
    client_watchdog: float = 20.0
    """... and for any other client run after this (a slow start, a client's own retries)."""


_NORMAL = _Bounds(
    plain_read=5.0,
    plain_watchdog=6.5,
    guarded_watchdog=20.0,
    ping_interval=0.5,
    policy={
        "max_attempts": 5,
        "backoff_initial": 0.3,
        "backoff_max": 2.0,
        "connect_timeout": 2.0,
        "response_timeout": 1.0,
        "idle_timeout": 1.0,
        "progress_timeout": 1.5,
        "deadline": 15.0,
    },
)
_FAST = _Bounds(
    plain_read=0.8,
    # Well past the read timeout: thread start, client creation and connecting come first, and
    # a loaded machine (CI) must not turn a timed-out call into a stuck one.
    plain_watchdog=2.5,
    guarded_watchdog=8.0,
    ping_interval=0.1,
    policy={
        "max_attempts": 5,
        "backoff_initial": 0.05,
        "backoff_max": 0.2,
        "connect_timeout": 1.0,
        "response_timeout": 0.3,
        "idle_timeout": 0.3,
        "progress_timeout": 0.35,
        "deadline": 5.0,
    },
    client_cut=2.0,
    client_watchdog=10.0,
)

Mode = Literal["create", "final"]
Status = Literal["ok", "failed", "stuck", "partial"]


@dataclass(frozen=True)
class _Row:
    """One fault, tried once with the plain SDK and once with sdkguard."""

    name: str
    title: str
    fault: tuple[str, ...]
    """The fault in `sdkguard.testing.faults` terms, in lines; `{ping}`: the ping interval."""
    first: Callable[[ModuleType, _Bounds], Answer]
    """The answer to the first request (the second gets `faults.ok()`)."""
    mode: Mode = "create"
    refuse: bool = False
    """Refuse connections until the first retry (the first answer is then never used)."""
    expect: Status = "ok"
    expect_tries: int = 2
    notes: Mapping[tuple[str, Status], str] = field(default_factory=dict)
    """Words added to a cell: (side, status) -> note."""


_ROWS: tuple[_Row, ...] = (
    _Row(
        "silent-stream",
        "stream goes silent",
        ("stall_after(2)",),
        lambda f, b: f.stall_after(2),
        notes={("plain", "failed"): "frozen for the whole read timeout (600 s by default)"},
    ),
    _Row(
        "pings-only",
        "pings, no content",
        ("pings_only_after(3, {ping})",),
        lambda f, b: f.pings_only_after(3, b.ping_interval),
        notes={("plain", "stuck"): "each ping resets the read timeout, so it never fires"},
    ),
    _Row(
        "reset-before-headers",
        "reset before headers",
        ("reset_before_headers()",),
        lambda f, b: f.reset_before_headers(),
    ),
    _Row(
        "reset-before-content",
        "reset before any content",
        ("reset_after(2)",),
        lambda f, b: f.reset_after(2),
    ),
    _Row("overloaded-529", "HTTP 529 overloaded", ("status(529)",), lambda f, b: f.status(529)),
    _Row(
        "sse-error",
        "event: error, overloaded",
        ("sse_error_after(2)",),
        lambda f, b: f.sse_error_after(2),
    ),
    _Row("truncated", "truncated body", ("truncate_after(2)",), lambda f, b: f.truncate_after(2)),
    _Row(
        "refused",
        "connection refused",
        ("refuse_connections()",),
        lambda f, b: f.ok(),
        refuse=True,
    ),
    _Row(
        "after-content",
        "reset after 2 tokens",
        ("reset_after(5)",),
        lambda f, b: f.reset_after(5),
        expect="partial",
        expect_tries=1,
        notes={("guarded", "partial"): "no restart: it would repeat text you already have"},
    ),
    _Row(
        "final-message",
        "reset after 2 tokens",
        ("reset_after(5)", "messages.stream()", ".get_final_message()"),
        lambda f, b: f.reset_after(5),
        mode="final",
        notes={("guarded", "ok"): "nothing had reached you: restarted"},
    ),
)

_API_KEY = "sk-ant-demo-not-a-real-key"
_MODEL = "claude-demo"
_PROMPT = "Say hello."
_PLAIN_CONNECT = 5.0


@dataclass
class _Outcome:
    status: Status
    seconds: float
    tries: int
    tokens: int | None
    """Text deltas the caller received (None: not observable, `get_final_message()`)."""
    text: str
    error: str = ""
    logs: list[str] = field(default_factory=list)
    detail: str = ""
    """The cell's words, when set (a client that is not the SDK)."""


class _Probe:
    """What the worker thread saw of one call."""

    def __init__(self) -> None:
        self.tokens = 0
        self.text = ""
        self.complete = False
        self.error: BaseException | None = None
        self.ended = 0.0
        self.done = threading.Event()


class _LogWatch(logging.Handler):
    """Collects the log lines of one worker thread: sdkguard's, and the SDK's retry lines."""

    def __init__(self, thread_name: str, on_sdk_retry: Callable[[], None]) -> None:
        super().__init__(logging.DEBUG)
        self.thread_name = thread_name
        self.on_sdk_retry = on_sdk_retry
        self.lines: list[str] = []
        self.sdk_retries = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.threadName != self.thread_name:
            return
        if record.name == "sdkguard" or record.name.startswith("sdkguard."):
            if record.levelno >= logging.WARNING:
                self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")
        elif record.getMessage().startswith("Retrying request"):
            self.sdk_retries += 1
            self.on_sdk_retry()


@contextmanager
def _watching(handler: _LogWatch) -> Iterator[None]:
    guard_log = logging.getLogger("sdkguard")
    sdk_log = logging.getLogger("anthropic._base_client")
    level = sdk_log.level
    guard_log.addHandler(handler)
    sdk_log.addHandler(handler)
    if not sdk_log.isEnabledFor(logging.INFO):
        sdk_log.setLevel(logging.INFO)  # its "Retrying request" line counts the SDK's retries
    try:
        yield
    finally:
        sdk_log.setLevel(level)
        sdk_log.removeHandler(handler)
        guard_log.removeHandler(handler)


@contextmanager
def _sdk_retry_lines() -> Iterator[None]:
    """The SDK's "Retrying request" lines on for the whole demo, not side by side: sides that
    run at once would otherwise restore each other's level while one still counts them."""
    sdk_log = logging.getLogger("anthropic._base_client")
    level = sdk_log.level
    if not sdk_log.isEnabledFor(logging.INFO):
        sdk_log.setLevel(logging.INFO)
    try:
        yield
    finally:
        sdk_log.setLevel(level)


@contextmanager
def _installed(fields: Mapping[str, Any]) -> Iterator[None]:
    """sdkguard installed with exactly `fields` (no environment); the previous state after."""
    import sdkguard
    from sdkguard._patch import current_policy

    previous = current_policy() if sdkguard.is_installed() else None
    sdkguard.install(sdkguard.Policy(**fields))
    try:
        yield
    finally:
        if previous is None:
            sdkguard.uninstall()
        else:
            sdkguard.install(previous)


def _message_text(message: Any) -> str:
    return "".join(getattr(block, "text", "") for block in getattr(message, "content", ()))


def _consume(client: anthropic.Anthropic, mode: Mode, probe: _Probe) -> None:
    """Make the call and read it to the end, as an application does."""
    from anthropic.types import RawContentBlockDeltaEvent, RawMessageStopEvent, TextDelta

    messages: list[Any] = [{"role": "user", "content": _PROMPT}]
    if mode == "final":
        with client.messages.stream(model=_MODEL, max_tokens=64, messages=messages) as helper:
            message = helper.get_final_message()
        probe.text = _message_text(message)
        probe.complete = True
        return
    with client.messages.create(
        model=_MODEL, max_tokens=64, messages=messages, stream=True
    ) as stream:
        for event in stream:
            if isinstance(event, RawContentBlockDeltaEvent) and isinstance(event.delta, TextDelta):
                probe.tokens += 1
                probe.text += event.delta.text
            elif isinstance(event, RawMessageStopEvent):
                probe.complete = True


def _worker(
    url: str,
    row: _Row,
    bounds: _Bounds,
    guarded: bool,
    probe: _Probe,
    on_retry: Callable[[object], None],
    untraced_plain: bool,
) -> None:
    import anthropic

    import sdkguard

    try:
        if guarded:
            # The SDK's defaults (600 s read timeout, 2 retries): sdkguard's policy applies.
            client = anthropic.Anthropic(base_url=url, api_key=_API_KEY)
            scope = sdkguard.policy(on_retry=on_retry)
        else:
            extra: dict[str, Any] = {}
            if untraced_plain and _sdk_has_tracing(anthropic):
                extra["open_telemetry"] = False  # --otlp traces the guarded calls only
            client = anthropic.Anthropic(
                base_url=url,
                api_key=_API_KEY,
                timeout=anthropic.Timeout(bounds.plain_read, connect=_PLAIN_CONNECT),
                **extra,
            )
            scope = sdkguard.policy(enabled=False)  # the SDK exactly as without sdkguard
        with client, scope:
            _consume(client, row.mode, probe)
    except Exception as err:
        probe.error = err
    finally:
        probe.ended = time.monotonic()
        probe.done.set()


def _sdk_has_tracing(anthropic: ModuleType) -> bool:
    """Whether the SDK traces its own calls (1.14 and later): its `open_telemetry` option."""
    import inspect

    return "open_telemetry" in inspect.signature(anthropic.Anthropic.__init__).parameters


def _describe(err: BaseException) -> str:
    """`httpx2.ReadError (Connection reset by peer)`, `APIStatusError (overloaded_error)`."""
    cls = type(err)
    root = cls.__module__.split(".")[0]
    name = (
        cls.__name__ if root in ("anthropic", "sdkguard", "builtins") else f"{root}.{cls.__name__}"
    )
    error_type = getattr(err, "type", None)
    if isinstance(error_type, str):
        return f"{name} ({error_type})"
    lines = str(err).strip().splitlines()
    message = lines[0] if lines else ""
    errno_message = re.fullmatch(r"\[Errno -?\d+\] (.+)", message)
    if errno_message:
        message = errno_message.group(1)
    if len(message) > 32:
        last_parens = re.search(r"\(([^()]+)\)\W*$", message)
        message = last_parens.group(1) if last_parens else message[:29] + "..."
    return f"{name} ({message})" if message else name


def _run_side(
    row: _Row, bounds: _Bounds, guarded: bool, expected_text: str, *, untraced_plain: bool = False
) -> _Outcome:
    from sdkguard._errors import StreamInterrupted
    from sdkguard.testing import FakeAnthropic, faults

    side = "guarded" if guarded else "plain"
    thread_name = f"sdkguard-demo-{row.name}-{side}"
    retries = 0
    probe = _Probe()
    server: FakeAnthropic

    def reopen() -> None:
        if row.refuse:
            server.accept_connections()

    def on_retry(event: object) -> None:
        nonlocal retries
        retries += 1
        reopen()

    # The plain SDK has no retry hook: its retry log line, written before it sleeps, is one.
    watch = _LogWatch(thread_name, on_sdk_retry=(lambda: None) if guarded else reopen)
    watchdog = bounds.guarded_watchdog if guarded else bounds.plain_watchdog
    with FakeAnthropic() as server, _watching(watch):
        server.script(row.first(faults, bounds), faults.ok())
        if row.refuse:
            server.refuse_connections()
        worker = threading.Thread(
            target=_worker,
            args=(server.url, row, bounds, guarded, probe, on_retry, untraced_plain),
            name=thread_name,
            daemon=True,
        )
        started = time.monotonic()
        worker.start()
        finished = probe.done.wait(watchdog)
        requests = len(server.requests)
        lines = list(watch.lines)
        sdk_retries = watch.sdk_retries
    # Stopping the server has reset a call still stuck: its thread ends now.
    worker.join(5.0)
    tries = max(1 + (retries if guarded else sdk_retries), requests)
    tokens: int | None = None if row.mode == "final" else probe.tokens
    if not finished:
        return _Outcome("stuck", watchdog, tries, tokens, probe.text, logs=lines)
    seconds = probe.ended - started
    err = probe.error
    if isinstance(err, StreamInterrupted):
        text = _message_text(err.partial_message)
        return _Outcome("partial", seconds, tries, tokens, text, _describe(err), lines)
    if err is not None:
        return _Outcome("failed", seconds, tries, tokens, probe.text, _describe(err), lines)
    if not probe.complete:
        error = "the stream ended without message_stop, silently"
        return _Outcome("failed", seconds, tries, tokens, probe.text, error, lines)
    if probe.text != expected_text:
        error = f"wrong text: {probe.text!r}"
        return _Outcome("failed", seconds, tries, tokens, probe.text, error, lines)
    return _Outcome("ok", seconds, tries, tokens, probe.text, logs=lines)


# --- --otlp ---------------------------------------------------------------------------------


class _OtlpMissing(Exception):
    """A package that `--otlp` needs is not installed; the message names it."""


@dataclass
class _Otlp:
    """The OpenTelemetry SDK providers of `--otlp`, set as the global ones."""

    traces_url: str
    metrics_url: str | None
    """None: OTEL_METRICS_EXPORTER=none."""
    tracer_provider: Any
    meter_provider: Any
    service_name: str = _SERVICE_NAME
    sent: int = 0
    """Spans the endpoint accepted."""
    failed: int = 0
    """Spans it did not (the exporter logs why)."""

    def finish(self) -> str:
        """Export what is left, shut the providers down; one line saying what was sent."""
        self.tracer_provider.force_flush(10_000)
        self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown(timeout_millis=10_000)
        total = self.sent + self.failed
        line = (
            f"OpenTelemetry: {self.sent} spans sent to {self.traces_url}"
            if not self.failed
            else f"OpenTelemetry: {self.failed} of {total} spans NOT sent to {self.traces_url}"
        )
        line += f" (service.name {self.service_name})"
        if self.metrics_url is not None:
            line += f"; metrics to {self.metrics_url}"
        return line


def _otlp_base(url: str) -> str:
    """`http://host:4318` from that or from `http://host:4318/v1/traces`."""
    base = url.rstrip("/")
    for signal in ("/v1/traces", "/v1/metrics"):
        if base.endswith(signal):
            base = base[: -len(signal)]
    return base


def _start_otlp(url: str, service_name: str = _SERVICE_NAME) -> _Otlp:
    """SDK tracer and meter providers exporting over OTLP/HTTP, set as the global providers
    (for `sdkguard demo --otlp` and `sdkguard proxy --otlp`).

    Raises `_OtlpMissing` when opentelemetry-sdk or the exporter package is not installed.
    """
    try:
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )
    except ImportError as err:
        raise _OtlpMissing(f"opentelemetry-sdk ({err})") from err
    try:
        # Not in the `dev` extra, so possibly absent where mypy runs.
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # type: ignore[import-not-found, unused-ignore]
            OTLPMetricExporter,
        )
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found, unused-ignore]
            OTLPSpanExporter,
        )
    except ImportError as err:
        raise _OtlpMissing(f"{_OTLP_PACKAGE} ({err})") from err

    base = _otlp_base(url)
    metrics_off = os.environ.get("OTEL_METRICS_EXPORTER", "").strip().lower() == "none"
    resource = Resource.create({SERVICE_NAME: service_name})
    tracer_provider = TracerProvider(resource=resource)
    meter_provider = (
        None
        if metrics_off
        else MeterProvider(
            resource=resource,
            metric_readers=[
                PeriodicExportingMetricReader(
                    OTLPMetricExporter(endpoint=f"{base}/v1/metrics", timeout=5.0)
                )
            ],
        )
    )
    otlp = _Otlp(
        f"{base}/v1/traces",
        None if metrics_off else f"{base}/v1/metrics",
        tracer_provider,
        None,
        service_name,
    )
    spans: SpanExporter = OTLPSpanExporter(endpoint=otlp.traces_url, timeout=5.0)

    class Counting(SpanExporter):
        """The OTLP exporter, counting the spans sent and not sent."""

        def export(self, batch: Sequence[ReadableSpan]) -> SpanExportResult:
            result = spans.export(batch)
            if result == SpanExportResult.SUCCESS:
                otlp.sent += len(batch)
            else:
                otlp.failed += len(batch)
            return result

        def shutdown(self) -> None:
            spans.shutdown()

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            return spans.force_flush(timeout_millis)

    tracer_provider.add_span_processor(BatchSpanProcessor(Counting()))
    trace.set_tracer_provider(tracer_provider)
    if trace.get_tracer_provider() is not tracer_provider:
        tracer_provider.shutdown()
        raise RuntimeError("a global tracer provider is already set in this process")
    if meter_provider is not None:
        metrics.set_meter_provider(meter_provider)
        if metrics.get_meter_provider() is meter_provider:
            otlp.meter_provider = meter_provider
        else:  # keep the application's; no metrics from the demo
            meter_provider.shutdown()
            otlp.metrics_url = None
    return otlp


# --- the table ------------------------------------------------------------------------------

_FAULT_WIDTH = 30
_CELL_WIDTH = 34
_GAP = "  "
_TABLE_WIDTH = _FAULT_WIDTH + 2 * (len(_GAP) + _CELL_WIDTH)
_LABELS: dict[Status, str] = {
    "ok": "ok",
    "failed": "FAILED",
    "stuck": "STUCK",
    "partial": "PARTIAL",
}


class _Style:
    """ANSI colours, only for a terminal (and not with NO_COLOR)."""

    def __init__(self, stream: TextIO) -> None:
        isatty = getattr(stream, "isatty", None)
        self.tty = bool(isatty is not None and isatty())
        self.enabled = (
            self.tty and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
        )

    def paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.enabled and text.strip() else text

    def status(self, text: str, status: Status, as_expected: bool | None) -> str:
        if status == "ok":
            code = "32"
        elif status == "partial" and as_expected:
            code = "33"
        else:
            code = "31"
        return self.paint(text, "1;" + code)


def _cell(side: str, row: _Row, outcome: _Outcome) -> tuple[str, list[str]]:
    """The first line's plain text (styled later) and the wrapped detail lines of a cell."""
    tries = f"{outcome.tries} {'try' if outcome.tries == 1 else 'tries'}"
    head = f"{_LABELS[outcome.status]:<8}{outcome.seconds:5.1f} s  {tries}"
    tokens = outcome.tokens
    if outcome.detail:
        detail = outcome.detail
    elif outcome.status == "ok":
        detail = "complete message"
        if side == "plain" and outcome.tries > 1:
            detail += " (the SDK's own retry)"
    elif outcome.status == "failed":
        detail = outcome.error if tokens is None else f"{tokens} tokens, then {outcome.error}"
    elif outcome.status == "stuck":
        got = "" if tokens is None else f" at {tokens} tokens"
        detail = f"frozen{got}, no error: the demo stopped waiting"
    else:
        detail = f"StreamInterrupted, partial_message {outcome.text!r}"
    note = row.notes.get((side, outcome.status))
    if note:
        detail += f"; {note}"
    return head, textwrap.wrap(detail, _CELL_WIDTH)


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - len(text))


def _print_row(
    out: TextIO,
    style: _Style,
    number: int,
    row: _Row,
    bounds: _Bounds,
    plain: _Outcome,
    guarded: _Outcome,
    as_expected: bool,
) -> None:
    fault_lines = textwrap.wrap(f"{number:>2}. {row.title}", _FAULT_WIDTH, subsequent_indent="    ")
    ping = f"{bounds.ping_interval:g}"
    fault_lines.extend("    " + line.format(ping=ping) for line in row.fault)
    plain_head, plain_lines = _cell("plain", row, plain)
    guarded_head, guarded_lines = _cell("guarded", row, guarded)
    if not as_expected:
        guarded_lines.append(f"UNEXPECTED: wanted {_LABELS[row.expect]}, {row.expect_tries} tries")
    plain_first = style.status(_pad(plain_head, _CELL_WIDTH), plain.status, None)
    guarded_first = style.status(guarded_head, guarded.status, as_expected)
    out.write(_pad(fault_lines[0], _FAULT_WIDTH) + _GAP + plain_first + _GAP + guarded_first)
    out.write("\n")
    height = max(len(fault_lines), len(plain_lines) + 1, len(guarded_lines) + 1)
    for i in range(1, height):
        fault = fault_lines[i] if i < len(fault_lines) else ""
        left = plain_lines[i - 1] if i - 1 < len(plain_lines) else ""
        right = guarded_lines[i - 1] if i - 1 < len(guarded_lines) else ""
        line = _pad(fault, _FAULT_WIDTH) + _GAP + _pad(left, _CELL_WIDTH) + _GAP + right
        out.write(line.rstrip() + "\n")
    for log_line in guarded.logs:
        out.write("      " + style.paint(log_line, "2") + "\n")
    out.write("\n")
    out.flush()


def _policy_call(fields: Mapping[str, Any], width: int, indent: str) -> list[str]:
    """`sdkguard.install(a=1, b=2)`, wrapped after commas within `width`."""
    head = "sdkguard.install("
    args = [f"{name}={value!r}" for name, value in fields.items()]
    lines: list[str] = []
    line = indent + head
    for i, arg in enumerate(args):
        piece = arg + (")" if i == len(args) - 1 else ",")
        if len(line) + 1 + len(piece) > width and not line.endswith("("):
            lines.append(line)
            line = indent + " " * len(head) + piece
        else:
            line += ("" if line.endswith("(") else " ") + piece
    lines.append(line if args else line + ")")
    return lines


def _header(
    out: TextIO, style: _Style, bounds: _Bounds, otlp: _Otlp | None = None, *, table: bool = True
) -> None:
    import anthropic

    read = f"{bounds.plain_read:g}"
    indent = " " * 11
    lines = [
        style.paint("sdkguard demo", "1")
        + ": the same call made with the plain anthropic SDK and with sdkguard,",
        "against a fake Anthropic server in this process. Each fault hits the first attempt",
        "of a call only; the next attempt gets a complete answer.",
        "",
        f"  plain    anthropic.Anthropic(timeout=anthropic.Timeout({read}, connect="
        f"{_PLAIN_CONNECT:g}))",
        f"{indent}and the SDK's own retries (max_retries=2 by default)",
        "  guarded  anthropic.Anthropic() with the SDK's defaults, and",
        *_policy_call(bounds.policy, _TABLE_WIDTH - 6, indent),
        "  call     client.messages.create(..., stream=True), every event read (unless noted)",
        f"  versions anthropic {anthropic.__version__}, sdkguard {__version__}, "
        f"Python {sys.version.split()[0]}",
    ]
    if otlp is not None:
        lines.append(f"  traces   the guarded calls, OTLP/HTTP to {otlp.traces_url}")
    lines.append("")
    out.write("\n".join(lines) + "\n")
    if not table:
        return
    titles = (
        _pad("fault (first attempt only)", _FAULT_WIDTH)
        + _GAP
        + _pad("plain SDK", _CELL_WIDTH)
        + _GAP
        + "with sdkguard"
    )
    out.write(style.paint(titles, "1") + "\n")
    out.write("-" * _FAULT_WIDTH + _GAP + "-" * _CELL_WIDTH + _GAP + "-" * _CELL_WIDTH + "\n")
    out.flush()


def _footer(out: TextIO, bounds: _Bounds) -> None:
    read = f"{bounds.plain_read:g}"
    notes = [
        f"The plain read timeout is {read} s here so that the demo ends. The SDK's default is "
        "600 s per read, and every ping the API sends resets it: a silent stream leaves you "
        "at 0 tokens for 10 minutes, and a stream that only pings, forever.",
        "tries: attempts made for the one call, the SDK's own retries included. sdkguard "
        "turns the SDK's retries off per attempt and makes its own.",
        "PARTIAL is sdkguard's honest limit: once content has reached your code, a restart "
        "would repeat it, so it raises StreamInterrupted (an APIConnectionError) carrying "
        "partial_message. get_final_message() and until_done() restart anyway: nothing had "
        "reached you.",
    ]
    out.write("Notes\n")
    for note in notes:
        out.write(
            textwrap.fill(note, _TABLE_WIDTH, initial_indent="  * ", subsequent_indent="    ")
            + "\n"
        )


def _demo(args: argparse.Namespace) -> int:
    from sdkguard import _demo_proxy
    from sdkguard.testing import faults

    bounds = _FAST if args.fast else _NORMAL
    wanted = {name for names in args.only for name in names}
    rows = [row for row in _ROWS if not wanted or row.name in wanted]
    client_rows = [row for row in _demo_proxy.ROWS if not wanted or row.name in wanted]
    client: _demo_proxy.Client | None = None
    if client_rows and not _demo_proxy.proxy_missing():
        found = _demo_proxy.find_client(args.client)
        if isinstance(found, str):
            print(f"sdkguard demo: --client {args.client}: {found}", file=sys.stderr)
            return 2
        client = found
    otlp: _Otlp | None = None
    if args.otlp:
        try:
            otlp = _start_otlp(args.otlp)
        except _OtlpMissing as err:
            print(
                f"sdkguard demo: --otlp needs the package {err}; install it with "
                f"pip install {_OTLP_PACKAGE} opentelemetry-sdk, or pip install 'sdkguard[otel]'",
                file=sys.stderr,
            )
            return 2
        except RuntimeError as err:
            print(f"sdkguard demo: --otlp: {err}", file=sys.stderr)
            return 2
    out = sys.stdout
    style = _Style(out)
    _header(out, style, bounds, otlp, table=bool(rows))
    started = time.monotonic()
    unexpected: list[str] = []
    totals = {"plain": 0.0, "guarded": 0.0}
    exported = ""
    elapsed = 0.0
    section = _demo_proxy.Section()
    try:
        # Both sides of a row at once (each on its own fake server, its log lines told apart
        # by thread): the row takes as long as the slower side.
        with _installed(bounds.policy), _sdk_retry_lines(), ThreadPoolExecutor(2) as sides:
            for number, row in enumerate(_ROWS, 1):
                if row not in rows:
                    continue
                if style.tty:
                    out.write(f"  ... {row.title}\r")
                    out.flush()
                plain_run = sides.submit(
                    _run_side,
                    row,
                    bounds,
                    False,
                    faults.DEFAULT_TEXT,
                    untraced_plain=otlp is not None,
                )
                guarded_run = sides.submit(_run_side, row, bounds, True, faults.DEFAULT_TEXT)
                plain, guarded = plain_run.result(), guarded_run.result()
                totals["plain"] += plain.seconds
                totals["guarded"] += guarded.seconds
                as_expected = guarded.status == row.expect and guarded.tries == row.expect_tries
                if not as_expected:
                    unexpected.append(row.name)
                if style.tty:
                    out.write("\r\033[K")
                _print_row(out, style, number, row, bounds, plain, guarded, as_expected)
        if rows:
            _footer(out, bounds)
        if client_rows:
            first = len(_ROWS) + 1
            section = _demo_proxy.run_section(out, style, bounds, client_rows, first, client)
    finally:
        elapsed = time.monotonic() - started
        if otlp is not None:
            exported = otlp.finish()
    if otlp is not None:
        out.write("\n" + style.paint(exported, "1;31" if otlp.failed else "2") + "\n")
    unexpected += section.unexpected
    total = len(rows) + section.rows
    good = total - len(unexpected)
    summary = (
        f"{good} of {total} guarded calls ended as expected "
        f"(plain calls {totals['plain'] + section.alone_seconds:.1f} s, guarded calls "
        f"{totals['guarded'] + section.proxied_seconds:.1f} s, demo {elapsed:.1f} s)"
    )
    if unexpected:
        summary += "; unexpected: " + ", ".join(unexpected)
    out.write("\n" + style.paint(summary, "1;32" if not unexpected else "1;31") + "\n")
    out.flush()
    return 1 if unexpected or (otlp is not None and otlp.failed) else 0
