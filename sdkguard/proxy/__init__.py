"""`sdkguard proxy`: a local gateway that guards the Messages calls of any client.

Point a client's `ANTHROPIC_BASE_URL` at it (Claude Code, the TypeScript SDK, curl, the Python
SDK without sdkguard): it forwards to the upstream API with the library's decision core and
stream protocol, so a failure before content is invisible, and one after content is
continued in the same stream (`resume`, on by default here; off: the stream ends with an
error event). See docs/proxy.md.

Needs the `proxy` extra (`pip install 'sdkguard[proxy]'`, aiohttp). `import sdkguard` does not
import this package, and importing this package does not import aiohttp: the serving names
load on first use.

    from sdkguard.proxy import ProxyConfig, RunningProxy

    with RunningProxy(ProxyConfig(port=0)) as proxy:
        ...  # clients use proxy.url
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sdkguard.proxy._config import ProxyConfig, proxy_policy

if TYPE_CHECKING:
    from sdkguard.proxy._relay import ProxyStats
    from sdkguard.proxy._server import ProxyServer, RunningProxy

__all__ = ["ProxyConfig", "ProxyServer", "ProxyStats", "RunningProxy", "proxy_policy", "serve"]

_LAZY = {
    "ProxyServer": "sdkguard.proxy._server",
    "RunningProxy": "sdkguard.proxy._server",
    "ProxyStats": "sdkguard.proxy._relay",
}


def serve(config: ProxyConfig | None = None) -> None:
    """Serve until SIGINT or SIGTERM (blocking)."""
    import asyncio

    from sdkguard.proxy._command import serve_until_signal

    asyncio.run(serve_until_signal(config or ProxyConfig()))


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'sdkguard.proxy' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
