"""Everything sdkguard knows about the SDK's internals, in one place.

The rest of sdkguard talks to the SDK through these functions, so a difference between SDK
versions (httpx or httpx2, how a `Stream` builds its iterator, private attribute names) is
handled here and nowhere else.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import json
import math
import socket
import sys
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anthropic
from anthropic import _base_client, _models

__all__ = [
    "MESSAGE_PATHS",
    "SDK_VERSION",
    "attempt_options",
    "call_name",
    "effective_timeout",
    "error_type",
    "http",
    "make_timeout",
    "unsupported",
]

SDK_VERSION: str = anthropic.__version__

# The HTTP library the SDK is built on: httpx up to 0.x, httpx2 from 1.0.
http: Any = vars(_base_client).get("httpx2") or vars(_base_client).get("httpx")


def unsupported() -> str | None:
    """Why sdkguard must leave the imported SDK alone (a version it does not support), or None."""
    from sdkguard import _version

    version, requirement = anthropic.__version__, _version.ANTHROPIC_REQUIREMENT
    if _version.satisfies(version, requirement.replace(" ", "")) is False:
        return f"anthropic {version} is not supported (sdkguard supports {requirement})"
    return None


class _NeverRaised(Exception):
    """Stands for an SDK exception class that this SDK version does not have."""


# Raised by client middleware (0.108+) to ask for a retry.
RetryableError: type[Exception] = getattr(anthropic, "RetryableError", _NeverRaised)

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
    inner = client_class.__dict__.get("_request")
    if inner is not None and "call" in inspect.signature(inner).parameters:
        return "_request"
    return "request"


_KEY_SET_ON_ATTEMPT_OPTIONS = request_method(_base_client.SyncAPIClient) == "_request"


def is_guarded_request(options: Any) -> bool:
    """POST to a Messages endpoint: the only requests sdkguard takes over."""
    if options.method.lower() != "post":
        return False
    url: str = options.url
    query = url.find("?")
    return (url if query < 0 else url[:query]) in MESSAGE_PATHS


def request_body(options: Any) -> Any:
    """The JSON body of a request, `extra_body` included.

    From 1.14 the SDK merges `extra_body` into the body before its retry loop; before, only
    when it builds each attempt's request, so the options seen here still hold it apart.
    """
    body, extra = options.json_data, options.extra_json
    if isinstance(extra, dict) and extra:
        return {**body, **extra} if isinstance(body, dict) else extra
    return body


def call_name(cast_to: Any, options: Any) -> str:
    """The SDK method behind a request, for log lines: `beta.messages.stream`, ..."""
    path, _, query = str(options.url).partition("?")
    # A beta call says `?beta=true`, or parses into a Beta* type (a stream's type is a typing
    # construct, whose attribute look-ups are slow: only classes are asked their name).
    beta = "beta=true" in query or (
        isinstance(cast_to, type) and cast_to.__name__.startswith("Beta")
    )
    if path.endswith("/count_tokens"):
        method = "count_tokens"
    else:
        method = "create"
        headers = options.headers if isinstance(options.headers, dict) else {}
        for key, value in headers.items():
            if key.lower() == _HELPER_METHOD_HEADER and value == "stream":
                method = "stream"
    return _CALL_NAMES[beta, method]


# Made once: a guarded stream keeps its call's name for as long as it lives.
_CALL_NAMES = {
    (beta, method): f"{'beta.' if beta else ''}messages.{method}"
    for beta in (False, True)
    for method in ("create", "stream", "count_tokens")
}


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
    """The key every attempt of a call shares, as in the SDK's own retry loop.

    None when the SDK will make it: from 1.14 its `_request` sets a missing key on the options
    it is given, the first attempt's, and the later attempts take it from there
    (`first_attempt_key`). A call that succeeds at once then makes no key of its own.
    """
    key: str | None = options.idempotency_key
    if key is None and not _KEY_SET_ON_ATTEMPT_OPTIONS:
        key = client._idempotency_key()
    return key


def first_attempt_key(client: Any, first_attempt_options: Any) -> str:
    """The key the first attempt was sent with (a new one if the SDK made none)."""
    key: str = first_attempt_options.idempotency_key or client._idempotency_key()
    return key


def copy_model(model: Any, update: dict[str, Any]) -> Any:
    """A shallow copy of an SDK model with `update` applied (pydantic 2, or 1)."""
    fields_set = getattr(model, "__pydantic_fields_set__", None)
    if fields_set is None:
        return model.copy(update=update)  # pragma: no cover - pydantic 1
    # What pydantic 2's `model_copy(update=...)` does, without its generic path: this runs on
    # every attempt, and costs half as much.
    copied = object.__new__(type(model))
    set_attribute = object.__setattr__
    set_attribute(copied, "__dict__", {**model.__dict__, **update})
    set_attribute(copied, "__pydantic_fields_set__", fields_set | update.keys())
    extra, private = model.__pydantic_extra__, model.__pydantic_private__
    set_attribute(copied, "__pydantic_extra__", None if extra is None else dict(extra))
    set_attribute(copied, "__pydantic_private__", None if private is None else dict(private))
    return copied


Frozen = tuple[type, str | bytes]
"""An SDK model kept as its class and its JSON: see `freeze`."""


def freeze(model: Any) -> Frozen:
    """A compact copy of an SDK model: its class and its JSON as the API sent it (API names,
    only the fields it sent), a few hundred bytes where the objects take kilobytes."""
    serializer = getattr(type(model), "__pydantic_serializer__", None)
    if serializer is not None:  # pydantic 2: what `model_dump_json` calls, without its layer
        json_bytes: bytes = serializer.to_json(
            model, by_alias=True, exclude_unset=True, warnings=False
        )
        return type(model), json_bytes
    return type(model), model.json(by_alias=True, exclude_unset=True)  # pragma: no cover


_EMPTY_TEXT_BLOCK = (object, '{"type":"text","text":""}')


def freeze_block(block: Any) -> Frozen:
    """`freeze` for a content block start: an empty text block, nearly every one, is a constant."""
    if block.type == "text" and not block.text and block.model_fields_set == {"type", "text"}:
        return _EMPTY_TEXT_BLOCK
    return freeze(block)


def thaw(frozen: Frozen) -> dict[str, Any]:
    """The data of a frozen model, as plain JSON values."""
    data: dict[str, Any] = json.loads(frozen[1])
    return data


def wire_dict(model: Any) -> dict[str, Any]:
    """An SDK model as the API sent it: API names, only the fields it sent, JSON values."""
    data: dict[str, Any] = model.to_dict(mode="json", warnings=False)
    return data


def construct(model_class: type, data: dict[str, Any]) -> Any:
    """An SDK model built from plain data as the SDK builds a response (no validation)."""
    return _models.construct_type(type_=model_class, value=data)


def attempt_options(options: Any, retries_taken: int, timeout: Any, key: str | None) -> Any:
    """The options of one attempt: the SDK's own retries off, its retry count, our timeout."""
    update: dict[str, Any] = {"max_retries": 0, "idempotency_key": key, "timeout": timeout}
    # The SDK counts a first attempt itself; later ones it would also call the first. A header
    # the caller set (or `Omit()`-ted) wins, as it does in the SDK's own loop.
    if retries_taken:
        headers = options.headers if isinstance(options.headers, dict) else {}
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
    if isinstance(value, http.Timeout):
        return value
    return _timeout_of(value) if value is None or isinstance(value, float) else http.Timeout(value)


@functools.lru_cache(maxsize=16)
def _timeout_of(seconds: float | None) -> Any:
    # A client's float timeout, as the one shared (immutable) `Timeout` its calls start from.
    return http.Timeout(seconds)


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
    if timeouts is not None:  # the request's own dict, made for it when it was built
        timeouts["read"] = read


def request_of(err: BaseException) -> Any:
    """The http request behind an error, for the SDK error classes that need one."""
    request = getattr(err, "request", None)
    if request is None:
        response = getattr(err, "response", None)
        request = getattr(response, "request", None)
    if request is None:
        request = http.Request("POST", "https://api.anthropic.com/v1/messages")
    return request


# Bedrock streams report a failure as an AWS exception, which the SDK passes on by its name.
_BEDROCK_ERROR_TYPES = {
    "serviceUnavailableException": "overloaded_error",
    "throttlingException": "rate_limit_error",
    "internalServerException": "api_error",
    "modelStreamErrorException": "api_error",
    "modelTimeoutException": "timeout_error",
    "validationException": "invalid_request_error",
}


def error_type(body: object) -> str | None:
    """`overloaded_error` from the body of an `event: error` (Bedrock's exception names too)."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("type"), str):
            return _BEDROCK_ERROR_TYPES.get(error["type"], error["type"])
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


def is_async_stream(value: object) -> bool:
    return isinstance(value, anthropic.AsyncStream)


def http_response_of(value: Any) -> Any:
    """The http response of a `Stream` or of a raw-response wrapper."""
    return getattr(value, "response", None) or getattr(value, "http_response", None)


def on_parsed_stream(raw: Any, adopt: Callable[[Any], Any]) -> bool:
    """Have `adopt` take the event stream that `raw.parse()` makes of a raw response.

    A raw response (`with_raw_response`) of a stream holds no events until the caller parses
    it (langchain-anthropic streams that way); the `Stream` it then makes restarts like any
    other. `parse` is async on the async client's raw responses from 2.0, sync before (and on
    the sync client). False when `raw` cannot be parsed into a stream.
    """
    parse = getattr(raw, "parse", None)
    if parse is None:
        return False

    def adopted(parsed: Any) -> Any:
        # `adopt` leaves alone a stream it guards already (the raw response keeps what it
        # parsed, and a second `parse()` returns the same stream).
        return adopt(parsed) if is_event_stream(parsed) else parsed

    if inspect.iscoroutinefunction(parse):

        async def parse_async(*args: Any, **kwargs: Any) -> Any:
            return adopted(await parse(*args, **kwargs))

        raw.parse = parse_async
    else:
        raw.parse = lambda *args, **kwargs: adopted(parse(*args, **kwargs))
    return True


def parsing(send: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`send`, for a raw response: the event stream that each attempt's response parses into."""
    return lambda options: send(options).parse()


def parsing_async(send: Callable[[Any], Awaitable[Any]]) -> Callable[[Any], Awaitable[Any]]:
    """`parsing` for the async client, whose raw responses parse with or without `await`."""

    async def send_and_parse(options: Any) -> Any:
        parsed = (await send(options)).parse()
        return await parsed if inspect.isawaitable(parsed) else parsed

    return send_and_parse


def take_iterator(stream: Any, replacement: Any) -> Any:
    """Return the stream's own event iterator and put `replacement` in its place.

    Up to 1.x `Stream.__init__` builds `_iterator`; from 2.0 it is a cached property built on
    first use. Reading it and then setting the attribute works for both (a cached property
    does not define `__set__`); setting it keeps the instance's compact attribute storage.
    """
    own = stream._iterator
    stream._iterator = replacement
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


_BEDROCK_RAISES_VALUE_ERROR = SDK_VERSION.startswith("0.")


def adapt_stream(stream: Any) -> None:
    """Make a Bedrock stream of anthropic 0.x report a failure as later versions do.

    Up to 0.125 the Bedrock decoder raises `ValueError("Bad response code ...")` for an AWS
    exception frame (`throttlingException`, ...); from 1.0 the stream raises it as an
    `APIStatusError` whose body names the exception, which sdkguard classifies like an SSE
    `error` event. Old streams get the same, so their failures are retried and raised alike.
    """
    if not _BEDROCK_RAISES_VALUE_ERROR:
        return
    decoder: Any = getattr(stream, "_decoder", None)
    parse = getattr(decoder, "_parse_message_from_event", None)
    if parse is None:
        return

    def parse_message(message: Any) -> Any:
        response = message.to_response_dict()
        if response["status_code"] == 200:
            return parse(message)
        headers = response["headers"]
        try:
            text = json.loads(response["body"]).get("message")
        except (ValueError, AttributeError):
            text = None
        kind = headers.get(":exception-type") or headers.get(":error-code")
        body = {"type": "error", "error": {"type": kind, "message": text}}
        raise stream._client._make_status_error(f"{body}", body=body, response=stream.response)

    decoder._parse_message_from_event = parse_message


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


# -- non-streaming calls sent as streams ------------------------------------------------------

_RAW_RESPONSE_HEADER = "x-stainless-raw-response"
# Platforms whose streams go to another endpoint (Bedrock: another wire format too), which the
# fake server cannot stand in for: their plain calls are left as they are.
_STREAMS_ELSEWHERE = ("anthropic.lib.bedrock", "anthropic.lib.vertex")
_BODY_HEADERS = frozenset(
    {"content-type", "content-length", "content-encoding", "transfer-encoding"}
)


@functools.lru_cache(maxsize=8)
def _stream_classes(asynchronous: bool) -> dict[Any, Any]:
    # The answer types a stream can rebuild, with the stream class the SDK's own
    # `create(stream=True)` reads them with.
    from anthropic.types import Message, RawMessageStreamEvent
    from anthropic.types.beta import BetaMessage, BetaRawMessageStreamEvent

    stream = anthropic.AsyncStream if asynchronous else anthropic.Stream
    return {
        Message: stream[RawMessageStreamEvent],
        BetaMessage: stream[BetaRawMessageStreamEvent],
    }


def plain_call_stream_class(
    client: Any, cast_to: Any, options: Any, sdk_call: Any, *, asynchronous: bool
) -> Any:
    """The stream class to send this non-streaming call with, or None to send it as it is.

    Only a `create()` or `parse()` of the Messages API answering a `Message` or `BetaMessage`:
    not `count_tokens`, not a raw response (the caller asked for the HTTP answer itself), not
    a platform whose streams go elsewhere, not a client with middleware (0.108+: it would see,
    and could answer, a stream request the caller never made), not a call the SDK's own
    tracing records (1.14+: its span would describe a stream).
    """
    if getattr(client, "_middleware", None) or getattr(sdk_call, "span", None) is not None:
        return None
    url: str = options.url
    if url.split("?", 1)[0] != "/v1/messages":
        return None
    body = options.json_data
    if not isinstance(body, dict) or body.get("stream") is True:
        return None
    headers = options.headers if isinstance(options.headers, dict) else {}
    if any(name.lower() == _RAW_RESPONSE_HEADER for name in headers):
        return None
    if type(client).__module__.startswith(_STREAMS_ELSEWHERE):
        return None
    return _stream_classes(asynchronous).get(cast_to)


def as_stream_request(options: Any) -> Any:
    """The options of a non-streaming call, asking for a stream.

    Without the call's `post_parser` (`parse()`'s): the SDK would apply it to the stream; it
    is applied to the rebuilt message instead (`parse_answer` with the call's own options).
    """
    update = {
        "json_data": {**options.json_data, "stream": True},
        "post_parser": anthropic.NOT_GIVEN,
    }
    return copy_model(options, update)


def is_sse(response: Any) -> bool:
    """Whether an answer is an event stream (a server may answer a stream request with JSON)."""
    content_type: str = response.headers.get("content-type", "")
    return content_type.startswith("text/event-stream")


def parse_answer(
    client: Any, cast_to: Any, options: Any, response: Any, retries_taken: int, body: bytes | None
) -> Any:
    """The SDK's own non-streaming result of `response`, or of the JSON `body` in its place.

    The same code as for a non-streaming answer: `parse()`'s output, `_request_id` and strict
    validation come out exactly as the SDK makes them. A coroutine for an async client.
    """
    if body is not None:
        response = _json_answer(response, response.status_code, body)
    return client._process_response(
        cast_to=cast_to,
        options=options,
        response=response,
        stream=False,
        stream_cls=None,
        retries_taken=retries_taken,
    )


# The HTTP status of each API error type: what a non-streaming answer carries an error with.
_ERROR_STATUSES = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def plain_status_error(client: Any, err: Any) -> Any:
    """For a stream's `event: error`, the SDK's error for the same error as an HTTP status
    (`OverloadedError` for `overloaded_error`, ...), or None when it is not one."""
    response = err.response
    status = _ERROR_STATUSES.get(error_type(err.body) or "")
    if status is None or response.status_code >= 400:
        return None
    answer = _json_answer(response, status, json.dumps(err.body).encode())
    return client._make_status_error_from_response(answer)


def _json_answer(response: Any, status: int, body: bytes) -> Any:
    """A JSON answer with `status` and `body`, and the other headers of `response`."""
    headers = [(k, v) for k, v in response.headers.items() if k.lower() not in _BODY_HEADERS]
    headers.append(("content-type", "application/json"))
    return http.Response(status, headers=headers, content=body, request=response.request)


def replace_iterator(stream: Any, iterator: Any) -> None:
    """Make `stream` yield `iterator` instead of reading its body, which was read already.

    Written into the instance: up to 1.x `_iterator` is an attribute set in `__init__` (a
    generator not started yet), from 2.0 a cached property not read yet.
    """
    stream.__dict__["_iterator"] = iterator


# -- TCP keepalive ----------------------------------------------------------------------------

# The HTTP clients the SDK builds itself when none is given: the only ones sdkguard touches.
_SDK_BUILT_HTTP_CLIENTS = (
    _base_client.SyncHttpxClientWrapper,
    _base_client.AsyncHttpxClientWrapper,
)
_KEEPALIVE_STATE = "_sdkguard_keepalive"
_tightened: weakref.WeakSet[Any] = weakref.WeakSet()


def keepalive_socket_options(keepalive: tuple[float, float, int]) -> list[tuple[int, int, int]]:
    """Socket options for TCP keepalive (whole seconds, rounded up) on this platform.

    On Linux, TCP_USER_TIMEOUT gets the same bound: keepalive only probes an idle connection,
    and a request sent into a vanished peer would otherwise be retransmitted for 15 minutes.
    """
    idle, interval, count = math.ceil(keepalive[0]), math.ceil(keepalive[1]), keepalive[2]
    tcp = socket.IPPROTO_TCP
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    # macOS names the idle time TCP_KEEPALIVE.
    idle_option = getattr(socket, "TCP_KEEPIDLE", None) or getattr(socket, "TCP_KEEPALIVE", None)
    for option, value in (
        (idle_option, idle),
        (getattr(socket, "TCP_KEEPINTVL", None), interval),
        (getattr(socket, "TCP_KEEPCNT", None), count),
    ):
        if option is not None:
            options.append((tcp, option, value))
    if sys.platform.startswith("linux") and hasattr(socket, "TCP_USER_TIMEOUT"):
        options.append((tcp, socket.TCP_USER_TIMEOUT, (idle + interval * count) * 1000))
    return options


def _pools(http_client: Any) -> list[Any]:
    """The connection pools of an SDK-built http client: its transport and its proxies'."""
    transports = [http_client._transport, *http_client._mounts.values()]
    return [
        pool
        for pool in (getattr(transport, "_pool", None) for transport in transports)
        if pool is not None and hasattr(pool, "_socket_options")
    ]


def apply_keepalive(client: Any, keepalive: tuple[float, float, int] | None) -> None:
    """Give the new connections of `client`'s SDK-built http client this keepalive.

    A user-supplied http client is left exactly as configured; `None` puts back the SDK's own.
    Costs a dictionary look-up when nothing changes (every guarded call asks).
    """
    http_client = getattr(client, "_client", None)
    if type(http_client) not in _SDK_BUILT_HTTP_CLIENTS:
        return
    state = http_client.__dict__.get(_KEEPALIVE_STATE)
    if (state[0] if state is not None else None) == keepalive:
        return
    if state is None:
        # The SDK's own options, to put back when the guard lets go.
        originals = [(pool, pool._socket_options) for pool in _pools(http_client)]
    else:
        originals = state[1]
    if keepalive is None:
        _restore(http_client, originals)
        return
    options = keepalive_socket_options(keepalive)
    for pool, _ in originals:
        pool._socket_options = options
    http_client.__dict__[_KEEPALIVE_STATE] = (keepalive, originals)
    _tightened.add(http_client)


def _restore(http_client: Any, originals: list[tuple[Any, Any]]) -> None:
    for pool, options in originals:
        pool._socket_options = options
    http_client.__dict__.pop(_KEEPALIVE_STATE, None)
    _tightened.discard(http_client)


def restore_keepalive() -> None:
    """Put back the SDK's own keepalive on every http client sdkguard tightened (uninstall)."""
    for http_client in list(_tightened):
        state = http_client.__dict__.get(_KEEPALIVE_STATE)
        if state is not None:
            _restore(http_client, state[1])
