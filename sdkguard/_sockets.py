"""Socket options sdkguard sets on the connections it guards: the library's (through the SDK's
http clients, `_sdk.keepalive`) and the proxy's upstream ones."""

from __future__ import annotations

import math
import socket
import sys

__all__ = ["keepalive_socket_options"]


def keepalive_socket_options(keepalive: tuple[float, float, int]) -> list[tuple[int, int, int]]:
    """Socket options for TCP keepalive (whole seconds, rounded up) on this platform.

    On Linux, TCP_USER_TIMEOUT gets the same bound: keepalive only probes an idle connection,
    and a request sent into a vanished peer would otherwise be retransmitted for 15 minutes.
    """
    idle, interval, count = math.ceil(keepalive[0]), math.ceil(keepalive[1]), keepalive[2]
    tcp = socket.IPPROTO_TCP
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    # macOS names the idle time TCP_KEEPALIVE.
    idle_option = getattr(socket, "TCP_KEEPIDLE", None) or getattr(socket, "TCP_KEEPALIVE", None)
    for option, value in (
        (idle_option, idle),
        (getattr(socket, "TCP_KEEPINTVL", None), interval),
        (getattr(socket, "TCP_KEEPCNT", None), count),
    ):
        if option is not None:
            options.append((tcp, option, value))
    if sys.platform.startswith("linux") and hasattr(socket, "TCP_USER_TIMEOUT"):
        options.append((tcp, socket.TCP_USER_TIMEOUT, (idle + interval * count) * 1000))
    return options
