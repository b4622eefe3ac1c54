"""OpenTelemetry: one span per logical call, one child span per attempt, and metrics.

Only `opentelemetry-api` is used: with no provider configured, `start_call` returns None and a
call pays for two provider look-ups. Message content, prompts, tool inputs, keys and header
values are never recorded.

When the SDK's own tracing is on (anthropic >= 1.14 with a provider), the SDK already opens one
span per call, with the GenAI attributes and the token usage, around sdkguard's attempt loop:
that span is the logical-call span, and sdkguard adds its attempt spans under it (and
`sdkguard.attempts` on it) instead of opening a second one. So a trace has one root per call
and the usage on exactly one span.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from sdkguard._decide import BUDGET
from sdkguard._policy import current_policy
from sdkguard._version import __version__

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Observation

    from sdkguard._decide import Received

__all__ = ["CallTelemetry", "ServerSpan", "start_call", "start_server_span"]

# The metrics API is imported when instruments are made (4 ms at start-up otherwise; the SDK
# imports only the tracing API). Until something imports it, no meter provider can be set.
_METRICS_API = "opentelemetry.metrics._internal"
_metrics: Any = None


def _metrics_module() -> Any:
    """`opentelemetry.metrics`, imported on first use (an import statement costs microseconds
    on every call where this is read)."""
    global _metrics
    if _metrics is None:
        from opentelemetry import metrics

        _metrics = metrics
    return _metrics


SCOPE = "sdkguard"
# The GenAI semantic conventions' advisory buckets.
_DURATION_BUCKETS = tuple(round(0.01 * 2**i, 2) for i in range(14))  # 0.01 s ... 81.92 s
_TOKEN_BUCKETS = tuple(float(4**i) for i in range(14))  # 1, 4, 16 ... 67,108,864
_TTFC_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25)
_TTFC_BUCKETS += (0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


class _Instruments:
    """The tracer and instruments of one pair of providers (made once, then reused)."""

    def __init__(self, tracer_provider: Any, meter_provider: Any) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.tracer = trace.get_tracer(SCOPE, __version__, tracer_provider=tracer_provider)
        meter = _metrics_module().get_meter(SCOPE, __version__, meter_provider=meter_provider)
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="Duration of a logical GenAI call, every attempt and wait included",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Tokens used by a logical GenAI call, counted once",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
        )
        self.first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk",
            unit="s",
            description="Time from the start of a streamed call to its first delivered chunk",
            explicit_bucket_boundaries_advisory=_TTFC_BUCKETS,
        )
        self.attempts = _AttemptCounts()
        meter.create_observable_counter(
            "sdkguard.attempts",
            callbacks=[self.attempts.observe],
            unit="{attempt}",
            description="Attempts by outcome and reason",
        )
        self.stalls = meter.create_counter(
            "sdkguard.stalls", unit="{stall}", description="Stalls detected, by limit"
        )
        self.retry_wait = meter.create_histogram(
            "sdkguard.retry.wait", unit="s", description="Waits before a retry"
        )
        meter.create_observable_gauge(
            "sdkguard.retry_budget.available",
            callbacks=[_budget_level],
            unit="{token}",
            description="Tokens left in the process-wide retry budget (installed policy)",
        )


_AttemptKey = tuple[tuple[str, str], ...]


class _AttemptCounts:
    """`sdkguard.attempts`: counted here, reported when metrics are collected.

    An asynchronous counter exports the same cumulative sums as a synchronous one, and spares
    every call one of its four measurements through the metrics SDK (attribute cleaning and
    hashing, aggregation, an exemplar). Attempts carry no exemplars.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[_AttemptKey, int] = {}

    def add(self, key: _AttemptKey) -> None:
        """One more attempt with these attributes (as `(name, value)` pairs)."""
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def observe(self, options: CallbackOptions) -> Iterator[Observation]:
        from opentelemetry.metrics import Observation

        with self._lock:
            counts = list(self._counts.items())
        for key, count in counts:
            yield Observation(count, dict(key))


def _budget_level(options: CallbackOptions) -> Iterator[Observation]:
    """Read when metrics are collected, so the calls themselves pay nothing for it."""
    from opentelemetry.metrics import Observation

    policy = current_policy()
    if policy.retry_budget:
        yield Observation(BUDGET.available(policy.budget_capacity))


_instruments: _Instruments | None = None
_F = TypeVar("_F", bound=Callable[..., Any])
log = logging.getLogger("sdkguard")


def _never_raises(func: _F) -> _F:
    """Telemetry must never break a call: a failing provider, sampler, processor or exporter,
    or a malformed answer, costs the call its telemetry, nothing more."""

    @functools.wraps(func)
    def safe(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception:
            log.debug("sdkguard telemetry failed; the call goes on", exc_info=True)
            return None

    return cast(_F, safe)


def _no_op(provider: object) -> bool:
    # The API's stand-ins until the application configures a provider.
    return type(provider).__name__ in (
        "ProxyTracerProvider",
        "NoOpTracerProvider",
        "_ProxyMeterProvider",
        "NoOpMeterProvider",
    )


# The API looks an unset global provider up in `os.environ` on every call (a missed key
# raises and catches KeyError: microseconds on every guarded call). Its module globals tell
# the same at once. A provider named by these variables is loaded by the API's first look-up.
_PROVIDERS_FROM_ENV = any(
    name in os.environ for name in ("OTEL_PYTHON_TRACER_PROVIDER", "OTEL_PYTHON_METER_PROVIDER")
)
_UNKNOWN = object()


def _nothing_configured() -> bool:
    """No global tracer or meter provider was set (an API without these globals: unknown)."""
    metrics_api = sys.modules.get(_METRICS_API)
    return (
        not _PROVIDERS_FROM_ENV
        and getattr(trace, "_TRACER_PROVIDER", _UNKNOWN) is None
        and (metrics_api is None or getattr(metrics_api, "_METER_PROVIDER", _UNKNOWN) is None)
    )


def may_record(tracer_provider: Any = None) -> bool:
    """Whether a call could be recorded: a provider was named or configured. Cheap."""
    return tracer_provider is not None or not _nothing_configured()


def _current(tracer_provider: Any = None) -> _Instruments | None:
    global _instruments
    if not may_record(tracer_provider):
        return None
    try:
        tracer_provider = tracer_provider or trace.get_tracer_provider()
        meter_provider = _metrics_module().get_meter_provider()
    except Exception:  # a provider that cannot load must never break a call
        return None
    if _no_op(tracer_provider) and _no_op(meter_provider):
        return None
    cached = _instruments
    if (
        cached is None
        or cached.tracer_provider is not tracer_provider
        or cached.meter_provider is not meter_provider
    ):
        cached = _instruments = _Instruments(tracer_provider, meter_provider)
    return cached


class _CallAttributes:
    """The attribute sets of one (operation, model), made once: the metrics of every call
    share them instead of building three dicts per call (never mutated once made)."""

    __slots__ = ("call", "input", "output")

    def __init__(self, operation: str, model: str | None) -> None:
        self.call: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": "anthropic",
        }
        if model is not None:
            self.call["gen_ai.request.model"] = model
        self.input = {**self.call, "gen_ai.token.type": "input"}
        self.output = {**self.call, "gen_ai.token.type": "output"}


_attribute_sets: dict[tuple[str, str | None], _CallAttributes] = {}


def _call_attributes(operation: str, model: str | None) -> _CallAttributes:
    found = _attribute_sets.get((operation, model))
    if found is None:
        if len(_attribute_sets) >= 256:  # bounded, whatever model names callers invent
            _attribute_sets.clear()
        found = _attribute_sets[operation, model] = _CallAttributes(operation, model)
    return found


_SUCCESS: _AttemptKey = (("sdkguard.outcome", "success"),)


class _AttemptScope:
    """Makes an attempt's span current while the attempt is sent (what `trace.use_span`
    does, without its two generator frames on every call)."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: Span | None) -> None:
        self._span = span
        self._token: object = None

    def __enter__(self) -> None:
        if self._span is not None:
            self._token = otel_context.attach(trace.set_span_in_context(self._span))

    def __exit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        if self._token is None:
            return
        otel_context.detach(self._token)  # type: ignore[arg-type]
        span = self._span
        # As `use_span` does: a failure of the attempt marks its span, whatever comes next.
        if isinstance(error, Exception) and span is not None and span.is_recording():
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


@_never_raises
def start_call(
    name: Callable[[], str],
    body: object,
    base_url: Any,
    *,
    stream: bool,
    sdk_call: Any,
    tracer_provider: Any = None,
) -> CallTelemetry | None:
    """Telemetry for one guarded call, or None when no provider is configured."""
    instruments = _current(tracer_provider)
    if instruments is None:
        return None
    return CallTelemetry(instruments, name(), body, base_url, stream=stream, sdk_call=sdk_call)


class CallTelemetry:
    """The spans and measurements of one logical call."""

    __slots__ = (
        "_attempt_span",
        "_attempts",
        "_base_attributes",
        "_ended",
        "_first_chunk_at",
        "_instruments",
        "_own_span",
        "_started",
        "_stream",
        "call_span",
    )

    def __init__(
        self,
        instruments: _Instruments,
        name: str,
        body: object,
        base_url: Any,
        *,
        stream: bool,
        sdk_call: Any,
    ) -> None:
        self._instruments = instruments
        self._started = time.monotonic()
        self._stream = stream
        self._attempts = 0
        self._attempt_span: Span | None = None
        self._first_chunk_at: float | None = None
        self._ended = False
        request = body if type(body) is dict or isinstance(body, Mapping) else {}
        operation = "count_tokens" if name.endswith("count_tokens") else "chat"
        model = request.get("model")
        self._base_attributes = _call_attributes(
            operation, model if isinstance(model, str) else None
        )
        sdk_span = getattr(sdk_call, "span", None)
        self._own_span = sdk_span is None
        if sdk_span is not None:
            self.call_span: Span = sdk_span
            return
        attributes = dict(self._base_attributes.call)
        for key, attribute in (
            ("max_tokens", "gen_ai.request.max_tokens"),
            ("temperature", "gen_ai.request.temperature"),
            ("top_p", "gen_ai.request.top_p"),
            ("top_k", "gen_ai.request.top_k"),
        ):
            value = request.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                attributes[attribute] = value
        attributes["gen_ai.request.stream"] = stream
        host = getattr(base_url, "host", None)
        if host:
            attributes["server.address"] = host
            attributes["server.port"] = base_url.port or (443 if base_url.scheme == "https" else 80)
        span_name = f"{operation} {model}" if isinstance(model, str) else operation
        self.call_span = instruments.tracer.start_span(
            span_name, kind=SpanKind.CLIENT, attributes=attributes
        )

    # -- attempts -----------------------------------------------------------------------------

    def attempt(self, number: int) -> _AttemptScope:
        """Open attempt `number`'s span and make it current while the attempt is sent."""
        return _AttemptScope(self._start_attempt(number))

    @_never_raises
    def _start_attempt(self, number: int) -> Span:
        self._attempts = number
        if not self._own_span:  # the SDK ends its span itself: say how many attempts now
            self.call_span.set_attribute("sdkguard.attempts", number)
        context = trace.set_span_in_context(self.call_span)
        span = self._instruments.tracer.start_span(
            "sdkguard.attempt",
            context=context,
            kind=SpanKind.INTERNAL,
            attributes={"http.request.resend_count": number - 1},
        )
        self._attempt_span = span
        return span

    @_never_raises
    def response(self, headers: Mapping[str, str], status: int) -> None:
        """The attempt got response headers."""
        span = self._attempt_span
        if span is not None:
            request_id = headers.get("request-id")
            if request_id:
                span.set_attributes(
                    {"http.response.status_code": status, "anthropic.request.id": request_id}
                )
            else:
                span.set_attribute("http.response.status_code", status)

    @_never_raises
    def attempt_failed(
        self,
        reason: str,
        error: BaseException | None,
        wait: float | None,
        *,
        stall: str | None,
        continued: bool = False,
        received: Received | None = None,
    ) -> None:
        """The current attempt failed; `wait` is the pause before the next one (None: none).

        `error`: the exception, if any (its HTTP status, if any, is recorded); `received`:
        what the attempt received (request id, bytes, events, last event, errno)."""
        span = self._attempt_span
        self._attempt_span = None
        outcome = ("continued" if continued else "retry") if wait is not None else "failed"
        instruments = self._instruments
        attributes = {"sdkguard.outcome": outcome, "sdkguard.reason": reason}
        instruments.attempts.add(tuple(attributes.items()))
        if stall is not None:
            instruments.stalls.add(1, {"sdkguard.limit": stall})
        if wait is not None:
            instruments.retry_wait.record(wait, {"sdkguard.reason": reason})
        if span is None:
            return
        status = getattr(getattr(error, "response", None), "status_code", None)
        if isinstance(status, int):
            span.set_attribute("http.response.status_code", status)
        span.set_attributes(attributes)
        span.set_attribute("error.type", reason)
        if received is not None:
            span.set_attributes(_received_attributes(received))
        if stall is not None:
            span.add_event("sdkguard.stall", {"sdkguard.limit": stall})
        if wait is not None:
            span.set_attribute("sdkguard.retry.wait", wait)
            span.add_event("sdkguard.retry_scheduled", {"sdkguard.retry.wait": wait})
        span.set_status(Status(StatusCode.ERROR))
        span.end()

    @_never_raises
    def attempt_succeeded(self) -> None:
        span = self._attempt_span
        self._attempt_span = None
        self._instruments.attempts.add(_SUCCESS)
        if span is not None:
            span.set_attribute("sdkguard.outcome", "success")
            span.end()

    @_never_raises
    def first_chunk(self) -> None:
        if self._first_chunk_at is None:
            self._first_chunk_at = time.monotonic()

    # -- the end of the call --------------------------------------------------------------------

    @_never_raises
    def finished(self, message: Any = None, error_type: str | None = None) -> None:
        """The call ended: with `message` (the response, or the part delivered), or an error."""
        if self._ended:
            return
        self._ended = True
        if self._attempt_span is not None:  # a stream closed or dropped by its caller
            span, self._attempt_span = self._attempt_span, None
            span.set_attribute("sdkguard.outcome", "closed")
            span.end()
        instruments = self._instruments
        sets = self._base_attributes
        attributes = sets.call
        per_type: tuple[dict[str, Any], ...] = (sets.input, sets.output)
        if error_type is not None:
            attributes = {**attributes, "error.type": error_type}
            per_type = tuple({**a, "error.type": error_type} for a in per_type)
        instruments.duration.record(time.monotonic() - self._started, attributes)
        if self._first_chunk_at is not None:
            instruments.first_chunk.record(self._first_chunk_at - self._started, attributes)
        usage = _usage(message)
        for count, token_attributes in zip(usage[:2], per_type, strict=True):
            if count is not None:
                instruments.tokens.record(count, token_attributes)
        if not self._own_span:
            return  # the SDK's span: the SDK records the response and ends it
        span = self.call_span
        span.set_attribute("sdkguard.attempts", self._attempts)
        _set_response(span, message, usage)
        if error_type is not None:
            span.set_attribute("error.type", error_type)
            span.set_status(Status(StatusCode.ERROR))
        span.end()


def _received_attributes(received: Received) -> dict[str, Any]:
    """The forensics of a failed attempt, as span attributes (only the parts known)."""
    attributes: dict[str, Any] = {}
    for attribute, value in (
        ("anthropic.request.id", received.request_id),
        ("http.response.body.size", received.bytes_received),
        ("sdkguard.attempt.events_received", received.events_received),
        ("sdkguard.attempt.last_event", received.last_event),
        ("sdkguard.attempt.errno", received.errno),
    ):
        if value is not None:
            attributes[attribute] = value
    return attributes


def _field(value: Any, name: str) -> Any:
    """A field of a message: an SDK model's attribute, or a key of its JSON (the proxy's)."""
    if isinstance(value, dict):
        return value.get(name)
    return getattr(value, name, None)


def _usage(message: Any) -> tuple[int | None, int | None, int | None, int | None]:
    """Input (with cache reads and writes, as the conventions count them for Anthropic),
    output, cache read and cache creation tokens."""
    usage = _field(message, "usage")
    if usage is None:
        return None, None, None, None
    base, output, read, created = (
        _count(_field(usage, name))
        for name in (
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
        )
    )
    total = None if base is None else base + (read or 0) + (created or 0)
    return total, output, read, created


def _count(value: object) -> int | None:
    # Only real counts: a malformed answer (a count as a string) is not recorded.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _set_response(
    span: Span, message: Any, usage: tuple[int | None, int | None, int | None, int | None]
) -> None:
    if message is None:
        return
    for attribute, value in (
        ("gen_ai.response.id", _field(message, "id")),
        ("gen_ai.response.model", _field(message, "model")),
    ):
        if isinstance(value, str):
            span.set_attribute(attribute, value)
    stop_reason = _field(message, "stop_reason")
    if isinstance(stop_reason, str):
        span.set_attribute("gen_ai.response.finish_reasons", [stop_reason])
    for attribute, count in zip(
        (
            "gen_ai.usage.input_tokens",
            "gen_ai.usage.output_tokens",
            "gen_ai.usage.cache_read.input_tokens",
            "gen_ai.usage.cache_creation.input_tokens",
        ),
        usage,
        strict=True,
    ):
        if count is not None:
            span.set_attribute(attribute, count)


# -- a gateway's incoming requests (sdkguard proxy) -----------------------------------------------

_HTTP_METHODS = frozenset(
    ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE")
)


class ServerSpan:
    """The SERVER span of one request a gateway serves, current while it is served: the
    logical-call span of a guarded request opens under it."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: Span, token: object) -> None:
        self._span = span
        self._token = token

    @_never_raises
    def end(self, status: int | None, error_type: str | None = None) -> None:
        """The answer went out with `status` (None: none did, `error_type` says why)."""
        otel_context.detach(self._token)  # type: ignore[arg-type]
        span = self._span
        if status is not None:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:  # a 4xx is the client's doing: not the server span's error
                error_type = error_type or str(status)
        if error_type is not None:
            span.set_attribute("error.type", error_type)
            span.set_status(Status(StatusCode.ERROR))
        span.end()


@_never_raises
def start_server_span(
    method: str,
    route: str | None,
    path: str | None,
    address: tuple[str, int],
    carrier: Mapping[str, str],
    protocol_version: str | None = None,
) -> ServerSpan | None:
    """A SERVER span for an incoming HTTP request (OpenTelemetry's HTTP server conventions),
    made current; None when no provider is configured.

    `route`: the low-cardinality route, if any; `path`: what `url.path` records (a gateway
    leaves out what must not be recorded, such as a path prefix); `address`: where the server
    listens. `carrier`: the request's headers, read for an incoming trace context only
    (`traceparent`), never recorded.
    """
    instruments = _current()
    if instruments is None:
        return None
    from opentelemetry import propagate

    method = method if method in _HTTP_METHODS else "_OTHER"
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.scheme": "http",
        "server.address": address[0],
        "server.port": address[1],
    }
    if route is not None:
        attributes["http.route"] = route
    if path is not None:
        attributes["url.path"] = path
    if protocol_version is not None:
        attributes["network.protocol.version"] = protocol_version
    parent = propagate.extract(carrier)
    name = f"{'HTTP' if method == '_OTHER' else method}{f' {route}' if route else ''}"
    span = instruments.tracer.start_span(
        name, context=parent, kind=SpanKind.SERVER, attributes=attributes
    )
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    return ServerSpan(span, token)
