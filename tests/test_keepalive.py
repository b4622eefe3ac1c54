"""TCP keepalive on the connections of SDK-built HTTP clients (`tcp_keepalive`).

The options are read back from the client's own sockets; the vanished peer is real: the fake
server's kernel drops every packet of the connection (a socket filter, Linux only), so the
client gets no FIN, no RST and no acknowledgement, and only the kernel's keepalive or
retransmission limit can notice.
"""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

import anthropic
import anyio
import pytest

import sdkguard
from sdkguard._sdk import http
from sdkguard.testing import FakeAnthropic, faults
from tests.helpers import API_KEY, MESSAGE_ARGS

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("guard")]
FLAVOURS = ("sync", "async")
LINUX = sys.platform.startswith("linux")
TCP = socket.IPPROTO_TCP
IDLE = getattr(socket, "TCP_KEEPIDLE", None) or getattr(socket, "TCP_KEEPALIVE", None)
# A read timeout far longer than the keepalive bound: only the kernel can end these calls.
CLIENT: dict[str, Any] = {"timeout": anthropic.Timeout(20.0, connect=1.0)}
QUICK_KEEPALIVE = (1.0, 1.0, 1)  # noticed 2 s after the last answered packet
# Stream limits longer than any bound here: only the kernel can notice.
ONLY_THE_KERNEL: dict[str, Any] = {"response_timeout": 20.0, "idle_timeout": 20.0}
# Under this, a call was ended by the kernel's bound (2 to 4 s here), not by those 20 s limits.
NOT_THE_20_S_LIMITS = 12.0


def keepalive_of(response: Any) -> dict[str, int]:
    """The keepalive options of the socket an http response came on."""
    sock = response.extensions["network_stream"].get_extra_info("socket")
    options = {
        "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        "idle": sock.getsockopt(TCP, IDLE),
        "interval": sock.getsockopt(TCP, socket.TCP_KEEPINTVL),
        "count": sock.getsockopt(TCP, socket.TCP_KEEPCNT),
    }
    if LINUX:
        options["user_timeout_ms"] = sock.getsockopt(TCP, socket.TCP_USER_TIMEOUT)
    return options


def expected(idle: int, interval: int, count: int, user_timeout_ms: int) -> dict[str, int]:
    options = {"keepalive": 1, "idle": idle, "interval": interval, "count": count}
    if LINUX:
        options["user_timeout_ms"] = user_timeout_ms
    return options


SDK_OWN = expected(60, 60, 5, 0)  # what the SDK sets on the clients it builds


def sockets_seen(
    flavour: str, server: FakeAnthropic, http_client: Callable[[], Any] | None = None
) -> list[dict[str, int]]:
    """The keepalive of the sockets of a plain call and of a stream, each a new connection."""

    def args() -> dict[str, Any]:
        made = {} if http_client is None else {"http_client": http_client()}
        return {"base_url": server.url, "api_key": API_KEY, **made}

    if flavour == "sync":
        with anthropic.Anthropic(**args()) as client:
            raw = client.messages.with_raw_response.create(**MESSAGE_ARGS)
            plain = keepalive_of(raw.http_response)
        with (
            anthropic.Anthropic(**args()) as client,
            client.messages.create(**MESSAGE_ARGS, stream=True) as stream,
        ):
            streamed = keepalive_of(stream.response)
            list(stream)
        return [plain, streamed]

    async def run() -> list[dict[str, int]]:
        async with anthropic.AsyncAnthropic(**args()) as client:
            raw = await client.messages.with_raw_response.create(**MESSAGE_ARGS)
            plain = keepalive_of(raw.http_response)
        async with (
            anthropic.AsyncAnthropic(**args()) as client,
            await client.messages.create(**MESSAGE_ARGS, stream=True) as stream,
        ):
            streamed = keepalive_of(stream.response)
            async for _ in stream:
                pass
        return [plain, streamed]

    return anyio.run(run)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_the_options_land_on_the_sockets_of_sdk_built_clients(
    server: FakeAnthropic, flavour: str
) -> None:
    with sdkguard.policy(tcp_keepalive=(15.0, 5.0, 3)):
        assert sockets_seen(flavour, server) == [expected(15, 5, 3, 30_000)] * 2
    with sdkguard.policy(tcp_keepalive=(7.2, 2.0, 4)):  # whole seconds, rounded up
        assert sockets_seen(flavour, server) == [expected(8, 2, 4, 16_000)] * 2


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_off_leaves_the_sdks_own_keepalive(server: FakeAnthropic, flavour: str) -> None:
    with sdkguard.policy(tcp_keepalive=None):
        assert sockets_seen(flavour, server) == [SDK_OWN] * 2


def test_a_user_supplied_http_client_is_left_as_configured(server: FakeAnthropic) -> None:
    assert sockets_seen("sync", server, anthropic.DefaultHttpxClient) == [SDK_OWN] * 2
    seen = sockets_seen("sync", server, http.Client)
    assert [options["keepalive"] for options in seen] == [0, 0]
    seen = sockets_seen("async", server, http.AsyncClient)
    assert [options["keepalive"] for options in seen] == [0, 0]


def test_new_connections_follow_the_policy_and_uninstall_puts_the_sdks_back(
    server: FakeAnthropic,
) -> None:
    with anthropic.Anthropic(base_url=server.url, api_key=API_KEY) as client:

        def new_connection() -> dict[str, int]:
            # `connection: close`: the server closes it after the answer, so every call
            # opens a new one; its socket is read before the body is.
            with client.messages.with_streaming_response.create(
                **MESSAGE_ARGS, extra_headers={"connection": "close"}
            ) as response:
                return keepalive_of(response.http_response)

        assert new_connection() == expected(15, 5, 3, 30_000)  # the default policy
        with sdkguard.policy(tcp_keepalive=(9.0, 3.0, 2)):
            assert new_connection() == expected(9, 3, 2, 15_000)
        with sdkguard.policy(tcp_keepalive=None):
            assert new_connection() == SDK_OWN
        assert new_connection() == expected(15, 5, 3, 30_000)
        sdkguard.uninstall()
        assert new_connection() == SDK_OWN
    assert len({r.connection for r in server.requests}) == 5


# -- a vanished peer ---------------------------------------------------------------------------

needs_vanish = pytest.mark.skipif(
    not faults.VANISH_SUPPORTED,
    reason=f"a vanishing peer needs Linux socket filters (this is {sys.platform})",
)


def plain_call(flavour: str, server: FakeAnthropic, **client_args: Any) -> Any:
    args = {"base_url": server.url, "api_key": API_KEY, **CLIENT, **client_args}
    if flavour == "sync":
        with anthropic.Anthropic(**args) as client:
            return client.messages.create(**MESSAGE_ARGS)

    async def run() -> Any:
        async with anthropic.AsyncAnthropic(**args) as client:
            return await client.messages.create(**MESSAGE_ARGS)

    return anyio.run(run)


@needs_vanish
@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize(
    ("fault", "converted"),
    [(faults.vanish_before_headers(), False), (faults.vanish_after(2), True)],
    ids=["plain_call_before_headers", "converted_call_mid_stream"],
)
def test_a_vanished_peer_is_noticed_within_the_keepalive_bound(
    server: FakeAnthropic, flavour: str, converted: bool, fault: faults.Answer
) -> None:
    retries: list[sdkguard.RetryEvent] = []
    server.script(fault, faults.ok())
    with sdkguard.policy(
        tcp_keepalive=QUICK_KEEPALIVE,
        stream_plain_calls=converted,
        on_retry=retries.append,
        **ONLY_THE_KERNEL,
    ):
        message = plain_call(flavour, server)
    assert message.content[0].text == faults.DEFAULT_TEXT
    assert [r.reason for r in retries] == ["connection_timeout"]
    # Noticed by the kernel (a 2 s bound), long before the 20 s limits would have: a bound
    # between the two, with seconds to spare for a loaded machine.
    assert retries[0].elapsed < NOT_THE_20_S_LIMITS
    assert len(server.requests) == 2


@needs_vanish
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_request_sent_into_a_vanished_connection_is_noticed_too(
    server: FakeAnthropic, flavour: str
) -> None:
    # A NAT or load balancer forgot a pooled connection: the request is retransmitted into
    # the void, and keepalive never probes a connection with data in flight. TCP_USER_TIMEOUT
    # bounds that the same way.
    retries: list[sdkguard.RetryEvent] = []
    args = {"base_url": server.url, "api_key": API_KEY, **CLIENT}
    policy = sdkguard.policy(
        tcp_keepalive=(3.0, 1.0, 1), on_retry=retries.append, **ONLY_THE_KERNEL
    )

    def twice(client: Any) -> Any:
        client.messages.create(**MESSAGE_ARGS)
        server.vanish_connections()
        return client.messages.create(**MESSAGE_ARGS)

    async def twice_async(client: Any) -> Any:
        await client.messages.create(**MESSAGE_ARGS)
        server.vanish_connections()
        return await client.messages.create(**MESSAGE_ARGS)

    with policy:
        if flavour == "sync":
            with anthropic.Anthropic(**args) as client:
                message = twice(client)
        else:

            async def run() -> Any:
                async with anthropic.AsyncAnthropic(**args) as client:
                    return await twice_async(client)

            message = anyio.run(run)
    assert message.content[0].text == faults.DEFAULT_TEXT
    assert [r.reason for r in retries] == ["connection_timeout"]
    # idle + interval * count = 4 s (an idle 3 s: keepalive must not find it dead first)
    assert retries[0].elapsed < NOT_THE_20_S_LIMITS
    assert [r.connection for r in server.requests] == [0, 1]  # the lost request never arrived


@needs_vanish
def test_without_keepalive_a_vanished_peer_leaves_the_call_waiting(server: FakeAnthropic) -> None:
    # The control: a user-supplied client keeps the SDK's keepalive (60 s idle), so after the
    # bound above the call is still waiting; stopping the server (a reset) ends it.
    server.script(faults.vanish_before_headers())
    failed: list[BaseException] = []

    def run() -> None:
        try:
            with sdkguard.policy(tcp_keepalive=QUICK_KEEPALIVE, max_attempts=1, **ONLY_THE_KERNEL):
                plain_call("sync", server, http_client=anthropic.DefaultHttpxClient())
        except Exception as err:
            failed.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    server.wait_for_requests(1)
    thread.join(2.0 + 1.0)
    assert thread.is_alive() and not failed
    server.stop()
    thread.join(5.0)
    assert not thread.is_alive() and isinstance(failed[0], anthropic.APIConnectionError)


def test_vanishing_needs_linux() -> None:
    if faults.VANISH_SUPPORTED:
        assert faults.vanish_after(0) == faults.VanishAfter(0)
        return
    with pytest.raises(NotImplementedError, match="Linux"):
        faults.vanish_before_headers()
