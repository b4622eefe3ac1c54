"""What one proxy serves and how: the upstream, the address, the policy and the limits.

Pure data and parsing; nothing here imports the HTTP libraries, so the command line can build
and check a configuration (and say what is wrong in one line) before the proxy starts.
"""

from __future__ import annotations

import ipaddress
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sdkguard._policy import Policy, env_names, parse_env

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_UPSTREAM",
    "PROXY_POLICY_DEFAULTS",
    "ProxyConfig",
    "is_loopback",
    "parse_upstream",
    "proxy_policy",
]

DEFAULT_UPSTREAM = "https://api.anthropic.com"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787

# The library's stall limits suit a program that waits; the proxy's clients are interactive
# and hold their own first-byte limit (Claude Code: 300 s without an event), so the proxy
# notices silence sooner and cuts a stream that only pings. What the SDKGUARD_* variables and
# the options set still wins. The arithmetic is in docs/proxy.md.
PROXY_POLICY_DEFAULTS: Mapping[str, Any] = {
    "response_timeout": 30.0,
    "idle_timeout": 30.0,
    "progress_timeout": 120.0,
    # A stream broken after content is continued: for the proxy's clients the alternative is
    # a broken answer (docs/continuation.md). The library keeps it off by default.
    "resume": True,
}
# Everything the proxy does before the first content event (attempts, waits, stalls) ends
# within this, well inside Claude Code's 300 s: the client then gets an answer (the stream,
# or the last error), never a silence that its own timer has to end.
DEFAULT_PRE_CONTENT_DEADLINE = 240.0
# Long Claude Code sessions send requests of several MB (the whole conversation each time).
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
DEFAULT_REQUEST_TIMEOUT = 60.0
DEFAULT_MAX_CONCURRENCY = 64


def proxy_policy(
    fields: Mapping[str, str] | None = None, environ: Mapping[str, str] | None = None
) -> Policy:
    """The proxy's policy: its defaults, then the `SDKGUARD_*` variables, then `fields`.

    `fields` are policy fields in the variables' forms (`{"idle_timeout": "20"}`), as the
    command line takes them. A malformed value raises `ValueError` naming it.
    """
    values: dict[str, Any] = dict(PROXY_POLICY_DEFAULTS)
    values.update(parse_env(os.environ if environ is None else environ))
    if fields:
        names = env_names()
        values.update(parse_env({names[name]: value for name, value in fields.items()}))
    return Policy(**values)


def parse_upstream(url: str) -> str:
    """The upstream base URL, checked: http or https, a host, no query; no trailing slash."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r} has a query or a fragment; give the base URL only")
    try:
        parts.port  # noqa: B018 (an out-of-range port raises here)
    except ValueError:
        raise ValueError(f"{url!r} has an invalid port") from None
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def is_loopback(host: str) -> bool:
    """Whether binding `host` serves this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ProxyConfig:
    """One proxy: where it listens, what it forwards to, its policy and its limits."""

    upstream: str = DEFAULT_UPSTREAM
    """The API's base URL; its path, if any, is put before every forwarded path. Fixed here:
    no request can choose another host."""
    host: str = DEFAULT_HOST
    """The address to listen on: loopback unless said otherwise."""
    port: int = DEFAULT_PORT
    """0: a free port (`ProxyServer.port` then says which)."""
    policy: Policy = field(default_factory=proxy_policy)
    """Retries, backoff and stall limits of guarded requests (`proxy_policy()`: the proxy's
    defaults under the `SDKGUARD_*` variables)."""
    pre_content_deadline: float = DEFAULT_PRE_CONTENT_DEADLINE
    """Seconds from a request's arrival by which the proxy answers it (the stream's first
    content, or the last error), whatever the attempts, waits and stalls before it."""
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    """A larger request body is refused with 413."""
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    """Seconds a client may take to send its request body; then 408."""
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    """Requests forwarded at once; one more is refused with 429."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "upstream", parse_upstream(self.upstream))
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not in 0 to 65535")
        for name in ("pre_content_deadline", "request_timeout"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be a number of seconds > 0, not {value!r}")
        for name in ("max_request_bytes", "max_concurrency"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, not {value!r}")
