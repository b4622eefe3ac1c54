"""What one call is, read from the SDK once, at the guarded method's entry.

`read_call` binds the arguments of the SDK's request method and reads everything the attempt
loop will need about the call (its caller's `max_retries`, idempotency key, timeout, tracing,
the stream class a plain call would be sent with) into one `SdkCall`. The loop carries that
value; nothing downstream goes back to the client to ask.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import anthropic
from anthropic import _base_client

from sdkguard._sdk import plain
from sdkguard._sdk.models import copy_model
from sdkguard._sdk.release import http, request_method

MESSAGE_PATHS = frozenset({"/v1/messages", "/v1/messages/count_tokens"})
_HELPER_METHOD_HEADER = "x-stainless-helper-method"


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


@dataclasses.dataclass(frozen=True, slots=True)
class SdkCall:
    """One guarded call as the SDK describes it: read once at the entry, carried by the loop."""

    client: Any
    cast_to: Any
    options: Any
    """The request every attempt sends, with that attempt's options applied."""
    stream: bool
    stream_cls: Any
    extra: dict[str, Any]
    """The SDK's other arguments (1.14+: `call=`, its span), passed on to every attempt."""
    asynchronous: bool
    explicit_max_retries: int | None
    idempotency_key: str | None
    base_timeout: Any
    traced: bool
    tracer_provider: Any
    plain_stream_cls: Any = None
    """The stream class to send this non-streaming call with (`as_stream`), or None."""
    answer_options: Any = None
    """For a plain call sent as a stream: the caller's own request, which parses the answer."""

    def sender(self, wrapped: Callable[..., Any]) -> Callable[[Any], Any]:
        """`wrapped` (the SDK's unpatched method) as one attempt: called with its options."""
        return functools.partial(
            wrapped, self.cast_to, stream=self.stream, stream_cls=self.stream_cls, **self.extra
        )

    def as_stream(self) -> SdkCall:
        """This non-streaming call, sent as a stream (`plain_stream_cls` must be set)."""
        return dataclasses.replace(
            self,
            options=plain.as_stream_request(self.options),
            stream=True,
            stream_cls=self.plain_stream_cls,
            plain_stream_cls=None,
            answer_options=self.options,
        )

    def with_body(self, body: Any) -> SdkCall:
        """This call with another JSON body (a continuation request), `extra_body` included."""
        options = copy_model(self.options, {"json_data": body, "extra_json": None})
        return dataclasses.replace(self, options=options, idempotency_key=None)

    @property
    def name(self) -> str:
        """The SDK method behind the call, for log lines: `beta.messages.stream`, ..."""
        return call_name(self.cast_to, self.options)

    @property
    def sdk_span_call(self) -> Any:
        """The SDK's own record of the call (1.14+, its tracing), or None."""
        return self.extra.get("call")

    def body(self) -> Any:
        return request_body(self.options)

    def base_url(self) -> Any:
        return self.client.base_url

    def client_would_retry(self, response: Any) -> bool:
        """The client's own verdict on an HTTP answer (a 401 gets one retry with a token cache)."""
        return bool(self.client._should_retry(response))

    def first_attempt_key(self, first_attempt_options: Any) -> str:
        """The key the first attempt was sent with (a new one if the SDK made none)."""
        key: str = first_attempt_options.idempotency_key or self.client._idempotency_key()
        return key

    def parse_answer(self, response: Any, retries_taken: int, body: bytes | None) -> Any:
        """The caller's result of a plain call sent as a stream (awaitable when async)."""
        return plain.parse_answer(
            self.client, self.cast_to, self.answer_options, response, retries_taken, body
        )

    def plain_status_error(self, err: Any) -> Any:
        """The SDK's error for a stream's `event: error` as an HTTP status, or None."""
        return plain.plain_status_error(self.client, err)


def _bind(
    cast_to: Any,
    options: Any,
    *_: Any,
    stream: bool = False,
    stream_cls: Any = None,
    **extra: Any,
) -> tuple[Any, Any, bool, Any, dict[str, Any]]:
    # The arguments of the patched method. `extra` is the SDK's `call=` (its span); 0.x had a
    # `remaining_retries` positional, which is dropped.
    return cast_to, options, stream, stream_cls, extra


def read_call(
    client: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    asynchronous: bool,
    plain_calls: bool,
) -> SdkCall:
    """What a call of the patched request method is: everything the attempt loop needs.

    `plain_calls`: whether a non-streaming call may be sent as a stream (`stream_plain_calls`);
    only then is the stream class it would be sent with looked up.
    """
    cast_to, options, stream, stream_cls, extra = _bind(*args, **kwargs)
    traced, tracer_provider = client_tracing(client)
    plain_stream_cls = None
    if plain_calls and not stream:
        plain_stream_cls = plain.plain_call_stream_class(
            client, cast_to, options, extra.get("call"), asynchronous=asynchronous
        )
    return SdkCall(
        client=client,
        cast_to=cast_to,
        options=options,
        stream=stream,
        stream_cls=stream_cls,
        extra=extra,
        asynchronous=asynchronous,
        explicit_max_retries=explicit_max_retries(client, options),
        idempotency_key=idempotency_key(client, options),
        base_timeout=effective_timeout(client, options),
        traced=traced,
        tracer_provider=tracer_provider,
        plain_stream_cls=plain_stream_cls,
    )
