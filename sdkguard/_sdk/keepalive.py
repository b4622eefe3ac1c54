"""TCP keepalive on the connections of the HTTP clients the SDK builds itself."""

from __future__ import annotations

import weakref
from typing import Any

from anthropic import _base_client

from sdkguard._sockets import keepalive_socket_options

# The HTTP clients the SDK builds itself when none is given: the only ones sdkguard touches.
_SDK_BUILT_HTTP_CLIENTS = (
    _base_client.SyncHttpxClientWrapper,
    _base_client.AsyncHttpxClientWrapper,
)
_KEEPALIVE_STATE = "_sdkguard_keepalive"
_tightened: weakref.WeakSet[Any] = weakref.WeakSet()


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
