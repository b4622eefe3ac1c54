"""HTTP serving: routes, the request limits, and the client side of each relay.

aiohttp's low-level server (no router: every request comes here) with handler cancellation
on, so a client that closes its connection cancels its relay, and with it the upstream
request, at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from sdkguard import _telemetry
from sdkguard.proxy._config import ProxyConfig
from sdkguard.proxy._relay import ClientGone, Forward, Kind, ProxyStats, Relay, error_body
from sdkguard.proxy._upstream import Upstream, forwardable

__all__ = ["ProxyServer", "RunningProxy"]

logger = logging.getLogger("sdkguard.proxy")

MESSAGES = "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"
# A body this large is parsed (to read "stream") in a worker thread, not on the event loop.
_PARSE_IN_THREAD = 1024 * 1024
# Claude Code's anthropic-beta list is long; aiohttp's default header limit (8 KiB) is tight.
_MAX_HEADER_BYTES = 64 * 1024
# What telemetry records of a request body: scalars that say how the call was made, no content.
_TELEMETRY_FIELDS = ("model", "max_tokens", "temperature", "top_p", "top_k")

_LISTEN_BACKLOG = 1024


class _Refused(Exception):
    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message


def _error(
    status: int, error_type: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    response = web.Response(
        status=status,
        body=error_body(error_type, f"sdkguard proxy: {message}"),
        headers=CIMultiDict({"content-type": "application/json", **(headers or {})}),
    )
    return response


class _Client:
    """The relay's `Downstream` over one aiohttp request."""

    __slots__ = ("request", "response")

    def __init__(self, request: web.BaseRequest) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None

    async def start(self, status: int, reason: str | None, headers: list[tuple[str, str]]) -> None:
        response = web.StreamResponse(status=status, reason=reason, headers=CIMultiDict(headers))
        self.response = response
        try:
            await response.prepare(self.request)
        except (ConnectionError, RuntimeError) as err:
            raise ClientGone from err

    async def write(self, data: bytes) -> None:
        assert self.response is not None
        try:
            await self.response.write(data)
        except (ConnectionError, RuntimeError) as err:
            raise ClientGone from err

    async def end(self) -> None:
        assert self.response is not None
        try:
            await self.response.write_eof()
        except (ConnectionError, RuntimeError) as err:
            raise ClientGone from err

    async def answer(
        self, status: int, reason: str | None, headers: list[tuple[str, str]], body: bytes
    ) -> None:
        self.response = web.Response(
            status=status, reason=reason, body=body, headers=CIMultiDict(headers)
        )

    async def abort(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.abort()


class ProxyServer:
    """The proxy on an asyncio event loop: `await start()`, then `await stop()`."""

    def __init__(self, config: ProxyConfig, stats: ProxyStats | None = None) -> None:
        self.config = config
        self.stats = stats if stats is not None else ProxyStats()
        self.port = config.port
        self._active = 0
        self.addresses: list[tuple[str, int]] = []
        """Where it listens, once started."""
        self._runner: web.ServerRunner | None = None
        self._upstream: Upstream | None = None
        self._relay: Relay | None = None

    @property
    def url(self) -> str:
        host = self.config.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    async def start(self) -> None:
        """Listen (raises `OSError` when the address cannot be had)."""
        self._upstream = Upstream(self.config.upstream, self.config.policy)
        self._relay = Relay(self.config, self._upstream, self.stats)
        server = web.Server(
            self._handle,
            handler_cancellation=True,
            access_log=None,  # an access log would hold paths and queries; the relay logs its own
            max_line_size=_MAX_HEADER_BYTES,
            max_field_size=_MAX_HEADER_BYTES,
            # A refused request's unread body is drained this long before the connection
            # closes (so that the client reads the refusal rather than a reset), not 10 s.
            lingering_time=1.0,
        )
        runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        # A deep listen queue: aiohttp's 128 overflowed under a burst of 1,000 streams (the
        # kernel answered with SYN cookies and some connections were reset).
        site = web.TCPSite(runner, self.config.host, self.config.port, backlog=_LISTEN_BACKLOG)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            await self._upstream.close()
            raise
        self._runner = runner
        sockets = getattr(site._server, "sockets", None) or ()
        self.addresses = [s.getsockname()[:2] for s in sockets]
        if self.addresses:
            self.port = self.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._upstream is not None:
            await self._upstream.close()
            self._upstream = None

    # -- requests ------------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if not _telemetry.may_record():
            return await self._serve(request)
        span = self._server_span(request)
        status: int | None = None
        error_type: str | None = None
        try:
            response = await self._serve(request)
            status = response.status
            return response
        except BaseException as err:  # the client left (cancelled), or the proxy stops
            error_type = type(err).__qualname__
            raise
        finally:
            if span is not None:
                span.end(status, error_type)

    def _server_span(self, request: web.BaseRequest) -> _telemetry.ServerSpan | None:
        """The SERVER span of one request (OpenTelemetry's HTTP server conventions). Its path
        is the forwarded one, without the client's path prefix (it may name a team or hold a
        token), nor the query; no header value is recorded."""
        path = request.rel_url.raw_path
        at = path.find("/v1/")
        forwarded = path[at:] if at >= 0 else ("/" if path == "/" else None)
        route = forwarded if forwarded in (MESSAGES, COUNT_TOKENS) else None
        version = f"{request.version.major}.{request.version.minor}"
        address = (self.config.host, self.port)
        return _telemetry.start_server_span(
            request.method, route, forwarded, address, request.headers, version
        )

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.rel_url.raw_path
        at = path.find("/v1/")
        if at < 0:
            if request.method in ("HEAD", "GET"):
                # The base path (Claude Code sends `HEAD /` at start), and a health check.
                return web.Response(text="sdkguard proxy\n")
            return _error(404, "not_found_error", f"{request.method} {path}: not found")
        upstream_path = path[at:]
        if any(segment in (".", "..") for segment in upstream_path.split("/")):
            return _error(400, "invalid_request_error", "a path with . or .. segments")
        if self._active >= self.config.max_concurrency:
            return _error(
                429,
                "rate_limit_error",
                f"too many requests at once (max_concurrency={self.config.max_concurrency}); "
                "retry shortly",
                {"retry-after": "1"},
            )
        self._active += 1
        try:
            return await self._forward(request, upstream_path)
        except _Refused as refused:
            response = _error(refused.status, refused.error_type, refused.message)
            response.force_close()  # the rest of the body is not read
            return response
        finally:
            self._active -= 1

    async def _forward(self, request: web.BaseRequest, upstream_path: str) -> web.StreamResponse:
        assert self._relay is not None
        body = await self._read_body(request)
        kind, body, fields = await self._kind(request.method, upstream_path, body)
        headers = [
            (name, value)
            for name, value in forwardable(request.headers.items())
            if name.lower() != "accept-encoding"
        ]
        # Uncompressed, so that the relay sees the events (loopback to the client anyway).
        headers.append(("accept-encoding", "identity"))
        forward = Forward(
            request.method,
            upstream_path,
            request.rel_url.raw_query_string,
            headers,
            body,
            kind,
            fields,
        )
        client = _Client(request)
        with contextlib.suppress(ClientGone):
            await self._relay.forward(forward, client)
        if client.response is None:  # the client left before any answer
            raise asyncio.CancelledError
        return client.response

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        limit = self.config.max_request_bytes
        length = request.content_length
        if length is not None and length > limit:
            raise _Refused(413, "request_too_large", self._too_large(limit))
        try:
            return await asyncio.wait_for(
                self._read_limited(request, limit), self.config.request_timeout
            )
        except asyncio.TimeoutError:
            raise _Refused(
                408,
                "timeout_error",
                f"the request did not arrive within request_timeout "
                f"({self.config.request_timeout:g} s)",
            ) from None

    async def _read_limited(self, request: web.BaseRequest, limit: int) -> bytes:
        parts, size = [], 0
        while chunk := await request.content.readany():
            size += len(chunk)
            if size > limit:
                raise _Refused(413, "request_too_large", self._too_large(limit))
            parts.append(chunk)
        return b"".join(parts)

    @staticmethod
    def _too_large(limit: int) -> str:
        return f"the request body is larger than max_request_bytes ({limit:,} bytes)"

    async def _kind(
        self, method: str, path: str, body: bytes
    ) -> tuple[Kind, bytes, dict[str, Any]]:
        """How to forward: only Messages POSTs and count_tokens are guarded. With the body,
        and what telemetry records of it (only when a provider may record)."""
        if method != "POST" or path not in (MESSAGES, COUNT_TOKENS):
            return "pass", body, {}
        recording = _telemetry.may_record()
        if path == COUNT_TOKENS and not recording:
            return "counted", body, {}
        try:
            if len(body) > _PARSE_IN_THREAD:
                data = await asyncio.to_thread(json.loads, body)
            else:
                data = json.loads(body)
        except ValueError:
            # The API says what is wrong with it.
            return ("counted" if path == COUNT_TOKENS else "pass"), body, {}
        if not isinstance(data, dict):
            return ("counted" if path == COUNT_TOKENS else "pass"), body, {}
        fields = {k: data[k] for k in _TELEMETRY_FIELDS if k in data} if recording else {}
        if path == COUNT_TOKENS:
            return "counted", body, fields
        if data.get("stream") is True:
            return "stream", body, fields
        if not self.config.policy.stream_plain_calls:
            return "whole", body, fields
        # Sent as a stream, so that silence is noticed and a failure at any point restarts it;
        # the client gets the JSON message rebuilt from the events.
        data["stream"] = True
        return "converted", json.dumps(data, ensure_ascii=False).encode(), fields


class RunningProxy:
    """A proxy serving on an event loop in a thread of its own, until `stop()`.

    For tests and for `sdkguard proxy -- COMMAND`; a context manager too.
    """

    def __init__(self, config: ProxyConfig) -> None:
        self.server = ProxyServer(config)
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sdkguard-proxy", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def stats(self) -> ProxyStats:
        return self.server.stats

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.server.start())
        except BaseException as err:
            self._error = err
            self._started.set()
            self._loop.close()
            return
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self.server.stop())
            self._loop.close()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()

    def __enter__(self) -> RunningProxy:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
