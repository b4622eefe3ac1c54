"""`phoenix serve`, with every port it opens on 127.0.0.1.

Phoenix binds its HTTP server (UI and OTLP/HTTP) to PHOENIX_HOST, which run.sh sets to
127.0.0.1, but its OTLP/gRPC receiver to [::] whatever PHOENIX_HOST says. This wrapper binds
that one to 127.0.0.1 too, then runs Phoenix's own command line: `python serve_local.py` is
`phoenix serve`.
"""

from __future__ import annotations

import sys
from typing import Any

from grpc.aio import _server

_add_insecure_port = _server.Server.add_insecure_port


def _loopback_only(self: Any, address: str) -> int:
    host, _, port = address.rpartition(":")
    if host in ("[::]", "0.0.0.0", ""):
        address = f"127.0.0.1:{port}"
    return _add_insecure_port(self, address)  # type: ignore[no-any-return]


_server.Server.add_insecure_port = _loopback_only  # type: ignore[method-assign]

if __name__ == "__main__":
    from phoenix.server.main import main

    sys.argv = ["phoenix", "serve", *sys.argv[1:]]
    sys.exit(main())
