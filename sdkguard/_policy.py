"""The policy: what sdkguard retries, how long it waits, which limits it enforces.

A `Policy` is immutable and validated on construction. The effective policy of a call is,
from weakest to strongest: the defaults, the `SDKGUARD_*` environment variables, the fields
given to `install()`, and the innermost `sdkguard.policy(...)` scope around the call.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import inspect
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from sdkguard._events import RetryEvent

    Token = contextvars.Token[tuple["policy", ...]]

__all__ = ["DEFAULT_RETRY_STATUSES", "Policy", "policy"]

ENV_PREFIX = "SDKGUARD_"
DEFAULT_RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})

RetryHook = Callable[["RetryEvent"], object]
_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Policy:
    """How sdkguard treats one call. Every field has a default and an `SDKGUARD_<FIELD>` variable.

    Durations are in seconds. `None` turns an optional limit off (`off` in the environment).
    """

    max_attempts: int = 5
    """Total tries of one call, the first included (1 = never retry)."""
    backoff_initial: float = 1.0
    """Wait before the second attempt."""
    backoff_multiplier: float = 2.0
    """Growth of the wait per attempt (1 s, 2 s, 4 s, 8 s ...)."""
    backoff_max: float = 8.0
    """Cap on one computed wait."""
    jitter: float = 0.25
    """Each computed wait is scaled by a random factor in [1 - jitter, 1]."""
    connect_timeout: float | None = 10.0
    """TCP + TLS connect of one attempt."""
    response_timeout: float | None = 60.0
    """Streams: request sent to response headers."""
    idle_timeout: float | None = 90.0
    """Streams: longest silence (no bytes at all, pings included) once the response began."""
    progress_timeout: float | None = None
    """Streams: longest gap between content events while pings still arrive (off by default)."""
    deadline: float | None = None
    """Budget of one call: no attempt starts and no wait ends after it."""
    max_retry_after: float = 60.0
    """A server-requested wait longer than this is not waited: the error is raised."""
    retry_statuses: frozenset[int] = DEFAULT_RETRY_STATUSES
    """HTTP statuses retried unless the server says `x-should-retry: false`."""
    retry_budget: bool = True
    """Process-wide token bucket that stops retry storms (see `budget_*`)."""
    budget_capacity: float = 500.0
    """Tokens in a full retry budget."""
    budget_retry_cost: float = 5.0
    """Tokens one retry spends."""
    budget_timeout_cost: float = 10.0
    """Tokens one retry after a timeout or stall spends."""
    budget_success_refund: float = 1.0
    """Tokens a successful call gives back."""
    stream_plain_calls: bool = True
    """Send a non-streaming `messages.create()` as a stream and rebuild the same `Message`, so
    the response and idle limits apply and a failure at any point restarts it."""
    tcp_keepalive: tuple[float, float, int] | None = (15.0, 5.0, 3)
    """TCP keepalive (idle s, interval s, probes) on new connections of SDK-built HTTP clients:
    a peer that vanished is noticed after idle + interval * probes seconds (whole seconds)."""
    resume: bool = False
    """Streams: after content reached the caller, continue a broken message with a
    continuation request spliced into the same stream, instead of raising `StreamInterrupted`
    (see docs/continuation.md)."""
    enabled: bool = True
    """`False` lets every call through untouched without uninstalling."""
    on_retry: tuple[RetryHook, ...] = field(default=(), compare=False)
    """Callables given a `RetryEvent` before each wait (code only)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _validate(f.name, getattr(self, f.name))

    def replace(self, **changes: Any) -> Policy:
        """A copy with `changes` applied (validated like a new policy)."""
        _check_names(changes)
        return dataclasses.replace(self, **_coerce_code_values(changes))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Policy:
        """The defaults, then the `SDKGUARD_*` variables of `environ`, then `overrides`."""
        _check_names(overrides)
        values = parse_env(os.environ if environ is None else environ)
        values.update(_coerce_code_values(overrides))
        return cls(**values)


# Accepted forms, named in every error message.
_FORMS: dict[str, str] = {
    "max_attempts": "an integer >= 1",
    "backoff_initial": "a number of seconds >= 0",
    "backoff_multiplier": "a number >= 1",
    "backoff_max": "a number of seconds >= 0",
    "jitter": "a number between 0 and 1",
    "connect_timeout": "a number of seconds > 0, or off",
    "response_timeout": "a number of seconds > 0, or off",
    "idle_timeout": "a number of seconds > 0, or off",
    "progress_timeout": "a number of seconds > 0, or off",
    "deadline": "a number of seconds > 0, or off",
    "max_retry_after": "a number of seconds >= 0",
    "retry_statuses": "HTTP status codes (100-599) separated by spaces or commas",
    "retry_budget": "a boolean (1/0, true/false, yes/no, on/off)",
    "budget_capacity": "a number > 0",
    "budget_retry_cost": "a number >= 0",
    "budget_timeout_cost": "a number >= 0",
    "budget_success_refund": "a number >= 0",
    "stream_plain_calls": "a boolean (1/0, true/false, yes/no, on/off)",
    "tcp_keepalive": (
        "'idle,interval,count': seconds (1 to 32767), seconds (1 to 32767), probes (1 to 127), "
        "or off"
    ),
    "resume": "a boolean (1/0, true/false, yes/no, on/off)",
    "enabled": "a boolean (1/0, true/false, yes/no, on/off)",
    "on_retry": "a tuple of callables (code only)",
}
_OPTIONAL = {"connect_timeout", "response_timeout", "idle_timeout", "progress_timeout", "deadline"}
_BOOLEANS = {"retry_budget", "stream_plain_calls", "resume", "enabled"}
_LOWER_BOUNDS: dict[str, tuple[float, bool]] = {  # field: (bound, inclusive)
    "backoff_initial": (0.0, True),
    "backoff_multiplier": (1.0, True),
    "backoff_max": (0.0, True),
    "max_retry_after": (0.0, True),
    "budget_capacity": (0.0, False),
    "budget_retry_cost": (0.0, True),
    "budget_timeout_cost": (0.0, True),
    "budget_success_refund": (0.0, True),
    **{name: (0.0, False) for name in _OPTIONAL},
}
_KEEPALIVE_MAX_SECONDS = 32767  # Linux's limit for TCP_KEEPIDLE and TCP_KEEPINTVL
_KEEPALIVE_MAX_PROBES = 127  # and for TCP_KEEPCNT
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_OFF = {"off", "none", ""}


def _bad(name: str, value: object) -> ValueError:
    return ValueError(f"sdkguard policy field {name}={value!r}: expected {_FORMS[name]}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _validate(name: str, value: object) -> None:
    if name == "max_attempts":
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _bad(name, value)
    elif name == "jitter":
        if not _is_number(value) or not 0 <= cast(float, value) <= 1:
            raise _bad(name, value)
    elif name in _BOOLEANS:
        if not isinstance(value, bool):
            raise _bad(name, value)
    elif name == "retry_statuses":
        if not isinstance(value, frozenset) or not all(
            isinstance(s, int) and 100 <= s <= 599 for s in value
        ):
            raise _bad(name, value)
    elif name == "tcp_keepalive":
        if value is None:
            return
        # The kernel takes whole seconds (rounded up here) within these bounds: a value it
        # refuses would fail every new connection, so it is refused here instead.
        if not (
            isinstance(value, tuple)
            and len(value) == 3
            and all(_is_number(v) and v > 0 for v in value)
            and value[0] <= _KEEPALIVE_MAX_SECONDS
            and value[1] <= _KEEPALIVE_MAX_SECONDS
            and isinstance(value[2], int)
            and value[2] <= _KEEPALIVE_MAX_PROBES
        ):
            raise _bad(name, value)
    elif name == "on_retry":
        if not isinstance(value, tuple) or not all(callable(h) for h in value):
            raise _bad(name, value)
    elif name in _LOWER_BOUNDS:
        if value is None and name in _OPTIONAL:
            return
        bound, inclusive = _LOWER_BOUNDS[name]
        if not _is_number(value):
            raise _bad(name, value)
        number = cast(float, value)
        if number < bound or (number == bound and not inclusive):
            raise _bad(name, value)


def _check_names(values: Mapping[str, Any]) -> None:
    unknown = sorted(set(values) - set(_FORMS))
    if unknown:
        raise TypeError(
            f"unknown sdkguard policy field(s): {', '.join(unknown)}; "
            f"known fields: {', '.join(_FORMS)}"
        )


def _coerce_code_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Accept the natural Python spellings: any iterable of statuses or hooks, an int timeout."""
    out = dict(values)
    if "retry_statuses" in out and not isinstance(out["retry_statuses"], (str, bytes)):
        statuses = out["retry_statuses"]
        if isinstance(statuses, Iterable):
            out["retry_statuses"] = frozenset(statuses)
    if "on_retry" in out:
        hooks = out["on_retry"]
        out["on_retry"] = (hooks,) if callable(hooks) else tuple(hooks or ())
    if isinstance(out.get("tcp_keepalive"), list):
        out["tcp_keepalive"] = tuple(out["tcp_keepalive"])
    return out


def _parse_env_value(name: str, raw: str) -> Any:
    text = raw.strip().lower()
    if name == "on_retry":
        raise ValueError("on_retry can only be set in code")
    if name in _BOOLEANS:
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError
    if name in _OPTIONAL and text in _OFF:
        return None
    if name == "max_attempts":
        return int(text)
    if name == "retry_statuses":
        return frozenset(int(part) for part in text.replace(",", " ").split())
    if name == "tcp_keepalive":
        if text in _OFF:
            return None
        idle, interval, count = (part.strip() for part in text.split(","))
        return (float(idle), float(interval), int(count))
    return float(text)


def parse_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """The policy fields set by `SDKGUARD_*` variables; a malformed one raises `ValueError`."""
    values: dict[str, Any] = {}
    for name in _FORMS:
        var = ENV_PREFIX + name.upper()
        raw = environ.get(var)
        if raw is None:
            continue
        try:
            value = _parse_env_value(name, raw)
            _validate(name, value)
        except ValueError:
            raise ValueError(
                f"environment variable {var}={raw!r} is malformed: expected {_FORMS[name]}"
            ) from None
        values[name] = value
    return values


def env_names() -> dict[str, str]:
    """Each policy field with the name of its environment variable."""
    return {name: ENV_PREFIX + name.upper() for name in _FORMS if name != "on_retry"}


# The scoped overrides of `sdkguard.policy(...)`: the active scopes, innermost last, so each
# thread and task sees only its own (contextvars are copied into new tasks).
_scoped: contextvars.ContextVar[tuple[policy, ...]] = contextvars.ContextVar(
    "sdkguard_scoped_policy", default=()
)
# Merged policies by (base, scopes), so a call inside a scope does not validate a new Policy.
# Keyed by identity and holding the objects, so an id is never reused while cached.
_merged: dict[tuple[int, ...], tuple[Policy, tuple[policy, ...], Policy]] = {}
_MERGED_MAX = 256


def scoped_changes() -> tuple[policy, ...]:
    return _scoped.get()


def apply_scopes(base: Policy, scopes: tuple[policy, ...]) -> Policy:
    """`base` with every scope's changes applied, innermost last."""
    if not scopes:
        return base
    key = (id(base), *map(id, scopes))
    hit = _merged.get(key)
    if hit is not None and hit[0] is base and hit[1] == scopes:
        return hit[2]
    changes: dict[str, Any] = {}
    for scope in scopes:
        changes.update(scope.changes)
    merged = base.replace(**changes)
    if len(_merged) >= _MERGED_MAX:
        _merged.clear()
    _merged[key] = (base, scopes, merged)
    return merged


# The policy `install()` put in effect (the defaults until it runs). Kept here, beside the
# scopes, so that whoever needs the policy of a call (the guard, telemetry, the proxy) asks the
# policy module, not the patching machinery.
_installed_policy = Policy()


def set_installed_policy(policy: Policy) -> None:
    global _installed_policy
    _installed_policy = policy


def installed_policy() -> Policy:
    return _installed_policy


def current_policy() -> Policy:
    """The policy of a call made here and now: the installed policy, then `policy()` scopes."""
    scopes = _scoped.get()
    return apply_scopes(_installed_policy, scopes) if scopes else _installed_policy


def with_max_attempts(base: Policy, max_attempts: int) -> Policy:
    """`base` with another `max_attempts`, cached like the scopes (it is asked on every call)."""
    if base.max_attempts == max_attempts:
        return base
    key = (id(base), -max_attempts)  # negative: never a scope id
    hit = _merged.get(key)
    if hit is not None and hit[0] is base:
        return hit[2]
    merged = base.replace(max_attempts=max_attempts)
    if len(_merged) >= _MERGED_MAX:
        _merged.clear()
    _merged[key] = (base, (), merged)
    return merged


class policy:  # lower case: used like a function, `with sdkguard.policy(...)`
    """Override policy fields for the calls made inside a `with` block or a decorated function.

    The override is per thread and per asyncio task. Fields are validated at once::

        with sdkguard.policy(max_attempts=2, deadline=20.0):
            client.messages.create(...)

        @sdkguard.policy(idle_timeout=30.0)
        def summarize(...): ...

    A decorated generator or async generator function (a streaming endpoint's) has the
    override during each of its steps, and its consumer does not between them.
    """

    def __init__(self, **changes: Any) -> None:
        _check_names(changes)
        self.changes: Mapping[str, Any] = _coerce_code_values(changes)
        Policy().replace(**self.changes)  # fail now, where the scope is written
        self._tokens: list[contextvars.Token[tuple[policy, ...]]] = []

    def __enter__(self) -> None:
        self._tokens.append(_scoped.set((*_scoped.get(), self)))

    def __exit__(self, *exc_info: object) -> None:
        _scoped.reset(self._tokens.pop())

    def __call__(self, func: _F) -> _F:
        if inspect.isgeneratorfunction(func):
            return cast(_F, self._wrap_generator(func))
        if inspect.isasyncgenfunction(func):
            return cast(_F, self._wrap_async_generator(func))
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with self._scope():
                    return await func(*args, **kwargs)

            return cast(_F, async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self._scope():
                return func(*args, **kwargs)

        return cast(_F, wrapper)

    @contextmanager
    def _scope(self) -> Iterator[None]:
        token = _scoped.set((*_scoped.get(), self))
        try:
            yield
        finally:
            _scoped.reset(token)

    # A generator function's body runs step by step, after the call that made the generator
    # returned: the scope is entered around each step (`next`, `send`, `throw`, `close` and
    # their async twins) and left after it, so that it never leaks into the consumer's code
    # between steps. Scopes the generator itself opened and left open at a `yield` are
    # carried to its next step.

    def _resume(self, inner: tuple[policy, ...]) -> tuple[Token, tuple[policy, ...]]:
        """Enter the scope for one step: the caller's scopes, this one, the generator's own."""
        mine = (*_scoped.get(), self)
        return _scoped.set((*mine, *inner)), mine

    def _suspend(self, token: Token, mine: tuple[policy, ...]) -> tuple[policy, ...]:
        """Leave it after the step: the scopes the generator left open above this one."""
        now = _scoped.get()
        _scoped.reset(token)
        return now[len(mine) :] if now[: len(mine)] == mine else ()

    def _wrap_generator(self, func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def generator(*args: Any, **kwargs: Any) -> Any:
            steps = func(*args, **kwargs)
            step, value = steps.send, None
            inner: tuple[policy, ...] = ()
            while True:
                token, mine = self._resume(inner)
                try:
                    item = step(value)
                except StopIteration as stop:
                    return stop.value
                finally:
                    inner = self._suspend(token, mine)
                try:
                    value = yield item
                    step = steps.send
                except GeneratorExit:
                    token, mine = self._resume(inner)
                    try:
                        steps.close()
                    finally:
                        self._suspend(token, mine)
                    raise
                except BaseException as error:
                    step, value = steps.throw, error

        return generator

    def _wrap_async_generator(self, func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        async def generator(*args: Any, **kwargs: Any) -> Any:
            steps = func(*args, **kwargs)
            step, value = steps.asend, None
            inner: tuple[policy, ...] = ()
            while True:
                token, mine = self._resume(inner)
                try:
                    item = await step(value)
                except StopAsyncIteration:
                    return
                finally:
                    inner = self._suspend(token, mine)
                try:
                    value = yield item
                    step = steps.asend
                except GeneratorExit:
                    token, mine = self._resume(inner)
                    try:
                        await steps.aclose()
                    finally:
                        self._suspend(token, mine)
                    raise
                except BaseException as error:
                    step, value = steps.athrow, error

        return generator
