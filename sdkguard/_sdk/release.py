"""What the installed SDK release has: its version, HTTP library and the methods to patch."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import anthropic
from anthropic import _base_client

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


def api_request_class() -> type | None:
    """The SDK's `APIRequest` (0.108+: client middleware), or None."""
    try:
        from anthropic._request import APIRequest
    except ImportError:
        return None
    return APIRequest


def request_methods() -> list[tuple[type, str, bool]]:
    """The request methods to guard: (client class, method name, whether it is async)."""
    return [
        (client_class, request_method(client_class), is_async)
        for client_class, is_async in (
            (_base_client.SyncAPIClient, False),
            (_base_client.AsyncAPIClient, True),
        )
    ]


def stream_classes() -> tuple[type, type]:
    """The SDK's `Stream` and `AsyncStream`."""
    return anthropic.Stream, anthropic.AsyncStream


_STREAM_HELPERS = (
    ("anthropic.lib.streaming._messages", ("MessageStream", "AsyncMessageStream")),
    ("anthropic.lib.streaming._beta_messages", ("BetaMessageStream", "BetaAsyncMessageStream")),
)


def stream_helpers() -> list[tuple[type, bool]]:
    """The stream helpers whose `until_done` sdkguard guards: (class, whether it is async)."""
    helpers = []
    for module_name, class_names in _STREAM_HELPERS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for class_name in class_names:
            helper = getattr(module, class_name, None)
            if helper is not None and "until_done" in helper.__dict__:
                helpers.append((helper, class_name.startswith(("Async", "BetaAsync"))))
    return helpers
