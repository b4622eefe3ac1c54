"""The fake Anthropic Messages API server: real HTTP/1.1 on loopback, faults at the socket level."""

from __future__ import annotations

import contextlib
import ctypes
import enum
import functools
import http
import json
import math
import select
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from sdkguard.testing import _platforms, _sse
from sdkguard.testing.faults import (
    DEFAULT_OK,
    VANISH_SUPPORTED,
    Answer,
    CloseAfter,
    Fragmented,
    InvalidUtf8After,
    MalformedAfter,
    Ok,
    PingsOnlyAfter,
    ProxyError,
    ResetAfter,
    ResetAtByte,
    ResetBeforeHeaders,
    SseErrorAfter,
    StallAfter,
    StallBeforeHeaders,
    Status,
    Trickle,
    TruncateAfter,
    UnknownEventAfter,
    VanishAfter,
    VanishBeforeHeaders,
    WrongContentType,
    default_error_message,
    default_error_type,
    status_for_error_type,
)

__all__ = ["FakeAnthropic", "RecordedRequest", "SentResponse"]

MODELS_PATH = "/v1/models"

_READ_SIZE = 65536
_MAX_HEAD = 1 << 20
_BACKLOG = 512
_STOP_JOIN_SECONDS = 2.0
_LINGER_ZERO = struct.pack("ii", 1, 0)
_SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)  # Linux
# A classic BPF program of one instruction, `ret #0`: keep no byte of any packet.
_DROP_ALL = struct.pack("HBBI", 0x06, 0, 0, 0)
_REASONS = {529: "Overloaded"}


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request the server received."""

    method: str
    path: str
    """The path, without the query."""
    query: str
    headers: dict[str, str]
    """Header names in lower case; repeated headers joined with ", "."""
    body: Any
    """The JSON body, parsed, or None when there is none or it is not JSON."""
    received_at: float
    """`time.monotonic()` when the whole request had been read."""
    connection: int
    """Id of the TCP connection it came on, counting from 0: shows whether one was reused."""
    raw_body: bytes = field(default=b"", repr=False)
    platform: str = "anthropic"
    """`"anthropic"`; `"bedrock"` or `"vertex"` for the paths of those clients (docs/testing.md)."""

    @property
    def stream(self) -> bool:
        """Whether the request asked for a stream (`"stream": true`; Bedrock: by its path)."""
        if self.platform == _platforms.BEDROCK:
            return self.path.endswith("/invoke-with-response-stream")
        return isinstance(self.body, dict) and self.body.get("stream") is True


@dataclass
class SentResponse:
    """What the server wrote for one request, updated as each part reaches the socket.

    Each part is recorded once written, except the write that ends the answer, recorded
    just before it (and undone if it fails): a client that has the whole answer, or saw it
    break, never finds this behind what it got.
    """

    fault: str
    """The name of the answer (`"ok"`, `"reset_after"`, ...), or of the built-in reply
    (`"not_found"`, `"models"`, `"bad_request"`) for requests that do not take one."""
    status: int = 0
    """0 until the status line and headers were written."""
    headers: dict[str, str] = field(default_factory=dict)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """Every SSE event written, name and parsed data, pings included, in order. The data
    dicts are shared with the answer's prebuilt events: do not change them."""
    body: bytes | None = None
    """The bytes written of a non-SSE body (only the part written when it was cut)."""
    completed: bool = False
    """Whether the whole correct answer was written (for a stream, `message_stop` and the
    terminating chunk included)."""
    _done: threading.Event = field(
        default_factory=threading.Event, init=False, repr=False, compare=False
    )

    @property
    def done(self) -> bool:
        """Whether the server has finished with this answer, whatever the outcome."""
        return self._done.is_set()

    def wait(self, timeout: float = 5.0) -> None:
        """Block until the server has finished with this answer; `TimeoutError` after `timeout`."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"the server was still answering after {timeout} s")

    def content_events(self) -> list[tuple[str, dict[str, Any]]]:
        """The events written, without pings: what an SDK consumer sees."""
        return [e for e in self.events if e[0] != "ping"]

    @property
    def request_id(self) -> str | None:
        """The `request-id` header sent, if any."""
        return self.headers.get("request-id")

    @property
    def text(self) -> str:
        """The text of every `text_delta` written, joined."""
        return "".join(
            data["delta"]["text"]
            for name, data in self.events
            if name == "content_block_delta" and data["delta"].get("type") == "text_delta"
        )


class _Gone(Exception):
    """The client closed the connection or the server is stopping: stop answering."""


class _Reset(Exception):
    """The answer is cut here (`reset_at_byte`): reset the connection.

    `data` is the write that was cut, `written` how many of its bytes got out.
    """

    def __init__(self, data: bytes = b"", written: int = 0) -> None:
        super().__init__()
        self.data = data
        self.written = written


class _BadRequest(Exception):
    pass


class _End(enum.Enum):
    KEEP = "keep"  # ready for the next request on this connection
    CLOSE = "close"  # close with FIN
    RESET = "reset"  # close with RST


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes


class _Waiter:
    """Waits for a socket or the wake socket, so that no thread blocks for good."""

    def __init__(self, sock: socket.socket, wake: socket.socket) -> None:
        self._sock = sock
        self._wake = wake
        self._poll: Any = None
        if hasattr(select, "poll"):
            # poll, not select: select fails on descriptors past FD_SETSIZE (many connections).
            self._poll = select.poll()
            self._poll.register(wake, select.POLLIN)
            self._poll.register(sock, select.POLLIN)
            self._mask = select.POLLIN

    def wait(self, write: bool, timeout: float | None) -> bool:
        """True when the socket is ready (or in error), False on timeout or wake-up."""
        if self._poll is not None:
            mask = select.POLLOUT if write else select.POLLIN
            if mask != self._mask:
                self._poll.modify(self._sock, mask)
                self._mask = mask
            ms = None if timeout is None else max(0, math.ceil(timeout * 1000))
            ready = self._poll.poll(ms)
            return any(fd == self._sock.fileno() for fd, _ in ready)
        rlist = [self._wake] if write else [self._sock, self._wake]
        wlist = [self._sock] if write else []
        r, w, x = select.select(rlist, wlist, [self._sock], timeout)
        return self._sock in r or self._sock in w or self._sock in x


class _Conn:
    """One accepted connection; all its I/O is non-blocking and wakes when the server stops."""

    def __init__(self, server: FakeAnthropic, sock: socket.socket, cid: int) -> None:
        self.server = server
        self.sock = sock
        self.id = cid
        self.buf = bytearray()
        self.lock = threading.Lock()
        self.idle = False  # waiting for the first byte of the next request
        self.waiter = _Waiter(sock, server._wake_r)
        self.thread: threading.Thread | None = None
        self.shaper: _Shaper | None = None
        """Set while an answer is written in pieces (`fragmented`) or cut (`reset_at_byte`)."""

    def _check(self) -> None:
        if self.server._stopping:
            raise _Gone

    def fill(self) -> bool:
        """Read more into `buf`; False at the end of the stream."""
        while True:
            self._check()
            try:
                data = self.sock.recv(_READ_SIZE)
            except BlockingIOError:
                self.waiter.wait(False, None)
                continue
            except OSError as e:
                raise _Gone from e
            if not data:
                return False
            self.buf += data
            return True

    def send(self, data: bytes) -> None:
        """Write all of `data` (returns once the kernel has it)."""
        if self.shaper is not None:
            self.shaper.send(self, data)
        else:
            self.send_all(data)

    def send_all(self, data: bytes) -> None:
        self._check()
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as e:
            raise _Gone from e
        if sent == len(data):
            return
        view = memoryview(data)[sent:]
        while view:
            self.waiter.wait(True, None)
            self._check()
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                continue
            except OSError as e:
                raise _Gone from e
            view = view[sent:]

    def pause(self, seconds: float | None) -> None:
        """Send nothing for `seconds` (forever if None).

        Raises `_Gone` as soon as the client closes its end or the server stops, so a stall
        never outlives its client.
        """
        deadline = None if seconds is None else time.monotonic() + seconds
        while True:
            self._check()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            if not self.waiter.wait(False, remaining):
                continue
            try:
                data = self.sock.recv(_READ_SIZE)
            except BlockingIOError:
                continue
            except OSError as e:
                raise _Gone from e
            if not data:
                raise _Gone
            # Bytes from the client during a stall: keep them for the next request.
            self.buf += data

    def vanish(self) -> None:
        """From now on the kernel drops every packet that arrives for this connection.

        A socket filter that keeps nothing: TCP never sees the client's data, acknowledgements
        or keepalive probes, so to the client the server's host is gone without a FIN or RST.
        """
        program = ctypes.create_string_buffer(_DROP_ALL)
        # struct sock_fprog: the number of instructions, then a pointer to them.
        fprog = struct.pack("HP", 1, ctypes.addressof(program))
        with self.lock:
            self.sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)

    def close(self, reset: bool) -> None:
        # Under the lock: refuse_connections() may be shutting this socket down right now.
        with self.lock, contextlib.suppress(OSError):
            self.idle = False
            if reset:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
            self.sock.close()

    def shutdown_if_idle(self) -> None:
        """Close the connection if it waits for a request (what a server going down does)."""
        with self.lock:
            if self.idle and not self.buf:
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_RDWR)


class _Shaper:
    """Writes an answer in pieces cut at byte offsets, and cuts it short at `stop_at`."""

    def __init__(self, cuts: tuple[int, ...], stop_at: int | None, pause: float) -> None:
        self.cuts = deque(cuts)
        self.stop_at = stop_at
        self.pause = pause
        self.offset = 0  # bytes of the answer written so far

    def send(self, conn: _Conn, data: bytes) -> None:
        cuts = self.cuts
        whole, start = data, self.offset
        while True:
            while cuts and cuts[0] <= self.offset:
                cuts.popleft()
            limit = len(data)
            if cuts:
                limit = min(limit, cuts[0] - self.offset)
            if self.stop_at is not None:
                limit = min(limit, self.stop_at - self.offset)
            if limit:
                conn.send_all(data[:limit])
                self.offset += limit
                data = data[limit:]
            if self.stop_at is not None and self.offset >= self.stop_at:
                raise _Reset(whole, self.offset - start)
            if not data:
                return
            conn.pause(self.pause)  # at a cut: let this piece arrive on its own


class _Listener:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.wake_r, self.wake_w = socket.socketpair()
        self.closing = False
        self.thread: threading.Thread | None = None


@dataclass
class _Reply:
    """What one answer is being written with."""

    conn: _Conn
    sent: SentResponse
    n: int
    keep_alive: bool
    request: RecordedRequest
    line_ending: bytes = b"\n"

    @property
    def request_id(self) -> str:
        return f"req_fake_{self.n}"

    def base_headers(self) -> dict[str, str]:
        headers = {"request-id": self.request_id}
        if not self.keep_alive:
            headers["connection"] = "close"
        return headers

    @property
    def end(self) -> _End:
        return _End.KEEP if self.keep_alive else _End.CLOSE


def _record_cut_event(sent: SentResponse, cut: _Reset) -> None:
    """Record the event of a cut write if all of its data got out.

    A client hands an event on once its data arrived, before the chunk's closing CRLF (and the
    terminating chunk of a last write): so must the record, which is never behind a client.
    """
    data = cut.data
    head_end = data.find(b"\r\n")
    try:
        size = int(data[:head_end], 16)
    except ValueError:
        return  # not an HTTP chunk: the headers, say
    payload_end = head_end + 2 + size
    if size == 0 or cut.written < payload_end:
        return
    lines = data[head_end + 2 : payload_end].decode().replace("\r\n", "\n").replace("\r", "\n")
    fields = dict(line.split(": ", 1) for line in lines.split("\n") if ": " in line)
    try:
        event = (fields["event"], json.loads(fields["data"]))
    except (KeyError, ValueError):
        return  # malformed_after's or invalid_utf8_after's event: never recorded
    sent.events.append(event)  # not recorded yet: a write is recorded once out, or undone


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return _REASONS.get(status, "Unknown")


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_reason(status)}"]
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


class FakeAnthropic:
    """A fake Anthropic Messages API on a real loopback socket, with scripted faults.

    The server runs in background threads, so it serves sync and async clients alike::

        with FakeAnthropic() as server:
            client = anthropic.Anthropic(base_url=server.url, api_key="test")
            server.script(faults.reset_before_headers(), faults.ok())

    Each Messages request (`POST /v1/messages` and `/v1/messages/count_tokens`) takes the
    next scripted answer; when the script is empty it gets the default (`faults.ok()`).
    """

    # Written once by stop() and never drained, so every waiting thread wakes; made by start().
    _wake_r: socket.socket
    _wake_w: socket.socket

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self.requests: list[RecordedRequest] = []
        """Every request received, in arrival order."""
        self.sent: list[SentResponse] = []
        """What was written for each request, at the same index as `requests`."""
        self._cond = threading.Condition()
        self._script: deque[Answer] = deque()
        self._default: Answer = DEFAULT_OK
        self._listener: _Listener | None = None
        self._listener_lock = threading.Lock()
        self._conns: dict[int, _Conn] = {}
        self._threads: set[threading.Thread] = set()  # connection threads, to join on stop
        self._accepted = 0
        self._received = 0
        self._started = False
        self._stopping = False
        self._closing_idle = False  # refusing: a connection done answering is closed

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port; the one actually bound once started (the constructor's 0 means free)."""
        return self._port

    @property
    def host(self) -> str:
        """The address the server listens on."""
        return self._host

    @property
    def url(self) -> str:
        """The base URL to give a client, e.g. `http://127.0.0.1:54321`."""
        if not self._started:
            raise RuntimeError("the server is not started: call start() or use it as a context")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    def start(self) -> FakeAnthropic:
        """Bind, listen and start accepting in a background thread. Returns the server."""
        if self._started or self._stopping:
            raise RuntimeError("a FakeAnthropic can be started only once")
        self._started = True
        self._wake_r, self._wake_w = socket.socketpair()
        try:
            self._open_listener()
        except BaseException:
            self._stopping = True
            self._wake_r.close()
            self._wake_w.close()
            raise
        return self

    def stop(self) -> None:
        """Stop: close the listening socket, reset every client connection, join every thread.

        Prompt (well under a second) even with connections stalled forever.
        """
        if self._stopping or not self._started:
            self._stopping = True
            return
        self._stopping = True
        self._close_listener()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        deadline = time.monotonic() + _STOP_JOIN_SECONDS
        with self._cond:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if not any(t.is_alive() for t in threads):
            self._wake_r.close()
            self._wake_w.close()

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "started" if self._started and not self._stopping else "stopped"
        return f"<FakeAnthropic {self._host}:{self._port} {state}>"

    # --- script ---------------------------------------------------------------------------

    def script(self, *answers: Answer) -> None:
        """Replace the queue of answers: each Messages request takes the next one, in order."""
        for answer in answers:
            if not isinstance(answer, Answer):
                raise TypeError(
                    f"script() takes answers from sdkguard.testing.faults, got {answer!r}"
                )
        with self._cond:
            self._script = deque(answers)

    def default(self, answer: Answer) -> None:
        """What Messages requests get once the script is empty (initially `faults.ok()`)."""
        if not isinstance(answer, Answer):
            raise TypeError(
                f"default() takes an answer from sdkguard.testing.faults, got {answer!r}"
            )
        with self._cond:
            self._default = answer

    @property
    def pending_answers(self) -> int:
        """How many scripted answers have not been taken yet."""
        with self._cond:
            return len(self._script)

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> None:
        """Block until at least `n` requests were received; `TimeoutError` after `timeout` s."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._received >= n, timeout):
                raise TimeoutError(
                    f"{self._received} request(s) received, waited {timeout} s for {n}"
                )

    # --- connections ----------------------------------------------------------------------

    @property
    def open_connections(self) -> int:
        """Client connections currently open on the server side."""
        with self._cond:
            return len(self._conns)

    @property
    def connections_accepted(self) -> int:
        """Client connections accepted since start."""
        with self._cond:
            return self._accepted

    def refuse_connections(self, *, close_idle: bool = True) -> None:
        """Close the listening socket: new connections get ECONNREFUSED.

        With `close_idle` (the default), keep-alive connections waiting for a request are
        closed too, as by a server going down; otherwise a pooled connection would keep
        working. Connections in the middle of an answer finish it, then are closed.
        """
        self._closing_idle = close_idle
        self._close_listener()
        if close_idle:
            with self._cond:
                conns = list(self._conns.values())
            for conn in conns:
                conn.shutdown_if_idle()

    def accept_connections(self) -> None:
        """Listen again, on the same port, after `refuse_connections()`."""
        if not self._started or self._stopping:
            raise RuntimeError("the server is not running")
        self._closing_idle = False
        self._open_listener()

    def vanish_connections(self) -> None:
        """Make every open connection vanish now, idle keep-alive ones included (Linux).

        The kernel drops every packet that arrives for them: a client that sends on one gets
        no FIN, RST or acknowledgement, as behind a NAT or load balancer that forgot its
        connections. New connections are answered as usual.
        """
        if not VANISH_SUPPORTED:
            raise NotImplementedError("a vanishing peer needs Linux socket filters")
        with self._cond:
            conns = list(self._conns.values())
        for conn in conns:
            with contextlib.suppress(OSError):  # closed meanwhile
                conn.vanish()

    @contextlib.contextmanager
    def refusing(self) -> Iterator[None]:
        """Refuse connections inside the block (see `refuse_connections`)."""
        self.refuse_connections()
        try:
            yield
        finally:
            if not self._stopping:
                self.accept_connections()

    def _open_listener(self) -> None:
        with self._listener_lock:
            if self._listener is not None:
                return
            family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                if sys.platform != "win32":
                    # Re-binding the same port after refuse_connections() must work even with
                    # connections of the old listener in TIME_WAIT.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((self._host, self._port))
                sock.listen(_BACKLOG)
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
            self._port = sock.getsockname()[1]
            listener = _Listener(sock)
            listener.thread = threading.Thread(
                target=self._accept_loop,
                args=(listener,),
                name=f"sdkguard-fake-accept-{self._port}",
                daemon=True,
            )
            self._listener = listener
            listener.thread.start()

    def _close_listener(self) -> None:
        with self._listener_lock:
            listener, self._listener = self._listener, None
        if listener is None:
            return
        listener.closing = True
        with contextlib.suppress(OSError):
            listener.wake_w.send(b"x")
        if listener.thread is not None:
            listener.thread.join(_STOP_JOIN_SECONDS)
        listener.sock.close()
        listener.wake_r.close()
        listener.wake_w.close()

    def _accept_loop(self, listener: _Listener) -> None:
        waiter = _Waiter(listener.sock, listener.wake_r)
        while not listener.closing and not self._stopping:
            waiter.wait(False, None)
            while not listener.closing and not self._stopping:
                try:
                    sock, _ = listener.sock.accept()
                except BlockingIOError:
                    break
                except OSError:
                    # e.g. out of file descriptors: back off instead of spinning
                    time.sleep(0.01)
                    break
                self._start_connection(sock)

    def _start_connection(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._cond:
            cid = self._accepted
            self._accepted += 1
            conn = _Conn(self, sock, cid)
            conn.thread = threading.Thread(
                target=self._run_connection,
                args=(conn,),
                name=f"sdkguard-fake-conn-{self._port}-{cid}",
                daemon=True,
            )
            self._conns[cid] = conn
            if len(self._threads) >= 64:
                self._threads = {t for t in self._threads if t.is_alive()}
            self._threads.add(conn.thread)
        conn.thread.start()

    # --- one connection -------------------------------------------------------------------

    def _run_connection(self, conn: _Conn) -> None:
        end = _End.CLOSE
        try:
            while True:
                try:
                    request = self._read_request(conn)
                except _BadRequest:
                    body = _sse.dumps(
                        _sse.error_data("invalid_request_error", "Malformed HTTP request", "")
                    )
                    conn.send(
                        _head(
                            400,
                            {
                                "content-type": "application/json",
                                "content-length": str(len(body)),
                                "connection": "close",
                            },
                        )
                        + body
                    )
                    break
                if request is None:
                    break
                end = self._respond(conn, request)
                if end is not _End.KEEP:
                    break
        except _Gone:
            end = _End.RESET if self._stopping else _End.CLOSE
        except _Reset:
            end = _End.RESET
        except BaseException:
            end = _End.RESET
            raise
        finally:
            conn.close(reset=end is _End.RESET or self._stopping)
            with self._cond:
                self._conns.pop(conn.id, None)

    def _read_request(self, conn: _Conn) -> _Request | None:
        """The next request on the connection; None when the client closed it."""
        while True:
            # Tolerate blank lines between requests (RFC 9112 2.2).
            while conn.buf[:2] == b"\r\n":
                del conn.buf[:2]
            end = conn.buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(conn.buf) > _MAX_HEAD:
                raise _BadRequest
            with conn.lock:
                conn.idle = not conn.buf
            if conn.idle and self._closing_idle:
                return None  # the server went down while this connection answered
            try:
                more = conn.fill()
            finally:
                with conn.lock:
                    conn.idle = False
            if not more:
                return None
        head = bytes(conn.buf[:end]).decode("latin-1")
        del conn.buf[: end + 4]
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise _BadRequest
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise _BadRequest
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = self._read_chunked(conn)
        else:
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError as e:
                raise _BadRequest from e
            body = self._read_exact(conn, length)
        return _Request(method, target, version, headers, body)

    def _read_exact(self, conn: _Conn, n: int) -> bytes:
        while len(conn.buf) < n:
            if not conn.fill():
                raise _Gone
        data = bytes(conn.buf[:n])
        del conn.buf[:n]
        return data

    def _read_line(self, conn: _Conn) -> bytes:
        while (end := conn.buf.find(b"\r\n")) < 0:
            if len(conn.buf) > _MAX_HEAD:
                raise _BadRequest
            if not conn.fill():
                raise _Gone
        line = bytes(conn.buf[:end])
        del conn.buf[: end + 2]
        return line

    def _read_chunked(self, conn: _Conn) -> bytes:
        body = bytearray()
        while True:
            try:
                size = int(self._read_line(conn).split(b";")[0].strip(), 16)
            except ValueError as e:
                raise _BadRequest from e
            if size == 0:
                while self._read_line(conn):  # trailers
                    pass
                return bytes(body)
            body += self._read_exact(conn, size)
            self._read_exact(conn, 2)

    def _respond(self, conn: _Conn, request: _Request) -> _End:
        target = request.target
        if target.startswith(("http://", "https://")):
            # absolute form, as sent through a proxy
            target = "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
        path, _, query = target.partition("?")
        body: Any = None
        if request.body:
            try:
                body = json.loads(request.body)
            except ValueError:
                body = None
        connection = request.headers.get("connection", "").lower()
        keep_alive = "close" not in connection and (
            request.version != "HTTP/1.0" or "keep-alive" in connection
        )
        route = _platforms.route(request.method, path)
        is_messages = route is not None
        wire: Fragmented | None = None
        with self._cond:
            # A counter, not len(requests): ids stay unique if a test clears the lists.
            self._received += 1
            n = self._received
            answer: Answer | None = None
            if is_messages and isinstance(body, dict):
                answer = self._script.popleft() if self._script else self._default
                if isinstance(answer, Fragmented):
                    wire, answer = answer, answer.answer
            if answer is not None:
                name = answer.name
            elif is_messages:
                name = "bad_request"
            elif request.method == "GET" and path == MODELS_PATH:
                name = "models"
            else:
                name = "not_found"
            recorded = RecordedRequest(
                method=request.method,
                path=path,
                query=query,
                headers=request.headers,
                body=body,
                received_at=time.monotonic(),
                connection=conn.id,
                raw_body=request.body,
                platform=route.platform if route is not None else _platforms.ANTHROPIC,
            )
            sent = SentResponse(fault=name)
            self.requests.append(recorded)
            self.sent.append(sent)
            self._cond.notify_all()
        reply = _Reply(conn, sent, n, keep_alive, recorded)
        stop_at = answer.offset if isinstance(answer, ResetAtByte) else None
        if wire is not None or stop_at is not None:
            conn.shaper = _Shaper(wire.at if wire else (), stop_at, wire.pause if wire else 0.0)
            if wire is not None:
                reply.line_ending = wire.line_ending.encode()
        try:
            if answer is None or route is None:
                return self._builtin(reply, name, path)
            if route.count_tokens:
                end = self._count_tokens(reply, answer)
            else:
                try:
                    end = self._messages(reply, answer, route.model)
                except _Reset as cut:
                    if recorded.stream:
                        _record_cut_event(sent, cut)
                    raise
            # reset_at_byte past the end of the answer: all of it was sent, now the reset
            return _End.RESET if stop_at is not None else end
        finally:
            conn.shaper = None
            sent._done.set()

    # --- answers --------------------------------------------------------------------------
    #
    # Every part of an answer is recorded in its SentResponse once written, except the write
    # that ends the answer: that one is recorded just before (and undone if it fails), so a
    # client that has the whole answer never finds `sent` behind it.

    @staticmethod
    def _last_write(
        conn: _Conn, data: bytes, record: Callable[[], None], undo: Callable[[], None]
    ) -> None:
        record()
        try:
            conn.send(data)
        except BaseException:
            undo()
            raise

    def _send_json(
        self,
        reply: _Reply,
        status: int,
        body: bytes,
        extra: dict[str, str] | None = None,
        *,
        complete: bool = True,
        content_type: str = "application/json",
        from_api: bool = True,
    ) -> _End:
        """A whole answer with a body; `from_api=False`: not the API's (no `request-id`)."""
        sent = reply.sent
        headers = {"content-type": content_type, "content-length": str(len(body))}
        headers.update(reply.base_headers())
        if not from_api:
            del headers["request-id"]
        if extra:
            headers.update({k.lower(): v for k, v in extra.items()})

        def record() -> None:
            sent.status, sent.headers, sent.body, sent.completed = status, headers, body, complete

        def undo() -> None:
            sent.status, sent.headers, sent.body, sent.completed = 0, {}, None, False

        self._last_write(reply.conn, _head(status, headers) + body, record, undo)
        return reply.end

    def _error(
        self, reply: _Reply, status: int, error_type: str, message: str, *, complete: bool = True
    ) -> _End:
        body = _sse.dumps(_sse.error_data(error_type, message, reply.request_id))
        return self._send_json(reply, status, body, complete=complete)

    def _builtin(self, reply: _Reply, name: str, path: str) -> _End:
        if name == "models":
            model = {
                "type": "model",
                "id": "claude-fake-1",
                "display_name": "Fake model",
                "created_at": "2025-01-01T00:00:00Z",
            }
            body = {
                "data": [model],
                "has_more": False,
                "first_id": model["id"],
                "last_id": model["id"],
            }
            return self._send_json(reply, 200, _sse.dumps(body))
        if name == "bad_request":
            return self._error(
                reply, 400, "invalid_request_error", "The request body is not a JSON object."
            )
        return self._error(reply, 404, "not_found_error", f"Not found: {path}")

    def _status(self, reply: _Reply, answer: Status) -> _End:
        if answer.body is None:
            if answer.code >= 400:
                error_type = answer.error_type or default_error_type(answer.code)
                message = answer.message or default_error_message(error_type)
                body = _sse.dumps(_sse.error_data(error_type, message, reply.request_id))
            else:
                body = b""
        elif isinstance(answer.body, bytes):
            body = answer.body
        elif isinstance(answer.body, str):
            body = answer.body.encode()
        else:
            body = _sse.dumps(answer.body)
        return self._send_json(reply, answer.code, body, dict(answer.headers))

    def _foreign(self, reply: _Reply, answer: ProxyError | WrongContentType) -> _End:
        """An answer that is not the API's: a proxy's error page, a captive portal."""
        if isinstance(answer, ProxyError):
            page = _sse.proxy_page(answer.code, _reason(answer.code))
            code, content_type = answer.code, "text/html"
        else:
            page, code, content_type = _sse.PORTAL_PAGE, 200, answer.content_type
        return self._send_json(
            reply, code, page, complete=False, content_type=content_type, from_api=False
        )

    def _count_tokens(self, reply: _Reply, answer: Answer) -> _End:
        # Only faults that act before any byte of the answer, or on the whole of it, apply to
        # count_tokens (and the byte-level reset_at_byte and fragmented).
        if isinstance(answer, Status):
            return self._status(reply, answer)
        if isinstance(answer, (ProxyError, WrongContentType)):
            return self._foreign(reply, answer)
        if isinstance(answer, ResetBeforeHeaders):
            return _End.RESET
        if isinstance(answer, StallBeforeHeaders):
            reply.conn.pause(answer.seconds)
        if isinstance(answer, VanishBeforeHeaders):
            return self._vanish(reply.conn)
        if not isinstance(answer, ResetAtByte):
            reply.sent.fault = "ok"
        tokens = max(1, len(reply.request.raw_body) // 4)
        return self._send_json(reply, 200, _sse.dumps({"input_tokens": tokens}))

    def _messages(self, reply: _Reply, answer: Answer, path_model: str | None) -> _End:
        if isinstance(answer, Status):
            return self._status(reply, answer)
        if isinstance(answer, (ProxyError, WrongContentType)):
            return self._foreign(reply, answer)
        if isinstance(answer, ResetBeforeHeaders):
            return _End.RESET
        if isinstance(answer, VanishBeforeHeaders):
            return self._vanish(reply.conn)
        ok = answer if isinstance(answer, Ok) else getattr(answer, "reply", None) or DEFAULT_OK
        if isinstance(answer, StallBeforeHeaders):
            reply.conn.pause(answer.seconds)
        body = reply.request.body
        model = ok.model or (body.get("model") if isinstance(body, dict) else None) or path_model
        if not isinstance(model, str):
            model = "claude-fake"
        message_id = ok.message_id or f"msg_fake_{reply.n}"
        if reply.request.stream if ok.stream is None else ok.stream:
            return self._stream(reply, answer, ok, model, message_id)
        return self._message(reply, answer, ok, model, message_id)

    def _stream(self, reply: _Reply, answer: Answer, ok: Ok, model: str, message_id: str) -> _End:
        conn, sent = reply.conn, reply.sent
        events = _sse.stream_events(ok, message_id=message_id, model=model)
        bedrock = reply.request.platform == _platforms.BEDROCK
        if bedrock:  # Bedrock streams carry no pings
            events = [_platforms.bedrock_event(e) for e in events if e[0] != "ping"]
        ping = _platforms.bedrock_event(_sse.PING) if bedrock else _sse.PING
        ending = b"\n" if bedrock else reply.line_ending  # Bedrock's frames are binary, not lines

        def frame(chunk: bytes) -> bytes:
            return _sse.with_line_ending(chunk, ending)

        if ending != b"\n":
            events = [(name, data, frame(chunk)) for name, data, chunk in events]
        headers = {
            "content-type": _platforms.EVENT_STREAM
            if bedrock
            else "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            "transfer-encoding": "chunked",
            **reply.base_headers(),
        }
        head = _head(200, headers)
        record = sent.events.append

        def on_head() -> None:
            sent.status = 200
            sent.headers = headers

        def finish(last: tuple[str, dict[str, Any]] | None, chunk: bytes, complete: bool) -> _End:
            """The last event (if any) and the end of the body, in one write."""

            def done() -> None:
                if last is not None:
                    record(last)
                sent.completed = complete

            def undo() -> None:
                if last is not None:
                    sent.events.pop()
                sent.completed = False

            self._last_write(conn, chunk + _sse.LAST_CHUNK, done, undo)
            return reply.end

        if isinstance(answer, Trickle):
            pieces: list[tuple[bytes, Callable[[], None] | None]] = [(head, on_head)]
            for name, data, chunk in events:
                pieces.append((chunk, functools.partial(record, (name, data))))
            pieces.append((_sse.LAST_CHUNK, None))

            def complete() -> None:
                sent.completed = True

            def incomplete() -> None:
                sent.completed = False

            self._trickle(conn, answer.bytes_per_second, pieces, complete, incomplete)
            return reply.end

        conn.send(head)
        on_head()
        cut = min(getattr(answer, "n", len(events)), len(events))
        send = conn.send
        for i in range(cut):
            name, data, chunk = events[i]
            send(chunk)
            record((name, data))

        def send_rest() -> _End:
            for i in range(cut, len(events) - 1):
                name, data, chunk = events[i]
                send(chunk)
                record((name, data))
            if cut < len(events):
                name, data, chunk = events[-1]
                return finish((name, data), chunk, True)
            return finish(None, b"", True)

        if isinstance(answer, ResetAfter):
            return _End.RESET
        if isinstance(answer, TruncateAfter):
            return _End.CLOSE
        if isinstance(answer, VanishAfter):
            return self._vanish(conn)
        if isinstance(answer, StallAfter):
            conn.pause(answer.seconds)
            return send_rest()
        if isinstance(answer, PingsOnlyAfter):
            deadline = None if answer.seconds is None else time.monotonic() + answer.seconds
            while True:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                wait = answer.interval if deadline is None else min(answer.interval, deadline - now)
                conn.pause(wait)
                if deadline is not None and time.monotonic() >= deadline:
                    break
                send(frame(ping[2]))
                record((ping[0], ping[1]))
            return send_rest()
        if isinstance(answer, SseErrorAfter):
            message = answer.message or default_error_message(answer.error_type)
            name, data, chunk = (
                _platforms.bedrock_error(answer.error_type, message)
                if bedrock
                else _sse.event(
                    "error", _sse.error_data(answer.error_type, message, reply.request_id)
                )
            )
            return finish((name, data), frame(chunk), False)
        if isinstance(answer, CloseAfter):
            return finish(None, b"", cut >= len(events))
        if isinstance(answer, MalformedAfter):
            # not in `events`: its data is not JSON
            return finish(None, frame(_sse.MALFORMED_CHUNK), False)
        if isinstance(answer, InvalidUtf8After):
            # not in `events` either: its data is not text
            return finish(None, frame(_sse.INVALID_UTF8_CHUNK), False)
        if isinstance(answer, UnknownEventAfter):
            name, data, chunk = _sse.event(answer.event, {"type": answer.event})
            send(frame(chunk))
            record((name, data))
        # ok, or stall_before_headers after its stall
        return send_rest()

    def _message(self, reply: _Reply, answer: Answer, ok: Ok, model: str, message_id: str) -> _End:
        conn, sent = reply.conn, reply.sent
        if isinstance(answer, SseErrorAfter):
            message = answer.message or default_error_message(answer.error_type)
            status = status_for_error_type(answer.error_type)
            # The reply was not given: not completed, as for a stream.
            return self._error(reply, status, answer.error_type, message, complete=False)
        body = _sse.message_body(ok, message_id=message_id, model=model)
        half = len(body) // 2
        malformed = isinstance(answer, (MalformedAfter, InvalidUtf8After))
        if isinstance(answer, MalformedAfter):
            body = body[:half] + b"{not json"
        elif isinstance(answer, InvalidUtf8After):
            body = _sse.invalid_utf8_body(body)
        headers = {
            "content-type": "application/json",
            "content-length": str(len(body)),
            **reply.base_headers(),
        }
        head = _head(200, headers)

        def on_head() -> None:
            sent.status = 200
            sent.headers = headers

        def done() -> None:
            on_head()
            sent.body = body
            sent.completed = not malformed

        def undo() -> None:
            sent.completed = False

        if isinstance(answer, Trickle):
            self._trickle(
                conn, answer.bytes_per_second, [(head, on_head), (body, None)], done, undo
            )
            return reply.end
        if isinstance(answer, (ResetAfter, TruncateAfter, CloseAfter, StallAfter, VanishAfter)):
            conn.send(head + body[:half])
            on_head()
            sent.body = body[:half]
            if isinstance(answer, ResetAfter):
                return _End.RESET
            if isinstance(answer, VanishAfter):
                return self._vanish(conn)
            if not isinstance(answer, StallAfter):
                return _End.CLOSE
            conn.pause(answer.seconds)
            self._last_write(conn, body[half:], done, undo)
        elif isinstance(answer, PingsOnlyAfter):
            # The API does not ping non-streaming answers: headers, then silence.
            conn.send(head)
            on_head()
            conn.pause(answer.seconds)
            self._last_write(conn, body, done, undo)
        else:
            self._last_write(conn, head + body, done, undo)
        return reply.end

    @staticmethod
    def _vanish(conn: _Conn) -> _End:
        """The connection vanishes, and its thread waits for the server to stop."""
        conn.vanish()
        conn.pause(None)  # nothing arrives any more: ends with `_Gone` when the server stops
        return _End.RESET

    def _trickle(
        self,
        conn: _Conn,
        bytes_per_second: float,
        pieces: list[tuple[bytes, Callable[[], None] | None]],
        done: Callable[[], None],
        undo: Callable[[], None],
    ) -> None:
        """Send `pieces` at `bytes_per_second`.

        Each piece's callback runs once it is out; `done` runs before the very last slice
        (the write that ends the answer) and `undo` if that write fails.
        """
        step = max(1, int(bytes_per_second / 50))  # about 50 writes a second
        start = time.monotonic()
        total = 0
        remaining = sum(len(data) for data, _ in pieces)
        for data, callback in pieces:
            for offset in range(0, len(data), step):
                # Pacing by the total keeps the rate when a wait oversleeps.
                wait = start + total / bytes_per_second - time.monotonic()
                if wait > 0:
                    conn.pause(wait)
                piece = data[offset : offset + step]
                remaining -= len(piece)
                if remaining:
                    conn.send(piece)
                else:
                    self._last_write(conn, piece, done, undo)
                total += len(piece)
            if callback is not None:
                callback()
