"""Everything sdkguard knows about the SDK's internals, in one place.

The rest of sdkguard talks to the SDK through these functions, so a difference between SDK
versions (httpx or httpx2, how a `Stream` builds its iterator, private attribute names) is
handled here and nowhere else.
"""

from __future__ import annotations

import contextvars
import functools
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
from anthropic import _base_client

__all__ = [
    "MESSAGE_PATHS",
    "SDK_VERSION",
    "attempt_options",
    "call_name",
    "effective_timeout",
    "error_type",
    "http",
    "make_timeout",
]

SDK_VERSION: str = anthropic.__version__

# The HTTP library the SDK is built on: httpx up to 0.x, httpx2 from 1.0.
http: Any = vars(_base_client).get("httpx2") or vars(_base_client)["httpx"]

MESSAGE_PATHS = frozenset({"/v1/messages", "/v1/messages/count_tokens"})
_RETRY_COUNT_HEADER = "x-stainless-retry-count"
_HELPER_METHOD_HEADER = "x-stainless-helper-method"


def request_method(client_class: type) -> str:
    """The client method that carries one call's attempts: where sdkguard's loop goes.

    From 1.14 `request()` opens the call's span and prepares the body once, then `_request()`
    runs the SDK's retry loop, taking the span as `call=`: patching `_request` keeps one span
    per call and a body prepared once (a generator of messages is read once). Before that,
    `request()` itself is the loop.
    """
    import inspect

    inner = client_class.__dict__.get("_request")
    if inner is not None and "call" in inspect.signature(inner).parameters:
        return "_request"
    return "request"


def is_guarded_request(options: Any) -> bool:
    """POST to a Messages endpoint: the only requests sdkguard takes over."""
    if options.method.lower() != "post":
        return False
    url: str = options.url
    query = url.find("?")
    return (url if query < 0 else url[:query]) in MESSAGE_PATHS


def call_name(cast_to: Any, options: Any) -> str:
    """The SDK method behind a request, for log lines: `beta.messages.stream`, ..."""
    # Beta calls parse into Beta* types; the URL does not always say `?beta=true`.
    prefix = (
        "beta.messages." if getattr(cast_to, "__name__", "").startswith("Beta") else "messages."
    )
    url: str = options.url
    if url.split("?", 1)[0].endswith("/count_tokens"):
        return prefix + "count_tokens"
    headers = options.headers if isinstance(options.headers, dict) else {}
    for key, value in headers.items():
        if key.lower() == _HELPER_METHOD_HEADER and value == "stream":
            return prefix + "stream"
    return prefix + "create"


def explicit_max_retries(client: Any, options: Any) -> int | None:
    """The caller's own `max_retries` for this call, or None when it is the SDK's default.

    The SDK's helpers set `max_retries=0` on requests that must not be resent (refusal
    fallbacks, threads), and users who run their own retry loop do the same: their word wins.
    """
    value = options.max_retries
    if not isinstance(value, int):
        value = client.max_retries
    return None if value == anthropic.DEFAULT_MAX_RETRIES else int(value)


def idempotency_key(client: Any, options: Any) -> str | None:
    """The key every attempt of a call shares, as in the SDK's own retry loop."""
    key: str | None = options.idempotency_key or client._idempotency_key()
    return key


def copy_model(model: Any, update: dict[str, Any]) -> Any:
    """A shallow copy of an SDK model with `update` applied (pydantic 2, or 1)."""
    if hasattr(model, "model_copy"):
        return model.model_copy(update=update)
    return model.copy(update=update)  # pragma: no cover - pydantic 1


def attempt_options(options: Any, retries_taken: int, timeout: Any, key: str | None) -> Any:
    """The options of one attempt: the SDK's own retries off, its retry count, our timeout."""
    update: dict[str, Any] = {"max_retries": 0, "idempotency_key": key, "timeout": timeout}
    headers = options.headers if isinstance(options.headers, dict) else {}
    # A header the caller set (or `Omit()`-ted) wins, as it does in the SDK's own loop.
    if not any(name.lower() == _RETRY_COUNT_HEADER for name in headers):
        update["headers"] = {**headers, _RETRY_COUNT_HEADER: str(retries_taken)}
    return copy_model(options, update)


# Retries taken before the attempt being sent, for the SDK's middleware: each attempt runs the
# SDK's loop once, which would call every attempt `retries_taken=0`.
_retries_taken: contextvars.ContextVar[int] = contextvars.ContextVar(
    "sdkguard_retries_taken", default=0
)


def enter_attempt(attempt: int) -> contextvars.Token[int] | None:
    return _retries_taken.set(attempt - 1) if attempt > 1 else None


def leave_attempt(token: contextvars.Token[int] | None) -> None:
    if token is not None:
        _retries_taken.reset(token)


def api_request_init(
    wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """`APIRequest.__init__` (middleware's view of an attempt) with the attempt's real count."""
    taken = _retries_taken.get()
    if taken:
        kwargs["retries_taken"] = max(kwargs.get("retries_taken", 0), taken)
    return wrapped(*args, **kwargs)


def api_request_class() -> type | None:
    """The SDK's `APIRequest` (0.108+: client middleware), or None."""
    try:
        from anthropic._request import APIRequest
    except ImportError:
        return None
    return APIRequest


def record_retries(result: Any, retries_taken: int) -> None:
    """Tell a raw response how many retries it took, as the SDK's own loop does."""
    if hasattr(result, "retries_taken"):
        result.retries_taken = retries_taken


def effective_timeout(client: Any, options: Any) -> Any:
    """The timeout the SDK would use for this call, as an http `Timeout`."""
    value = options.timeout
    if isinstance(value, anthropic.NotGiven):
        value = client.timeout
    return value if isinstance(value, http.Timeout) else http.Timeout(value)


@functools.lru_cache(maxsize=64)
def make_timeout(
    connect: float | None, read: float | None, write: float | None, pool: float | None
) -> Any:
    """An http `Timeout` (immutable, so shared between calls with the same limits)."""
    return http.Timeout(connect=connect, read=read, write=write, pool=pool)


def set_body_read_timeout(response: Any, read: float | None) -> None:
    """Give the body of `response` its own per-read limit (the headers had another).

    The transport takes the read limit of a body from the request's `timeout` extension when
    the body starts to be read, so replacing it between headers and body is enough.
    """
    try:
        request = response.request
    except RuntimeError:  # a response made from bytes (by middleware) has no request
        return
    timeouts = request.extensions.get("timeout")
    if timeouts is not None:
        request.extensions["timeout"] = {**timeouts, "read": read}


def request_of(err: BaseException) -> Any:
    """The http request behind an error, for the SDK error classes that need one."""
    request = getattr(err, "request", None)
    if request is None:
        response = getattr(err, "response", None)
        request = getattr(response, "request", None)
    if request is None:
        request = http.Request("POST", "https://api.anthropic.com/v1/messages")
    return request


def error_type(body: object) -> str | None:
    """`overloaded_error` from the body of an `event: error`."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("type"), str):
            return str(error["type"])
    return None


# -- streams --------------------------------------------------------------------------------


def client_tracing(client: Any) -> tuple[bool, Any]:
    """Whether sdkguard may trace this client's calls, and the tracer provider it names.

    From 1.14 the client has its own OpenTelemetry switch (`open_telemetry=False`,
    `ANTHROPIC_OPEN_TELEMETRY=false`); sdkguard follows it. Before, there is none: the global
    providers decide.
    """
    options = getattr(client, "_open_telemetry", None)
    if not isinstance(options, dict):
        return True, None
    if not options.get("traces", {}).get("enabled", True) or client._tracer is None:
        return False, None
    return True, options.get("tracer_provider")


def is_event_stream(value: object) -> bool:
    return isinstance(value, (anthropic.Stream, anthropic.AsyncStream))


def http_response_of(value: Any) -> Any:
    """The http response of a `Stream` or of a raw-response wrapper."""
    return getattr(value, "response", None) or getattr(value, "http_response", None)


def take_iterator(stream: Any, replacement: Any) -> Any:
    """Return the stream's own event iterator and put `replacement` in its place.

    Up to 1.x `Stream.__init__` builds `_iterator`; from 2.0 it is a cached property built on
    first use. Reading it and then writing the instance attribute works for both.
    """
    own = stream._iterator
    stream.__dict__["_iterator"] = replacement
    return own


def own_iterator(stream: Any) -> Any:
    return stream._iterator


class StallDetected(Exception):
    """Pings kept arriving, content did not (the progress limit)."""


class IncompleteStream(Exception):
    """The body ended cleanly before the message did (no `message_delta`, no `message_stop`)."""


class NotJsonAnswer(Exception):
    """A 2xx answer to a plain call was not JSON (a captive portal's page, say).

    The SDK hands such a body back as a `str` where the caller expects a `Message`.
    """

    def __init__(self, text: str) -> None:
        super().__init__(f"HTTP 2xx with {len(text)} characters that are not JSON")


def checked(cast_to: Any, result: Any) -> Any:
    """`result`, unless the SDK handed back a body that is not JSON as text."""
    if type(result) is str and cast_to is not str:
        raise NotJsonAnswer(result)
    return result


class _ProgressWatch:
    """Wraps a stream's SSE decoder to see raw events, pings included, before the SDK drops them.

    A ping more than `limit` seconds after the last other event means the server is alive but
    the message makes no progress. Costs one clock read per event; no timer, no thread.
    """

    __slots__ = ("_decoder", "_limit")

    def __init__(self, decoder: Any, limit: float) -> None:
        self._decoder = decoder
        self._limit = limit

    def iter_bytes(self, iterator: Iterator[bytes]) -> Iterator[Any]:
        limit, clock = self._limit, time.monotonic
        last = clock()
        for sse in self._decoder.iter_bytes(iterator):
            now = clock()
            if sse.event != "ping":
                last = now
            elif now - last > limit:
                raise StallDetected(f"no content for {now - last:.2f} s")
            yield sse

    async def aiter_bytes(self, iterator: AsyncIterator[bytes]) -> AsyncIterator[Any]:
        limit, clock = self._limit, time.monotonic
        last = clock()
        async for sse in self._decoder.aiter_bytes(iterator):
            now = clock()
            if sse.event != "ping":
                last = now
            elif now - last > limit:
                raise StallDetected(f"no content for {now - last:.2f} s")
            yield sse


def watch_progress(stream: Any, limit: float) -> None:
    """Check the progress limit on every raw event of `stream` (before its iterator exists)."""
    stream._decoder = _ProgressWatch(stream._decoder, limit)


class HeldEnd:
    """Holds back how an attempt's response body ended from the SDK's span observer (1.14+).

    The SDK ends its call span when a body ends. While sdkguard may still restart the stream,
    how an attempt's body ended is held back: an abandoned attempt's end is dropped, so the
    call span lives on through the restart and ends with the attempt that finishes the call.

    The observer's own `begin` and `end` are replaced on the instance rather than the observer
    wrapped: the SDK recognises its observer by type (`share_message_snapshot` of the stream
    helpers looks for its `FirstEnd`), so it must stay in place.
    """

    __slots__ = ("_begin", "_begun", "_end", "_mode", "_pending", "observer")

    def __init__(self, observer: Any) -> None:
        self.observer = observer
        self._begin = observer.begin
        self._end = observer.end
        self._begun = False
        self._mode = "hold"
        self._pending: tuple[Any, BaseException | None] | None = None
        observer.begin = self.begin
        observer.end = self.end

    def begin(self) -> None:
        self._begun = True
        self._begin()

    def end(self, how: Any, error: BaseException | None = None) -> None:
        if self._mode == "pass" or not self._begun:
            # Not begun: the SDK never parsed this body (the application read the bytes
            # itself, or dropped the stream unread), so no restart can replace it.
            self._end(how, error)
        elif self._mode == "hold" and self._pending is None:
            self._pending = (how, error)

    def release(self) -> None:
        """This attempt finishes the call: report how its body ended, and all that follows."""
        if self._mode == "hold":
            self._mode = "pass"
            if self._pending is not None:
                self._end(*self._pending)

    def drop(self) -> None:
        """This attempt was abandoned for another: nothing of its end reaches the span."""
        self._mode = "drop"
        self._pending = None


def hold_stream_end(response: Any, replacing: HeldEnd | None) -> HeldEnd | None:
    """Hold back the SDK's observer of `response`'s body, if it has one.

    `replacing` is the held end of the attempt this one replaces: it is dropped, and the
    message snapshot that a stream helper shared with its observer (the span's output content,
    `share_message_snapshot`) is shared with the new observer, as the helper reads on.
    """
    if replacing is not None:
        replacing.drop()
    observer = getattr(getattr(response, "stream", None), "stream_observer", None)
    if observer is None:
        return None
    if replacing is not None:
        shared = getattr(getattr(replacing.observer, "inner", None), "_shared_snapshot", None)
        share = getattr(getattr(observer, "inner", None), "share_snapshot", None)
        if shared is not None and share is not None:
            share(shared)
    return HeldEnd(observer)


def reset_message_stream(helper: Any) -> None:
    """Forget what a `MessageStream` accumulated, so a restarted stream builds a fresh message.

    The helper keeps its snapshot in name-mangled attributes (`_MessageStream__...`,
    `_BetaMessageStream__...`, async twins); match them by suffix.
    """
    for name in list(vars(helper)):
        if name.endswith("__final_message_snapshot"):
            setattr(helper, name, None)
        elif name.endswith("__json_bufs"):
            setattr(helper, name, {})


def raw_stream_of(helper: Any) -> Any:
    return getattr(helper, "_raw_stream", None)
