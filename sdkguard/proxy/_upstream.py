"""The upstream client: one aiohttp session to the fixed upstream, and what its errors mean.

`failure_of` is the ONE place that maps aiohttp's exceptions to the decision core's
`Failure`s (in the manner of httpx's table of transport errors); anything carrying an OS error
with an errno goes through `_decide.classify_transport`, so a reset, a refusal or a DNS failure
has the same reason and the same words as in the library. `errno_of` names their errno alike.
"""

from __future__ import annotations

import contextlib
import inspect
import socket
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
from aiohttp import client_exceptions as errors
from yarl import URL

from sdkguard._decide import Failure, Phase, classify_transport, errno_name
from sdkguard._policy import Policy
from sdkguard._sockets import keepalive_socket_options

__all__ = ["Upstream", "errno_of", "failure_of"]

# The connection-level headers of RFC 9110 section 7.6.1: they describe one hop, never
# forwarded in either direction. Host is the upstream's own; content-length is recomputed.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


def forwardable(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """`headers` without the hop-by-hop ones (and those a `Connection` header names)."""
    items = list(headers)
    named = {
        token.strip().lower()
        for name, value in items
        if name.lower() == "connection"
        for token in value.split(",")
    }
    return [
        (name, value)
        for name, value in items
        if (low := name.lower()) not in HOP_BY_HOP
        and low not in named
        and not low.startswith("proxy-")
    ]


# -- the table ---------------------------------------------------------------------------------


def _os_error(err: BaseException, phase: Phase) -> Failure | None:
    """An aiohttp error that carries an OS error: rebuilt as the builtin subclass of its errno
    (`OSError(ECONNRESET, ...)` is a `ConnectionResetError`), so the core names it."""
    os_error = getattr(err, "os_error", None) or err
    if isinstance(os_error, OSError) and os_error.errno is not None:
        os_error = OSError(os_error.errno, os_error.strerror or str(os_error))
    return classify_transport(os_error, phase=phase, stream=True)


def _connect(err: BaseException, phase: Phase) -> Failure | None:
    return _os_error(err, "response") or Failure(
        "connect_error", "could not connect to the upstream", True
    )


def _disconnected(err: BaseException, phase: Phase) -> Failure:
    if phase == "response":
        return Failure(
            "connection_reset", "connection reset or closed before the answer arrived", True
        )
    return Failure("connection_closed", "the server closed the connection mid-answer", True)


def _payload(err: BaseException, phase: Phase) -> Failure:
    # A body cut short: aiohttp says why in the cause (a reset) or only in words (a close).
    cause = err.__cause__ or err.__context__
    if isinstance(cause, OSError):
        failure = _os_error(cause, "body")
        if failure is not None:
            return failure
    if _says_reset(err):
        return Failure("connection_reset", "connection reset by peer (ECONNRESET)", True)
    return _disconnected(err, "body")


def _says_reset(err: BaseException) -> bool:
    # aiohttp names the reset that cut a body only in the words of its ClientPayloadError.
    return isinstance(err, errors.ClientPayloadError) and "reset" in str(err).lower()


def _constant(failure: Failure | None) -> Callable[[BaseException, Phase], Failure | None]:
    return lambda err, phase: failure


_TABLE: tuple[tuple[type[BaseException], Callable[[BaseException, Phase], Failure | None]], ...] = (
    # Most specific first: the first class that matches decides.
    (
        errors.ConnectionTimeoutError,
        _constant(Failure("connect_timeout", "connect timed out", True, timeout=True)),
    ),
    (
        errors.ClientConnectorCertificateError,
        _constant(Failure("tls_certificate", "TLS certificate verification failed", False)),
    ),
    (errors.ClientConnectorError, _connect),  # refused, DNS, unreachable, TLS handshake
    (errors.ServerDisconnectedError, _disconnected),
    (errors.ClientPayloadError, _payload),
    (
        errors.ClientConnectionResetError,
        _constant(Failure("connection_reset", "connection reset by peer (ECONNRESET)", True)),
    ),
    (errors.ClientOSError, _os_error),
    (errors.InvalidURL, _constant(None)),  # the configuration's, not the network's
    (errors.NonHttpUrlClientError, _constant(None)),
    (
        errors.ClientConnectionError,
        _constant(Failure("connection_error", "connection error", True)),
    ),
    (OSError, _os_error),
)


def failure_of(err: BaseException, phase: Phase) -> Failure | None:
    """What a failure of the upstream exchange is, or None when it is no failure of the
    network or the API (then no retry mends it)."""
    for kind, judge in _TABLE:
        if isinstance(err, kind):
            return judge(err, phase)
    return None


def errno_of(err: BaseException) -> str | None:
    """The symbolic errno of a failure of the upstream exchange (`ECONNRESET`), as the
    library's forensics name it: from its chain, or from the words of a body cut by a reset."""
    name = errno_name(err)
    if name is None and _says_reset(err):
        return "ECONNRESET"
    return name


# -- the client --------------------------------------------------------------------------------


def _keepalive_socket_factory(
    keepalive: tuple[float, float, int] | None,
) -> Callable[[Any], socket.socket] | None:
    """Sockets with the policy's TCP keepalive: a vanished upstream is noticed in seconds."""
    if keepalive is None:
        return None
    options = keepalive_socket_options(keepalive)

    def make(addr_info: Any) -> socket.socket:
        family, kind, proto = addr_info[0], addr_info[1], addr_info[2]
        sock = socket.socket(family=family, type=kind, proto=proto)
        for level, option, value in options:
            with contextlib.suppress(OSError):  # an option this kernel lacks: the others help
                sock.setsockopt(level, option, value)
        return sock

    return make


class Upstream:
    """Requests to the one upstream base URL; nothing a request says can change the host."""

    def __init__(self, base_url: str, policy: Policy) -> None:
        self.base_url = base_url
        self._base_path = URL(base_url).raw_path.rstrip("/")
        self._origin = URL(base_url).origin()
        connector_args: dict[str, Any] = {"limit": 0, "ttl_dns_cache": 60}
        factory = _keepalive_socket_factory(policy.tcp_keepalive)
        if (
            factory is not None
            and "socket_factory" in inspect.signature(aiohttp.TCPConnector).parameters
        ):
            connector_args["socket_factory"] = factory
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(**connector_args),
            # Bytes are relayed as the upstream sent them, and never decompressed.
            auto_decompress=False,
            # One session serves every client: it must keep no client's cookies.
            cookie_jar=aiohttp.DummyCookieJar(),
            # The client's headers are forwarded as they are: add none of aiohttp's own.
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None),
        )

    def url(self, path: str, query: str) -> URL:
        """The upstream URL of a request path (the upstream's own path first) and query."""
        raw = self._base_path + path + (f"?{query}" if query else "")
        return self._origin.join(URL(raw, encoded=True))

    async def send(
        self,
        method: str,
        path: str,
        query: str,
        headers: list[tuple[str, str]],
        body: bytes,
        connect_timeout: float | None,
    ) -> aiohttp.ClientResponse:
        """Send one attempt; returns once the response headers arrived."""
        return await self.session.request(
            method,
            self.url(path, query),
            data=body if body or method not in ("GET", "HEAD") else None,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout),
        )

    async def close(self) -> None:
        await self.session.close()
