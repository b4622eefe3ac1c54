"""sdkguard: make every call made with the anthropic SDK survive a bad network.

    import sdkguard
    sdkguard.install()

From then on, every Messages call made with `anthropic.Anthropic` or `AsyncAnthropic` detects
stalls, retries transient failures with backoff, restarts streams that broke before any
content reached you, and raises a clear error, quickly, when every attempt failed.
"""

from sdkguard._decide import AttemptRecord
from sdkguard._errors import RetryEvent, StreamInterrupted, StreamStalled
from sdkguard._patch import install, is_installed, uninstall
from sdkguard._policy import Policy, policy
from sdkguard._version import __version__

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
