"""A fault-injecting fake Anthropic Messages API server, for testing code that uses the SDK.

```python
from sdkguard.testing import FakeAnthropic, faults

with FakeAnthropic() as server:
    client = anthropic.Anthropic(base_url=server.url, api_key="test")
    server.script(faults.reset_before_headers(), faults.ok())
```

See docs/testing.md.
"""

from sdkguard.testing import faults
from sdkguard.testing._server import FakeAnthropic, RecordedRequest, SentResponse
from sdkguard.testing.faults import (
    Answer,
    Block,
    Buffered,
    CloseAfter,
    Continuable,
    Fragmented,
    HugeLine,
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
    Text,
    Thinking,
    ToolUse,
    Trickle,
    TruncateAfter,
    UnknownEventAfter,
    VanishAfter,
    VanishBeforeHeaders,
    WrongContentType,
)

__all__ = [
    "Answer",
    "Block",
    "Buffered",
    "CloseAfter",
    "Continuable",
    "FakeAnthropic",
    "Fragmented",
    "HugeLine",
    "InvalidUtf8After",
    "MalformedAfter",
    "Ok",
    "PingsOnlyAfter",
    "ProxyError",
    "RecordedRequest",
    "ResetAfter",
    "ResetAtByte",
    "ResetBeforeHeaders",
    "SentResponse",
    "SseErrorAfter",
    "StallAfter",
    "StallBeforeHeaders",
    "Status",
    "Text",
    "Thinking",
    "ToolUse",
    "Trickle",
    "TruncateAfter",
    "UnknownEventAfter",
    "VanishAfter",
    "VanishBeforeHeaders",
    "WrongContentType",
    "faults",
]
