"""sdkguard proxy: where it listens, its three request limits, and what it never logs."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from typing import Any

import anthropic
import pytest

from sdkguard.testing import FakeAnthropic, faults

pytest.importorskip("aiohttp")

from sdkguard.proxy import ProxyConfig
from tests.test_proxy import ARGS, SECRET_KEY, raw_exchange, start_proxy

pytestmark = [pytest.mark.sdk_independent, pytest.mark.timeout(60)]


def status_and_body(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():  # one chunk is enough here
        body = body.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
    return status, json.loads(body)


def test_it_binds_loopback_by_default(server: FakeAnthropic) -> None:
    assert ProxyConfig().host == "127.0.0.1"
    assert ProxyConfig().port == 8787
    assert ProxyConfig().upstream == "https://api.anthropic.com"
    with start_proxy(server.url) as proxy:
        assert proxy.url == f"http://127.0.0.1:{proxy.port}"
        assert proxy.server.addresses == [("127.0.0.1", proxy.port)]


def test_a_request_too_large_gets_413(server: FakeAnthropic) -> None:
    with start_proxy(server.url, max_request_bytes=1000) as proxy:
        big = json.dumps({**ARGS, "messages": [{"role": "user", "content": "x" * 2000}]})
        # Announced by its content-length: refused before it is read.
        request = (
            b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(big)).encode() + b"\r\n\r\n" + big.encode()
        )
        status, body = status_and_body(raw_exchange(proxy.port, request))
        assert status == 413
        assert body["error"]["type"] == "request_too_large"
        assert "max_request_bytes" in body["error"]["message"]
        # Chunked: refused once it grows past the limit.
        chunk = big.encode()
        request = (
            b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + f"{len(chunk):x}\r\n".encode()
            + chunk
            + b"\r\n0\r\n\r\n"
        )
        status, body = status_and_body(raw_exchange(proxy.port, request))
        assert status == 413
        # The SDK raises its own error for it.
        with (
            anthropic.Anthropic(base_url=proxy.url, api_key="k", max_retries=0) as client,
            pytest.raises(anthropic.APIStatusError) as raised,
        ):
            client.messages.create(**{**ARGS, "messages": [{"role": "user", "content": big}]})
        assert raised.value.status_code == 413
    assert server.requests == []


def test_a_request_that_is_sent_too_slowly_gets_408(server: FakeAnthropic) -> None:
    with start_proxy(server.url, request_timeout=0.3) as proxy:
        request = (
            b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"model":'
        )
        started = time.monotonic()
        status, body = status_and_body(raw_exchange(proxy.port, request))
        assert time.monotonic() - started < 10
    assert status == 408
    assert body["error"]["type"] == "timeout_error"
    assert "request_timeout" in body["error"]["message"]
    assert server.requests == []


def test_one_request_too_many_gets_429(server: FakeAnthropic) -> None:
    server.script(faults.stall_before_headers(1.0))
    with (
        start_proxy(server.url, max_concurrency=1, policy={"response_timeout": "5"}) as proxy,
        anthropic.Anthropic(base_url=proxy.url, api_key="k", max_retries=0) as client,
    ):
        first = threading.Thread(target=lambda: client.messages.create(**ARGS))
        first.start()
        server.wait_for_requests(1)
        with pytest.raises(anthropic.RateLimitError) as raised:
            client.messages.create(**ARGS)
        first.join()
        assert raised.value.response.headers["retry-after"] == "1"
        body = raised.value.body
        assert isinstance(body, dict) and "max_concurrency=1" in body["error"]["message"]
        client.messages.create(**ARGS)  # a slot is free again
    assert len(server.requests) == 2


def test_paths_with_dot_segments_and_unknown_paths_are_refused(
    server: FakeAnthropic,
) -> None:
    with start_proxy(server.url) as proxy:
        answer = raw_exchange(
            proxy.port,
            b"GET /v1/../admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        assert answer.startswith(b"HTTP/1.1 400") or answer.startswith(b"HTTP/1.1 404")
        answer = raw_exchange(
            proxy.port, b"POST /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert answer.startswith(b"HTTP/1.1 404")
    assert all(not r.path.startswith("/admin") for r in server.requests)


def test_no_key_header_value_or_body_is_logged(
    server: FakeAnthropic, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_beta = "secret-beta-value-42"
    server.script(
        faults.reset_before_headers(),
        faults.status(529, headers={"retry-after": "0"}),
        faults.stall_after(2),
        faults.ok(),
        faults.reset_after(5),
        *[faults.status(503)] * 5,
    )
    with start_proxy(server.url) as proxy:
        for auth in ({"api_key": SECRET_KEY}, {"auth_token": SECRET_KEY}):
            with anthropic.Anthropic(
                base_url=proxy.url + "/team-a",
                max_retries=0,
                default_headers={"anthropic-beta": secret_beta},
                **auth,  # type: ignore[arg-type]
            ) as client:
                try:
                    client.messages.create(**ARGS)
                    with client.messages.create(**ARGS, stream=True) as stream:
                        list(stream)
                    client.messages.create(**ARGS)
                except anthropic.APIError:
                    pass
        assert proxy.stats.retries >= 3
    # The proxy's own records (the SDK client's debug log is the client's business).
    text = "\n".join(
        f"{r.name} {r.getMessage()} {r.exc_text or ''}"
        for r in caplog.records
        if r.name.startswith(("sdkguard", "aiohttp"))
    )
    assert "retrying in" in text
    for secret in (SECRET_KEY, secret_beta, "secret prompt text", "team-a"):
        assert secret not in text


def test_a_socket_left_open_by_the_client_does_not_block_stopping(
    server: FakeAnthropic,
) -> None:
    with start_proxy(server.url) as proxy:
        idle = socket.create_connection(("127.0.0.1", proxy.port))
        started = time.monotonic()
    assert time.monotonic() - started < 10
    idle.close()
