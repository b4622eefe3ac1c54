"""The hosts whose streams arrive whole (a buffering proxy): plain calls to them are not converted.

A proxy that buffers whole answers holds a stream's headers until the answer is done, so a
non-streaming call sent as a stream meets the response limit and fails where the plain
request would have succeeded. Once that happens (`_call.GuardedCall._fall_back`), the host's
non-streaming calls are sent as they are for a while.
"""

from __future__ import annotations

import threading

REMEMBERED_FOR = 600.0
"""Seconds a host stays known to buffer streams."""

_lock = threading.Lock()
_until: dict[str, float] = {}


def remember_buffering(origin: str, now: float) -> bool:
    """Remember that `origin` buffers streams; True when it was not known already."""
    with _lock:
        known = _until.get(origin, 0.0) > now
        _until[origin] = now + REMEMBERED_FOR
        return not known


def buffers_streams(base_url: object, now: float) -> bool:
    """Whether the host of `base_url` was seen buffering streams lately."""
    if not _until:  # nearly always: no string made
        return False
    origin = str(base_url)
    if _until.get(origin, 0.0) > now:
        return True
    with _lock:
        if _until.get(origin, now) <= now:  # expired, and not renewed meanwhile
            _until.pop(origin, None)
    return False
