"""sdkguard: make every call made with the anthropic SDK survive a bad network.

    import sdkguard
    sdkguard.install()

From then on, every Messages call made with `anthropic.Anthropic` or `AsyncAnthropic` detects
stalls, retries transient failures with backoff, restarts streams that broke before any
content reached you, and raises a clear error, quickly, when every attempt failed.

Importing sdkguard does not import `anthropic`: `install()` patches it when it is imported,
so activation at interpreter start-up costs next to nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sdkguard._events import RetryEvent
from sdkguard._patch import install, is_installed, uninstall
from sdkguard._policy import Policy, policy
from sdkguard._version import __version__

if TYPE_CHECKING:
    from sdkguard._decide import AttemptRecord
    from sdkguard._errors import StreamInterrupted, StreamStalled

__all__ = [
    "AttemptRecord",
    "Policy",
    "RetryEvent",
    "StreamInterrupted",
    "StreamStalled",
    "__version__",
    "install",
    "is_installed",
    "policy",
    "uninstall",
]

_LAZY = {
    "StreamInterrupted": "sdkguard._errors",
    "StreamStalled": "sdkguard._errors",
    "AttemptRecord": "sdkguard._decide",
}


def __getattr__(name: str) -> Any:
    # The error classes subclass the SDK's, so they load (with anthropic) on first use.
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'sdkguard' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
