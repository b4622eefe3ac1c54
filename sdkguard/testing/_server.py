"""The fake Anthropic Messages API server: real HTTP/1.1 on loopback, faults at the socket level.

`FakeAnthropic` routes each request, takes its scripted answer and records what was received
and sent; the HTTP plumbing is in `_http`, what each answer does on the wire in `_answers`.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from sdkguard.testing import _answers, _continue, _platforms, _sse
from sdkguard.testing._http import Connection, End, HttpServer, Request
from sdkguard.testing._records import RecordedRequest, SentResponse
from sdkguard.testing.faults import (
    DEFAULT_OK,
    VANISH_SUPPORTED,
    Answer,
    Fragmented,
    default_error_type,
)

__all__ = ["FakeAnthropic", "RecordedRequest", "SentResponse"]

MODELS_PATH = "/v1/models"


class FakeAnthropic:
    """A fake Anthropic Messages API on a real loopback socket, with scripted faults.

    The server runs in background threads, so it serves sync and async clients alike::

        with FakeAnthropic() as server:
            client = anthropic.Anthropic(base_url=server.url, api_key="test")
            server.script(faults.reset_before_headers(), faults.ok())

    Each Messages request (`POST /v1/messages` and `/v1/messages/count_tokens`) takes the
    next scripted answer; when the script is empty it gets the default (`faults.ok()`).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        malformed = _sse.error_data(default_error_type(400), "Malformed HTTP request", "")
        self._http = HttpServer(host, port, self._respond, _sse.dumps(malformed))
        self.requests: list[RecordedRequest] = []
        """Every request received, in arrival order."""
        self.sent: list[SentResponse] = []
        """What was written for each request, at the same index as `requests`."""
        self._cond = threading.Condition()
        self._script: deque[Answer] = deque()
        self._default: Answer = DEFAULT_OK
        self._received = 0
        self._refusing_prefill: frozenset[str] = frozenset()

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port; the one actually bound once started (the constructor's 0 means free)."""
        return self._http.port

    @property
    def host(self) -> str:
        """The address the server listens on."""
        return self._http.host

    @property
    def url(self) -> str:
        """The base URL to give a client, e.g. `http://127.0.0.1:54321`."""
        if not self._http.started:
            raise RuntimeError("the server is not started: call start() or use it as a context")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> FakeAnthropic:
        """Bind, listen and start accepting in a background thread. Returns the server."""
        if self._http.started or self._http.stopping:
            raise RuntimeError("a FakeAnthropic can be started only once")
        self._http.start()
        return self

    def stop(self) -> None:
        """Stop: close the listening socket, reset every client connection, join every thread.

        Prompt (well under a second) even with connections stalled forever.
        """
        self._http.stop()

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
        state = "started" if self._http.started and not self._http.stopping else "stopped"
        return f"<FakeAnthropic {self.host}:{self.port} {state}>"

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

    def refuse_prefill(self, *models: str) -> None:
        """Answer a prefill to these models as Claude 4.6 and later do: HTTP 400.

        A Messages request to one of `models` whose conversation ends with an assistant turn
        gets `invalid_request_error` "This model does not support assistant message prefill.
        The conversation must end with a user message." at once, without taking a scripted
        answer (recorded as `prefill_refused`). `"*"` names every model; no argument: none.
        """
        with self._cond:
            self._refusing_prefill = frozenset(models)

    def _refuses_prefill(self, body: Any, path_model: str | None) -> bool:
        refusing = self._refusing_prefill
        if not refusing or not _continue.ends_with_assistant(body):
            return False
        model = body.get("model") or path_model
        return "*" in refusing or model in refusing

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
        return self._http.open_connections

    @property
    def connections_accepted(self) -> int:
        """Client connections accepted since start."""
        return self._http.accepted

    def refuse_connections(self, *, close_idle: bool = True) -> None:
        """Close the listening socket: new connections get ECONNREFUSED.

        With `close_idle` (the default), keep-alive connections waiting for a request are
        closed too, as by a server going down; otherwise a pooled connection would keep
        working. Connections in the middle of an answer finish it, then are closed.
        """
        self._http.refuse(close_idle)

    def accept_connections(self) -> None:
        """Listen again, on the same port, after `refuse_connections()`."""
        if not self._http.started or self._http.stopping:
            raise RuntimeError("the server is not running")
        self._http.accept()

    def vanish_connections(self) -> None:
        """Make every open connection vanish now, idle keep-alive ones included (Linux).

        The kernel drops every packet that arrives for them: a client that sends on one gets
        no FIN, RST or acknowledgement, as behind a NAT or load balancer that forgot its
        connections. New connections are answered as usual.
        """
        if not VANISH_SUPPORTED:
            raise NotImplementedError("a vanishing peer needs Linux socket filters")
        for conn in self._http.connections():
            with contextlib.suppress(OSError):  # closed meanwhile
                conn.vanish()

    @contextlib.contextmanager
    def refusing(self) -> Iterator[None]:
        """Refuse connections inside the block (see `refuse_connections`)."""
        self.refuse_connections()
        try:
            yield
        finally:
            if not self._http.stopping:
                self.accept_connections()

    # --- one request ----------------------------------------------------------------------

    def _respond(self, conn: Connection, request: Request) -> End:
        """Route a request, take its answer, record it, and write the answer."""
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
        route = _platforms.route(request.method, path)
        wire: Fragmented | None = None
        with self._cond:
            # A counter, not len(requests): ids stay unique if a test clears the lists.
            self._received += 1
            n = self._received
            answer: Answer | None = None
            refused = (
                route is not None
                and not route.count_tokens
                and self._refuses_prefill(body, route.model)
            )
            if route is not None and isinstance(body, dict) and not refused:
                answer = self._script.popleft() if self._script else self._default
                if isinstance(answer, Fragmented):
                    wire, answer = answer, answer.answer
            if refused:
                name = _answers.PREFILL_REFUSED
            elif answer is not None:
                name = answer.name
            elif route is not None:
                name = _answers.BAD_REQUEST
            elif request.method == "GET" and path == MODELS_PATH:
                name = _answers.MODELS
            else:
                name = _answers.NOT_FOUND
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
        reply = _answers.Reply(conn, sent, n, request.keep_alive, recorded)
        try:
            if answer is None or route is None:
                return _answers.builtin(reply, name, path)
            return _answers.scripted(reply, answer, wire, route)
        finally:
            sent._done.set()
