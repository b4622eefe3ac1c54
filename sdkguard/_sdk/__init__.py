"""Everything sdkguard knows about the SDK's internals, and the only place that knows them.

The rest of sdkguard talks to the SDK through these names, so a difference between SDK
versions (httpx or httpx2, how a `Stream` builds its iterator, private attribute names) is
handled here and nowhere else. By topic:

- `release`: the installed release, its HTTP library, and the methods sdkguard patches;
- `call`: what one call is, read once at the guarded method's entry (`read_call`, `SdkCall`);
- `attempts`: one attempt's options and timeouts, the retry count middleware sees;
- `errors`: the SDK's errors as sdkguard reads them, and the failures it detects itself;
- `streams`: the SDK's streams and stream helpers (iterators, decoders, span observers);
- `plain`: non-streaming calls sent as streams, and the SDK's parse of their answer;
- `models`: SDK models copied, frozen and rebuilt cheaply;
- `keepalive`: TCP keepalive on the HTTP clients the SDK builds itself.
"""

from sdkguard._sdk.attempts import (
    api_request_init,
    attempt_options,
    enter_attempt,
    leave_attempt,
    make_timeout,
    record_retries,
    set_body_read_timeout,
)
from sdkguard._sdk.call import MESSAGE_PATHS, SdkCall, is_guarded_request, read_call
from sdkguard._sdk.errors import (
    IncompleteStream,
    NotJsonAnswer,
    StallDetected,
    checked,
    classify_exception,
    error_type,
    received_from,
    request_of,
    response_of,
)
from sdkguard._sdk.keepalive import apply_keepalive, restore_keepalive
from sdkguard._sdk.models import (
    Frozen,
    construct,
    freeze,
    freeze_block,
    thaw,
    wire_dict,
    with_json_body,
)
from sdkguard._sdk.plain import is_sse
from sdkguard._sdk.release import (
    SDK_VERSION,
    RetryableError,
    api_request_class,
    http,
    request_method,
    request_methods,
    stream_classes,
    stream_helpers,
    unsupported,
)
from sdkguard._sdk.streams import (
    HeldEnd,
    adapt_stream,
    event_class,
    hold_stream_end,
    http_response_of,
    is_event_stream,
    on_parsed_stream,
    own_iterator,
    parsing,
    parsing_async,
    raw_stream_of,
    replace_iterator,
    reset_message_stream,
    take_iterator,
    watch_progress,
)

__all__ = [
    "MESSAGE_PATHS",
    "SDK_VERSION",
    "Frozen",
    "HeldEnd",
    "IncompleteStream",
    "NotJsonAnswer",
    "RetryableError",
    "SdkCall",
    "StallDetected",
    "adapt_stream",
    "api_request_class",
    "api_request_init",
    "apply_keepalive",
    "attempt_options",
    "checked",
    "classify_exception",
    "construct",
    "enter_attempt",
    "error_type",
    "event_class",
    "freeze",
    "freeze_block",
    "hold_stream_end",
    "http",
    "http_response_of",
    "is_event_stream",
    "is_guarded_request",
    "is_sse",
    "leave_attempt",
    "make_timeout",
    "on_parsed_stream",
    "own_iterator",
    "parsing",
    "parsing_async",
    "raw_stream_of",
    "read_call",
    "received_from",
    "record_retries",
    "replace_iterator",
    "request_method",
    "request_methods",
    "request_of",
    "reset_message_stream",
    "response_of",
    "restore_keepalive",
    "set_body_read_timeout",
    "stream_classes",
    "stream_helpers",
    "take_iterator",
    "thaw",
    "unsupported",
    "watch_progress",
    "wire_dict",
    "with_json_body",
]
