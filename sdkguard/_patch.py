"""Activation: one patch at the SDK's `request` choke point, applied when `anthropic` loads.

`SyncAPIClient.request` and `AsyncAPIClient.request` carry every Messages call (create,
stream, parse, beta, raw responses, tool runners, Bedrock, Vertex, Foundry). Patching them on
the class, not the resources, also reaches the methods that resources copy at construction.
The stream helpers' `until_done` is patched too, so that a `MessageStream` whose user only
waits for the final message can restart at any point.
"""

from __future__ import annotations

import functools
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import wrapt

from sdkguard._policy import Policy, current_policy, set_installed_policy

__all__ = ["current_policy", "install", "is_installed", "uninstall"]


@dataclass
class _State:
    lock: threading.RLock = field(default_factory=threading.RLock)
    installed: bool = False
    hook_registered: bool = False
    # (owner, attribute, original value from the owner's __dict__), to restore exactly
    originals: list[tuple[type, str, Any]] = field(default_factory=list)
    # Why the imported SDK is left unguarded (unsupported version, internals not found).
    refused: str | None = None


_state = _State()
_drivers: Any = None  # sdkguard._drivers, once the SDK is patched


def install(policy: Policy | None = None, **fields: Any) -> None:
    """Guard every Messages call made with the anthropic SDK, now or once it is imported.

    With no argument the policy comes from the defaults and the `SDKGUARD_*` environment
    variables; fields given here beat the environment (`install(max_attempts=8)`); a whole
    `Policy` is used as it is. Calling `install()` again replaces the policy. Thread-safe.
    """
    if policy is not None and fields:
        raise TypeError("install() takes either a Policy or policy fields, not both")
    new_policy = policy if policy is not None else Policy.from_env(**fields)
    if not isinstance(new_policy, Policy):
        raise TypeError(f"install(policy=...) needs a sdkguard.Policy, got {type(policy)!r}")
    with _state.lock:
        set_installed_policy(new_policy)
        _state.installed = True
        if not _state.hook_registered:
            _state.hook_registered = True
            # Runs at once when anthropic is already imported, else right after its import.
            wrapt.register_post_import_hook(_on_anthropic_import, "anthropic")
        elif "anthropic" in sys.modules:
            _apply_patches()


def uninstall() -> None:
    """Restore every patched SDK method exactly as it was."""
    with _state.lock:
        _state.installed = False
        for owner, name, original in reversed(_state.originals):
            setattr(owner, name, original)
        _state.originals.clear()
        if _drivers is not None:  # the SDK's own keepalive on the clients it built
            _drivers.restore_keepalive()


def is_installed() -> bool:
    """Whether `install()` is in effect."""
    return _state.installed


def _on_anthropic_import(module: object) -> None:
    with _state.lock:
        if _state.installed:
            _apply_patches()


def _patch(owner: type, name: str, wrapper: Callable[..., Any]) -> None:
    original = owner.__dict__[name]
    setattr(owner, name, wrapt.FunctionWrapper(original, wrapper))
    _state.originals.append((owner, name, original))


def _apply_patches() -> None:
    """Patch the SDK, or leave it exactly as it is (and say so, once) when it cannot be."""
    if _state.originals or _state.refused:
        return
    try:
        from sdkguard import _sdk

        _state.refused = _sdk.unsupported()
        if _state.refused is None:
            _patch_sdk()
            return
    except Exception as err:  # the SDK's internals moved: never break the import of anthropic
        for owner, name, original in reversed(_state.originals):
            setattr(owner, name, original)
        _state.originals.clear()
        _state.refused = f"sdkguard cannot patch this anthropic SDK ({type(err).__name__}: {err})"
    _state.installed = False
    warnings.warn(
        f"{_state.refused}: sdkguard leaves the SDK as it is, unguarded", RuntimeWarning, 2
    )


def _patch_sdk() -> None:
    global _drivers
    from sdkguard import _drivers as drivers
    from sdkguard import _sdk

    _drivers = drivers  # loaded with anthropic, never by `import sdkguard`

    for client_class, method, is_async in _sdk.request_methods():
        _patch(client_class, method, _async_request if is_async else _sync_request)
    request_class = _sdk.api_request_class()
    if request_class is not None:
        _patch(request_class, "__init__", _sdk.api_request_init)
    for stream_class in _sdk.stream_classes():
        _patch(stream_class, "close", _stream_close)
    for helper, is_async in _sdk.stream_helpers():
        _patch(helper, "until_done", _async_until_done if is_async else _sync_until_done)


def _guarded_policy(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Policy | None:
    """The policy for this request, or None when sdkguard leaves it alone."""
    options = args[1] if len(args) > 1 else kwargs.get("options")
    if options is None or not _drivers.is_guarded_request(options):
        return None
    policy = current_policy()
    return policy if policy.enabled else None


def _sync_request(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    policy = _guarded_policy(args, kwargs)
    if policy is None:
        return wrapped(*args, **kwargs)
    return _drivers.request_sync(wrapped, instance, policy, *args, **kwargs)


def _async_request(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    policy = _guarded_policy(args, kwargs)
    if policy is None:
        return wrapped(*args, **kwargs)
    return _drivers.request_async(wrapped, instance, policy, *args, **kwargs)


def _stream_close(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    # The caller closes the stream: what reading it raises from now on is not a failure.
    guard = _drivers.guard_of(instance)
    if guard is not None:
        guard.closed = True
        guard.ended()
    return wrapped(*args, **kwargs)


def _restartable_guard(helper: Any) -> Any:
    """The guard of a stream helper's raw stream, if nothing has reached the user yet."""
    raw_stream = _drivers.raw_stream_of(helper)
    guard = None if raw_stream is None else _drivers.guard_of(raw_stream)
    if guard is None or guard.protocol.committed or guard.restart_hook is not None:
        return None
    return guard


def _sync_until_done(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    guard = _restartable_guard(instance)
    if guard is None:
        return wrapped(*args, **kwargs)
    guard.restart_hook = functools.partial(_drivers.reset_message_stream, instance)
    try:
        return wrapped(*args, **kwargs)
    finally:
        guard.restart_hook = None


def _async_until_done(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    guard = _restartable_guard(instance)
    if guard is None:
        return wrapped(*args, **kwargs)
    return _guarded_async_until_done(wrapped, instance, guard, args, kwargs)


async def _guarded_async_until_done(
    wrapped: Callable[..., Any],
    instance: Any,
    guard: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    guard.restart_hook = functools.partial(_drivers.reset_message_stream, instance)
    try:
        return await wrapped(*args, **kwargs)
    finally:
        guard.restart_hook = None
