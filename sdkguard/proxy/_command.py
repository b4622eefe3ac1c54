"""`sdkguard proxy`: serve, or run a command with its `ANTHROPIC_BASE_URL` pointed at the proxy.

    sdkguard proxy [--upstream URL] [--host H] [--port N] [LIMITS] [POLICY OPTIONS]
    sdkguard proxy [OPTIONS] -- COMMAND [ARG ...]

The parser is built without importing aiohttp, so `sdkguard --help` works without the extra;
the handler says in one line when the extra is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from sdkguard import _policy, _run
from sdkguard._policy import env_names
from sdkguard.proxy._config import (
    DEFAULT_HOST,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_PORT,
    DEFAULT_PRE_CONTENT_DEADLINE,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_UPSTREAM,
    ProxyConfig,
    is_loopback,
    parse_upstream,
    proxy_policy,
)

__all__ = ["add_parser", "serve_until_signal"]

PROG = "sdkguard proxy"
_LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    proxy = commands.add_parser(
        "proxy",
        help="a local gateway guarding the Messages calls of any client (Claude Code, curl, ...)",
        usage="%(prog)s [--upstream URL] [--port N] [OPTIONS] [-- COMMAND [ARG ...]]",
        description=(
            "Serve http://HOST:PORT, forwarding to the upstream API with sdkguard's retries, "
            "stall detection and stream restarts before content. With a COMMAND: serve on a "
            "free port (or --port), run COMMAND with ANTHROPIC_BASE_URL set to the proxy, "
            "stop when it exits, and exit with its status; retry lines then go to a log file. "
            "Policy values take the SDKGUARD_* variables' forms. See docs/proxy.md."
        ),
        epilog="example: sdkguard proxy -- claude",
    )
    setattr(proxy, "error", _one_line_error)  # noqa: B010 (argparse calls self.error)
    proxy.add_argument(
        "--upstream",
        type=_checked(parse_upstream),
        default=DEFAULT_UPSTREAM,
        metavar="URL",
        help=f"the API's base URL (default {DEFAULT_UPSTREAM}); a path in it is kept",
    )
    proxy.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default {DEFAULT_HOST}); another serves anyone who "
        "can reach it",
    )
    proxy.add_argument(
        "--port",
        type=_integer(0, 65535),
        default=None,
        metavar="N",
        help=f"port (default {DEFAULT_PORT}; with a COMMAND a free one; 0: a free one)",
    )
    proxy.add_argument(
        "--log-file",
        default=None,
        metavar="PATH",
        help="with a COMMAND: where the log goes (default: a new file in the temp directory)",
    )
    proxy.add_argument(
        "--otlp",
        default=None,
        metavar="URL",
        help="export the proxy's traces and metrics over OTLP/HTTP to URL, such as "
        "http://127.0.0.1:4318 (URL/v1/traces, URL/v1/metrics); service.name sdkguard-proxy "
        "unless OTEL_SERVICE_NAME says otherwise. Needs pip install 'sdkguard[otel]'. Without "
        "it, a provider that opentelemetry-instrument configures is used",
    )
    limits = proxy.add_argument_group("limits")
    limits.add_argument(
        "--max-request-bytes",
        type=_integer(1, None),
        default=DEFAULT_MAX_REQUEST_BYTES,
        metavar="N",
        help=f"larger request bodies get 413 (default {DEFAULT_MAX_REQUEST_BYTES})",
    )
    limits.add_argument(
        "--request-timeout",
        type=_seconds,
        default=DEFAULT_REQUEST_TIMEOUT,
        metavar="S",
        help="seconds a client may take to send its request body; then 408 "
        f"(default {DEFAULT_REQUEST_TIMEOUT:g})",
    )
    limits.add_argument(
        "--max-concurrency",
        type=_integer(1, None),
        default=DEFAULT_MAX_CONCURRENCY,
        metavar="N",
        help=f"requests forwarded at once; more get 429 (default {DEFAULT_MAX_CONCURRENCY})",
    )
    limits.add_argument(
        "--pre-content-deadline",
        type=_seconds,
        default=DEFAULT_PRE_CONTENT_DEADLINE,
        metavar="S",
        help="seconds by which a request is answered, however its attempts fail "
        f"before content (default {DEFAULT_PRE_CONTENT_DEADLINE:g})",
    )
    # The policy options are `sdkguard run`'s: one option per field, the variables' forms.
    forms: dict[str, str] = getattr(_policy, "_FORMS", {})
    names = env_names()
    group = proxy.add_argument_group(
        "policy (each overrides its SDKGUARD_<FIELD> variable; the proxy's own defaults: "
        "response-timeout 30, idle-timeout 30, progress-timeout 120, resume on)"
    )
    fields = [f for f in _run._COMMON if f in names] + [f for f in names if f not in _run._COMMON]
    group.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="continue a stream broken after content in the same stream (default on; "
        "overrides SDKGUARD_RESUME); --no-resume ends it with an SSE error event",
    )
    for field in fields:
        if field == "resume":
            continue
        form = forms.get(field)
        group.add_argument(
            "--" + field.replace("_", "-"),
            dest=field,
            type=_run._validator(field, names[field]),
            default=None,
            metavar="VALUE",
            help=f"{form}; overrides {names[field]}" if form else f"overrides {names[field]}",
        )
    proxy.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND [ARG ...]",
        help="a command to run with ANTHROPIC_BASE_URL set to the proxy, after --",
    )
    proxy.set_defaults(handler=_proxy, policy_fields=fields)


def _one_line_error(message: str) -> NoReturn:
    print(f"{PROG}: {message}", file=sys.stderr)
    sys.exit(2)


def _checked(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def check(value: str) -> Any:
        try:
            return parse(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return check


def _integer(low: int, high: int | None) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = -1
        if number < low or (high is not None and number > high):
            bounds = f"{low} to {high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"{value!r} is not an integer {bounds}")
        return number

    parse.__name__ = "integer"
    return parse


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0 < number < float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds > 0")
    return number


# -- running -----------------------------------------------------------------------------------


def _proxy(args: argparse.Namespace) -> int:
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        print(
            f"{PROG}: needs the proxy extra (aiohttp): pip install 'sdkguard[proxy]'",
            file=sys.stderr,
        )
        return 2
    command: list[str] = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    fields = {f: getattr(args, f) for f in args.policy_fields if getattr(args, f) is not None}
    if isinstance(args.resume, bool):
        fields["resume"] = "on" if args.resume else "off"
    try:
        policy = proxy_policy(fields)  # a malformed SDKGUARD_* variable is named here
    except ValueError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2
    port = args.port if args.port is not None else (0 if command else DEFAULT_PORT)
    config = ProxyConfig(
        upstream=args.upstream,
        host=args.host,
        port=port,
        policy=policy,
        pre_content_deadline=args.pre_content_deadline,
        max_request_bytes=args.max_request_bytes,
        request_timeout=args.request_timeout,
        max_concurrency=args.max_concurrency,
    )
    if not is_loopback(config.host):
        print(
            f"{PROG}: warning: --host {config.host} is not a loopback address: the proxy serves "
            "anyone who can reach this machine on that port",
            file=sys.stderr,
        )
    if args.otlp is None:
        return _serve_or_wrap(config, command, args.log_file)
    from sdkguard._demo import _OTLP_PACKAGE, _OtlpMissing, _start_otlp

    try:
        otlp = _start_otlp(args.otlp, "sdkguard-proxy")
    except _OtlpMissing as error:
        print(
            f"{PROG}: --otlp needs the package {error}; install it with pip install "
            f"{_OTLP_PACKAGE} opentelemetry-sdk, or pip install 'sdkguard[otel]'",
            file=sys.stderr,
        )
        return 2
    except RuntimeError as error:
        print(f"{PROG}: --otlp: {error}", file=sys.stderr)
        return 2
    try:
        return _serve_or_wrap(config, command, args.log_file)
    finally:
        print(f"{PROG}: {otlp.finish()}", file=sys.stderr, flush=True)


def _serve_or_wrap(config: ProxyConfig, command: list[str], log_file: str | None) -> int:
    if command:
        return _wrap(config, command, log_file)
    _log_to(logging.StreamHandler(sys.stderr))
    try:
        asyncio.run(serve_until_signal(config, announce=True))
    except OSError as error:
        print(f"{PROG}: {_listen_error(config, error)}", file=sys.stderr)
        return 2
    return 0


def _listen_error(config: ProxyConfig, error: OSError) -> str:
    option = "--port" if error.errno == errno.EADDRINUSE else "--host"
    value = config.port if option == "--port" else config.host
    # asyncio's words wrap the system's ("error while attempting to bind on address ...").
    reason = os.strerror(error.errno) if error.errno else str(error)
    return f"{option} {value}: cannot listen on {config.host}:{config.port}: {reason.lower()}"


def _log_to(handler: logging.Handler) -> None:
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    logger = logging.getLogger("sdkguard")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


async def serve_until_signal(config: ProxyConfig, *, announce: bool = False) -> None:
    """Serve until SIGINT or SIGTERM; with `announce`, say so on stderr, and the summary."""
    from sdkguard.proxy._server import ProxyServer

    server = ProxyServer(config)
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Not on Windows, nor outside the main thread.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stopping.set)
    if announce:
        print(
            f"{PROG}: serving {server.url} -> {config.upstream} (Ctrl-C to stop)",
            file=sys.stderr,
            flush=True,
        )
    try:
        await stopping.wait()
    finally:
        await server.stop()
        if announce:
            print(f"{PROG}: {server.stats.summary()}", file=sys.stderr, flush=True)


def _wrap(config: ProxyConfig, command: Sequence[str], log_file: str | None) -> int:
    """Serve while `command` runs with its base URL pointed here; its exit status."""
    from sdkguard.proxy._server import RunningProxy

    if log_file is None:
        handle, log_file = tempfile.mkstemp(prefix="sdkguard-proxy-", suffix=".log")
        os.close(handle)
    try:
        handler = logging.FileHandler(log_file, encoding="utf-8")
    except OSError as error:
        print(f"{PROG}: --log-file {log_file}: {error.strerror or error}", file=sys.stderr)
        return 2
    _log_to(handler)
    try:
        proxy = RunningProxy(config)
    except OSError as error:
        print(f"{PROG}: {_listen_error(config, error)}", file=sys.stderr)
        return 2
    print(
        f"{PROG}: {proxy.url} -> {config.upstream} for {command[0]}; log: {log_file}",
        file=sys.stderr,
        flush=True,
    )
    env = dict(os.environ, ANTHROPIC_BASE_URL=proxy.url)
    try:
        status = _run_command(command, env)
    finally:
        proxy.stop()
        summary = proxy.stats.summary()
        logging.getLogger("sdkguard.proxy").info("summary: %s", summary)
        handler.close()
        print(f"{PROG}: {summary}; log: {log_file}", file=sys.stderr, flush=True)
    return status


def _run_command(command: Sequence[str], env: dict[str, str]) -> int:
    try:
        process = subprocess.Popen(list(command), env=env)
    except FileNotFoundError:
        print(f"{PROG}: command not found: {command[0]}", file=sys.stderr)
        return 127
    except PermissionError as error:
        print(f"{PROG}: cannot run {command[0]}: {error.strerror}", file=sys.stderr)
        return 126
    while True:
        try:
            status = process.wait()
        except KeyboardInterrupt:
            continue  # the terminal gave Ctrl-C to the command too: its exit status decides
        return 128 - status if status < 0 else status
