"""The fake server's HTTP/1.1 plumbing: listening, accepting, reading requests, writing bytes,
and ending connections with a FIN, a reset or a vanishing act.

It knows nothing of the Anthropic API: each request is handed to a `respond` callback, which
writes its answer through the `Connection` and says how the connection ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import http
import math
import select
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_READ_SIZE = 65536
_MAX_HEAD = 1 << 20
_BACKLOG = 512
STOP_JOIN_SECONDS = 2.0
_LINGER_ZERO = struct.pack("ii", 1, 0)
_SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)  # Linux
# A classic BPF program of one instruction, `ret #0`: keep no byte of any packet.
_DROP_ALL = struct.pack("HBBI", 0x06, 0, 0, 0)
_REASONS = {529: "Overloaded"}  # statuses http.HTTPStatus does not know


class Gone(Exception):
    """The client closed the connection or the server is stopping: stop answering."""


class Cut(Exception):
    """The answer is cut here (`reset_at_byte`): reset the connection.

    `data` is the write that was cut, `written` how many of its bytes got out.
    """

    def __init__(self, data: bytes = b"", written: int = 0) -> None:
        super().__init__()
        self.data = data
        self.written = written


class BadRequest(Exception):
    """The bytes received are not an HTTP/1.1 request."""


class End(enum.Enum):
    """How a connection goes on once an answer is written."""

    KEEP = "keep"  # ready for the next request on this connection
    CLOSE = "close"  # close with FIN
    RESET = "reset"  # close with RST


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    """Names in lower case; repeated headers joined with ", "."""
    body: bytes

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may carry another request after this one's answer."""
        connection = self.headers.get("connection", "").lower()
        return "close" not in connection and (
            self.version != "HTTP/1.0" or "keep-alive" in connection
        )


def reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return _REASONS.get(status, "Unknown")


def head(status: int, headers: dict[str, str]) -> bytes:
    """The status line and headers of an answer."""
    lines = [f"HTTP/1.1 {status} {reason(status)}"]
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


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


class Connection:
    """One accepted connection; all its I/O is non-blocking and wakes when the server stops."""

    def __init__(self, server: HttpServer, sock: socket.socket, cid: int) -> None:
        self.server = server
        self.sock = sock
        self.id = cid
        self.buf = bytearray()
        self.lock = threading.Lock()
        self.idle = False  # waiting for the first byte of the next request
        self.waiter = _Waiter(sock, server.wake_r)
        self.thread: threading.Thread | None = None
        self.shaper: Shaper | None = None
        """Set while an answer is written in pieces (`fragmented`) or cut (`reset_at_byte`)."""

    def _check(self) -> None:
        if self.server.stopping:
            raise Gone

    # --- reading ---------------------------------------------------------------------------

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
                raise Gone from e
            if not data:
                return False
            self.buf += data
            return True

    def read_request(self) -> Request | None:
        """The next request on the connection; None when the client closed it."""
        while True:
            # Tolerate blank lines between requests (RFC 9112 2.2).
            while self.buf[:2] == b"\r\n":
                del self.buf[:2]
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(self.buf) > _MAX_HEAD:
                raise BadRequest
            with self.lock:
                self.idle = not self.buf
            if self.idle and self.server.closing_idle:
                return None  # the server went down while this connection answered
            try:
                more = self.fill()
            finally:
                with self.lock:
                    self.idle = False
            if not more:
                return None
        request_head = bytes(self.buf[:end]).decode("latin-1")
        del self.buf[: end + 4]
        lines = request_head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise BadRequest
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise BadRequest
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = self._read_chunked()
        else:
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError as e:
                raise BadRequest from e
            body = self._read_exact(length)
        return Request(method, target, version, headers, body)

    def _read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self.fill():
                raise Gone
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def _read_line(self) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            if len(self.buf) > _MAX_HEAD:
                raise BadRequest
            if not self.fill():
                raise Gone
        line = bytes(self.buf[:end])
        del self.buf[: end + 2]
        return line

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            try:
                size = int(self._read_line().split(b";")[0].strip(), 16)
            except ValueError as e:
                raise BadRequest from e
            if size == 0:
                while self._read_line():  # trailers
                    pass
                return bytes(body)
            body += self._read_exact(size)
            self._read_exact(2)

    # --- writing ---------------------------------------------------------------------------

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
            raise Gone from e
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
                raise Gone from e
            view = view[sent:]

    def send_last(self, data: bytes, record: Callable[[], None], undo: Callable[[], None]) -> None:
        """Write the bytes that end an answer, recorded by `record` just before.

        Recorded first so that a client holding the whole answer never finds the record
        behind it; `undo` takes the record back if the write fails.
        """
        record()
        try:
            self.send(data)
        except BaseException:
            undo()
            raise

    def pause(self, seconds: float | None) -> None:
        """Send nothing for `seconds` (forever if None).

        Raises `Gone` as soon as the client closes its end or the server stops, so a stall
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
                raise Gone from e
            if not data:
                raise Gone
            # Bytes from the client during a stall: keep them for the next request.
            self.buf += data

    # --- ending ----------------------------------------------------------------------------

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

    def vanish_until_stopped(self) -> End:
        """Vanish, then wait for the server to stop: nothing arrives any more."""
        self.vanish()
        self.pause(None)  # ends with `Gone` when the server stops
        return End.RESET

    def close(self, reset: bool) -> None:
        # Under the lock: refuse() may be shutting this socket down right now.
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


class Shaper:
    """Writes an answer in pieces cut at byte offsets, and cuts it short at `stop_at`."""

    def __init__(self, cuts: tuple[int, ...], stop_at: int | None, pause: float) -> None:
        self.cuts = deque(cuts)
        self.stop_at = stop_at
        self.pause = pause
        self.offset = 0  # bytes of the answer written so far

    def send(self, conn: Connection, data: bytes) -> None:
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
                raise Cut(whole, self.offset - start)
            if not data:
                return
            conn.pause(self.pause)  # at a cut: let this piece arrive on its own


class _Listener:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.wake_r, self.wake_w = socket.socketpair()
        self.closing = False
        self.thread: threading.Thread | None = None


Respond = Callable[[Connection, Request], End]


class HttpServer:
    """An HTTP/1.1 server with keep-alive: one thread per connection, hands requests to
    `respond`, and answers bytes that are no HTTP request with a 400 and `malformed_body`."""

    # Written once by stop() and never drained, so every waiting thread wakes; made by start().
    wake_r: socket.socket
    _wake_w: socket.socket

    def __init__(self, host: str, port: int, respond: Respond, malformed_body: bytes) -> None:
        self.host = host
        self.port = port
        self._respond = respond
        self._malformed_body = malformed_body
        self._lock = threading.Lock()
        self._listener: _Listener | None = None
        self._listener_lock = threading.Lock()
        self._conns: dict[int, Connection] = {}
        self._threads: set[threading.Thread] = set()  # connection threads, to join on stop
        self.accepted = 0
        self.started = False
        self.stopping = False
        self.closing_idle = False  # refusing: a connection done answering is closed

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def start(self) -> None:
        """Bind, listen and start accepting in a background thread. Once only."""
        self.started = True
        self.wake_r, self._wake_w = socket.socketpair()
        try:
            self.accept()
        except BaseException:
            self.stopping = True
            self.wake_r.close()
            self._wake_w.close()
            raise

    def stop(self) -> None:
        """Close the listening socket, reset every connection and join every thread."""
        if self.stopping or not self.started:
            self.stopping = True
            return
        self.stopping = True
        self._close_listener()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        deadline = time.monotonic() + STOP_JOIN_SECONDS
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if not any(t.is_alive() for t in threads):
            self.wake_r.close()
            self._wake_w.close()

    def refuse(self, close_idle: bool) -> None:
        """Close the listening socket, and with `close_idle` the connections waiting idle."""
        self.closing_idle = close_idle
        self._close_listener()
        if close_idle:
            for conn in self.connections():
                conn.shutdown_if_idle()

    def connections(self) -> list[Connection]:
        with self._lock:
            return list(self._conns.values())

    def accept(self) -> None:
        """Listen (again, on the same port) and accept in a background thread."""
        self.closing_idle = False
        with self._listener_lock:
            if self._listener is not None:
                return
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                if sys.platform != "win32":
                    # Re-binding the same port after refuse() must work even with connections
                    # of the old listener in TIME_WAIT.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((self.host, self.port))
                sock.listen(_BACKLOG)
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
            self.port = sock.getsockname()[1]
            listener = _Listener(sock)
            listener.thread = threading.Thread(
                target=self._accept_loop,
                args=(listener,),
                name=f"sdkguard-fake-accept-{self.port}",
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
            listener.thread.join(STOP_JOIN_SECONDS)
        listener.sock.close()
        listener.wake_r.close()
        listener.wake_w.close()

    def _accept_loop(self, listener: _Listener) -> None:
        waiter = _Waiter(listener.sock, listener.wake_r)
        while not listener.closing and not self.stopping:
            waiter.wait(False, None)
            while not listener.closing and not self.stopping:
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
        with self._lock:
            cid = self.accepted
            self.accepted += 1
            conn = Connection(self, sock, cid)
            conn.thread = threading.Thread(
                target=self._run_connection,
                args=(conn,),
                name=f"sdkguard-fake-conn-{self.port}-{cid}",
                daemon=True,
            )
            self._conns[cid] = conn
            if len(self._threads) >= 64:
                self._threads = {t for t in self._threads if t.is_alive()}
            self._threads.add(conn.thread)
        conn.thread.start()

    def _run_connection(self, conn: Connection) -> None:
        end = End.CLOSE
        try:
            while True:
                try:
                    request = conn.read_request()
                except BadRequest:
                    self._answer_malformed(conn)
                    break
                if request is None:
                    break
                end = self._respond(conn, request)
                if end is not End.KEEP:
                    break
        except Gone:
            end = End.RESET if self.stopping else End.CLOSE
        except Cut:
            end = End.RESET
        except BaseException:
            end = End.RESET
            raise
        finally:
            conn.close(reset=end is End.RESET or self.stopping)
            with self._lock:
                self._conns.pop(conn.id, None)

    def _answer_malformed(self, conn: Connection) -> None:
        body = self._malformed_body
        headers = {
            "content-type": "application/json",
            "content-length": str(len(body)),
            "connection": "close",
        }
        conn.send(head(400, headers) + body)
